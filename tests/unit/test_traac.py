"""TRAAC (issue 34 item 7) against its released code (joykirat18/TRAAC @ 0bfea0a): the step split, step importance,
uniformity and eviction of redundant_token_eviction.py and the length reward of reward_manager/sumLinear.py, ported
below in the test's own words; and the rollout hook's mechanics with a scripted engine and scorer."""

import math
import random
import re

import numpy as np
import pytest
import torch
from shared import ScriptedEngine

from rlkit.records import Prompt, Sample, ShapingBatch
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.hooks import HookedRollout
from rlkit.rollout.traac import (
    CUES,
    TRAACCompression,
    evicted_steps,
    split_steps,
    step_importance,
    uniformity,
)
from rlkit.shaping.traac import TRAACLength, difficulty_class

_PAT = re.compile("(" + "|".join(re.escape(w) for w in sorted(CUES, key=len, reverse=True)) + ")")


def released_split(tokens):
    """redundant_token_eviction.py split_by_tokens: steps of token positions cut where a cue matches the joined
    token strings."""
    text, starts, pos = "".join(tokens), [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t)
    ms = [m.start() for m in _PAT.finditer(text)]
    if not ms:
        return [list(range(len(tokens)))]
    steps, prev = [], 0
    for s in ms:
        if s > prev:
            sec = [i for i, c in enumerate(starts) if prev <= c < s]
            if sec:
                steps.append(sec)
        prev = s
    last = [i for i, c in enumerate(starts) if c >= ms[-1]]
    if last:
        steps.append(last)
    return steps or [list(range(len(tokens)))]


def released_prune(tokens, rows, r):
    """calculate_step_importance + calculate_uniformity_score + determine_eviction_percentage + the eviction."""
    steps = released_split(tokens)
    a = np.asarray(rows, dtype=np.float32)
    imp = {k: (sum(float(a[:, p].sum()) for p in ps) / (a.shape[0] * len(ps)) if ps else 0.0)
           for k, ps in enumerate(steps)}
    if len(imp) <= 1:
        u = 1.0
    else:
        v = np.clip(np.array(list(imp.values()), dtype=float), 0.0, None)
        tot = float(v.sum())
        if tot <= 0:
            u = 1.0
        else:
            p = v / tot
            u = float(-(p * np.log(p + 1e-12)).sum()) / float(np.log(len(v)))
    e = 0.0 if u > 0.8 else min(r * (1 - u), 0.8)
    return sorted(i for i, _ in sorted(imp.items(), key=lambda x: x[1])[:int(len(steps) * e)])


WORDS = ["Wait", "ĠWait", "So", "ĠSome", "Ġthe", "Ċ", "ĠTherefore", "Now", "Ġ2", "+", "Let", "Ġme", "Hmm", "x"]


def test_split_importance_and_eviction_match_the_released_code():
    rng = random.Random(0)
    for _ in range(1500):
        tokens = [rng.choice(WORDS) for _ in range(rng.randrange(1, 30))]
        steps = split_steps(tokens)
        assert steps == released_split(tokens), tokens
        rows = torch.rand(rng.choice([1, 3]), len(tokens)) ** rng.choice([1, 8])
        if rng.random() < 0.1:
            rows.zero_()
        r = rng.choice([0.2, 0.4, 0.6])
        assert sorted(evicted_steps(step_importance(steps, rows), r)) == released_prune(tokens, rows.numpy(), r)


def test_uniformity_edges():
    assert uniformity([1.0]) == 1.0 and uniformity([0.0, 0.0]) == 1.0
    assert uniformity([1.0, 1.0, 1.0]) == pytest.approx(1.0) and uniformity([1.0, 0.0]) == pytest.approx(0.0, abs=1e-9)
    assert evicted_steps([1.0, 1.0, 1.0, 1.0], 0.6) == []  # uniform: nothing removed
    assert evicted_steps([10.0, 0.1, 0.2, 5.0, 0.3], 0.6) == [1]  # floor(5 x 0.6 x (1 - U)) = 1 lowest


def released_length_reward(n, flat, scale, eps=1e-6):
    """reward_manager/sumLinear.py: scale * max(linear position, sigmoid around the median); 0 for an empty window."""
    if len(flat) == 0:
        return 0
    lmin, lmax, med = np.min(flat), np.max(flat), np.median(flat)
    ln = max(0.0, min(1.0, (lmax - n) / max(lmax - lmin, eps)))
    return scale * max(ln, 1 / (1 + math.exp((n - med) / (0.1 * med))))


class ReleasedSumLinear:
    """reward_manager/sumLinear.py SumLinearRewardManager.__call__: the per-class history (current batch included,
    last 10), the length reward of the correct samples."""

    def __init__(self):
        self.hist = {}

    def batch(self, items):
        cur = {}
        for it in items:
            key = difficulty_class(it["difficulty"])
            cur.setdefault(key, [])
            if it["score"] > 0:
                cur[key].append(it["length"])
        for key, v in cur.items():
            self.hist.setdefault(key, []).append(v)
        out = []
        for it in items:
            c = difficulty_class(it["difficulty"])
            flat = [x for lst in self.hist.get(c, [])[-10:] for x in lst]
            lr = released_length_reward(it["length"], flat, {"easy": 1.0, "medium": 0.75, "hard": 0.5}.get(c, 0))
            out.append(it["score"] + (0 if it["score"] == 0 else lr))
        return out


def test_length_reward_matches_the_released_manager_over_steps():
    rng = random.Random(2)
    shaper, released = TRAACLength(), ReleasedSumLinear()
    for step in range(40):
        n = rng.randrange(1, 20)
        p = [rng.choice([None, 0.0, 0.25, 0.5, 0.875, 1.0]) for _ in range(n)]
        correct = [float(rng.random() < 0.6) for _ in range(n)]
        lengths = [float(rng.randrange(5, 400)) for _ in range(n)]
        b = ShapingBatch(rewards=torch.tensor([4.0 * c for c in correct], dtype=torch.float64),
                         correct=torch.tensor(correct), lengths=torch.tensor(lengths),
                         truncated=torch.zeros(n, dtype=torch.bool), group_ids=torch.arange(n), step=step,
                         columns=[{"difficulty": x} for x in p])
        got = shaper(b).rewards.tolist()
        want = released.batch([{"difficulty": x, "score": 4.0 * c, "length": n_} for x, c, n_ in
                               zip(p, correct, lengths)])
        assert got == pytest.approx(want, abs=1e-9), step
    state = shaper.state_dict()
    again = TRAACLength()
    again.load_state_dict(state)
    assert again.history == shaper.history


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


class _Engine(ScriptedEngine):
    def sample(self, k, p, s, j):
        text = "First a. So b. Wait c. Now d." if s.n > 1 else "=7"
        ids = [ord(c) for c in text][:s.max_new_tokens]
        return Sample(p, list(ids), [-0.1] * len(ids), "stop", text, k, [0] * len(ids))


def test_the_hook_compresses_correct_samples_by_difficulty_and_masks_the_kept_reasoning(monkeypatch):
    hook = TRAACCompression(think_end="", answer_tokens=4, suffix="!")
    # a scorer that attends to the first step and the last: the middle steps ("So b. ", "Wait c. ") go first
    def rows(ctx, ids):
        a = torch.full((2, len(ids)), 0.01)
        a[:, :9] = 1.0
        return a
    monkeypatch.setattr(hook, "attention_rows", rows)
    engine = _Engine()
    verdicts = {0: [1.0, 1.0, 1.0, 1.0], 1: [0.0, 0.0, 0.0, 0.0]}
    rollout = HookedRollout(engine, hook, _Tok(), seed=0,
                            verify=lambda prompts, samples: [verdicts[s.group_id][0] for s in samples])
    prompts = [Prompt([1], "a", {}), Prompt([2], "b", {})]
    batch = rollout(prompts, SamplingSpec(n=4, max_new_tokens=40), step=0)
    assert [s.group_id for s in batch.samples] == [0] * 4 + [1] * 4
    assert {s.tags["difficulty"] for s in batch.samples if s.group_id == 0} == {1.0}
    assert {s.tags["difficulty"] for s in batch.samples if s.group_id == 1} == {0.0}
    assert batch.metrics["traac/compressed"] == 4.0 and batch.metrics["traac/removed_tokens"] > 0
    assert all(not s.injected for s in batch.samples if s.group_id == 1)  # nothing correct: nothing compressed
    for s in (s for s in batch.samples if s.injected):
        kept = s.injected[-1] + 1
        assert s.completion_ids[kept:] == [ord(c) for c in "=7"] and s.logprobs[kept:] == [-0.1, -0.1]
        assert s.trainable() == [0.0] * kept + [1.0, 1.0] and kept < len("First a. So b. Wait c. Now d.")
    contexts, specs = engine.calls[-1]  # one call answers every compressed reasoning, each with its own cap
    assert len(contexts) == 4 and all(s.n == 1 and s.max_new_tokens == 4 for s in specs)
    assert batch.metrics["traac/answered_again"] == 4.0
