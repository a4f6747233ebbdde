"""JET and HBPO (issue 34 items 3 and 7): the rollout hooks' mechanics with a scripted engine (groups, injected
tokens, tags, the engine's logprobs kept), and the rewards / shaper / estimator against the released code's core
functions, ported below in the test's own words (each names its source file)."""

import math
import random
import re
from collections import defaultdict

import numpy as np
import pytest
import torch
from shared import ScriptedEngine

from rlkit import registry
from rlkit.algorithms.advantages import hbpo_advantages
from rlkit.config import ConfigError, load_config
from rlkit.records import Prompt, Sample, ShapingBatch
from rlkit.rewards.budgeted import HBPOBudget
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.hooks import HBPOBudgets, HookedRollout, JETTruncation
from rlkit.shaping.budgets import JETShortest
from rlkit.trainers.stages import build_components


class _Tok:
    """Characters as tokens (ord), enough for the hooks' phrases."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class _Engine(ScriptedEngine):
    version = 1

    def sample(self, k, p, s, j):
        n = min(s.max_new_tokens, 10 + j)
        return Sample(p, [100 + t for t in range(n)], [-0.5 - 0.01 * t for t in range(n)], "stop", "x" * n, k,
                      [self.version] * n)


PROMPTS = [Prompt([1, 2], "a", {}), Prompt([3], "b", {})]


def test_jet_branches_each_full_sample_at_its_ratios_and_injects_the_phrase():
    engine = _Engine()
    hook = JETTruncation(ratios=(0.2, 0.5), phrase="<A>", answer_tokens=4)
    batch = HookedRollout(engine, hook, _Tok(), seed=0)(PROMPTS, SamplingSpec(n=6, max_new_tokens=40), step=0)
    full_call, branch_call = engine.calls
    assert full_call[1].n == 2 and all(s.n == 1 and s.max_new_tokens == 4 for s in branch_call[1])
    assert [s.group_id for s in batch.samples] == [0] * 6 + [1] * 6  # groups of G = 2 full + 2 x 2 branches
    full = [s for s in batch.samples if not s.injected]
    branches = [s for s in batch.samples if s.injected]
    assert len(full) == 4 and len(branches) == 8
    for s in branches:
        cut = s.injected[0]
        assert s.injected == [cut, cut + 1, cut + 2] and s.completion_ids[cut:cut + 3] == [ord(c) for c in "<A>"]
        parent = next(f for f in full if f.group_id == s.group_id and f.completion_ids[:cut] == s.completion_ids[:cut])
        assert cut in (max(1, int(parent.num_tokens * 0.2)), int(parent.num_tokens * 0.5))
        # the engine's logprobs of what the policy generated, before and after the phrase; the phrase's are 0
        assert s.logprobs[:cut] == parent.logprobs[:cut] and s.logprobs[cut:cut + 3] == [0.0] * 3
        assert len(s.logprobs) == s.num_tokens and s.trainable()[cut:cut + 3] == [0.0] * 3
        # the continuation was generated after the prompt, the cut completion and the phrase
        assert s.prompt_ids + s.completion_ids[:cut + 3] in branch_call[0]
    # full: 10 and 11 tokens; branches: cut (2 or 5) + the phrase (3) + the answer (4)
    assert batch.metrics["jet/full_tokens"] == 10.5 and batch.metrics["jet/branch_tokens"] == 10.5


def test_hbpo_announces_one_budget_per_sub_group_and_tags_the_samples():
    engine = _Engine()
    hook = HBPOBudgets(budgets=(8, 16), phrase="B{budget}:")
    batch = HookedRollout(engine, hook, _Tok(), seed=0)(PROMPTS, SamplingSpec(n=4, max_new_tokens=30, seed=5),
                                                         step=0)
    (contexts, specs), = engine.calls
    heads = [[ord(c) for c in f"B{b}:"] for b in (8, 16)]
    assert contexts == [PROMPTS[0].ids + heads[0], PROMPTS[0].ids + heads[1], PROMPTS[1].ids + heads[0],
                        PROMPTS[1].ids + heads[1]]
    assert [s.n for s in specs] == [2] * 4 and len({s.seed for s in specs}) == 4
    assert [s.group_id for s in batch.samples] == [0] * 4 + [1] * 4
    for s in batch.samples:
        head = [ord(c) for c in f"B{s.tags['budget']}:"]
        assert s.prompt_ids == PROMPTS[s.group_id].ids  # the announcement is the completion's head, not the prompt
        assert s.completion_ids[:len(head)] == head and s.injected == list(range(len(head)))
        assert s.num_tokens <= 30 and len(s.logprobs) == s.num_tokens
    assert sorted(s.tags["budget"] for s in batch.samples if s.group_id == 0) == [8, 8, 16, 16]


def test_a_group_size_the_hook_cannot_split_is_refused_before_any_model_loads():
    cfg = load_config(overrides=["rollout_hook={name: jet_truncation}", "rollout.group_size=8"])
    with pytest.raises(ConfigError, match=r"rollout_hook \(jet_truncation\) splits each group into 6 parts: "
                                          r"'rollout.group_size' \(8\) must divide by 6"):
        build_components(cfg)
    assert registry.capabilities(HBPOBudgets(budgets=(1, 2, 3)), kind="rollout_hook").group_divisor == 3
    with pytest.raises(ConfigError, match="budget forcing is a rollout hook, configure one of them"):
        from rlkit.config.check import validate

        validate(load_config(overrides=["rollout_hook={name: hbpo_budgets}",
                                        "rollout.budget_forcing.budgets=[16]"]))


# ---- JET: ports of EasyR1/examples/reward_function/math.py compute_score (+ math_linear.py) -------------------------

def released_jet(acc, fmt, lengths, groups=None, alpha=1.2, delta=0.05, eps=1e-8, linear=False):
    """JinyiHan99/Just-Enough-Think EasyR1/examples/reward_function/math.py compute_score: 0.9 acc + 0.1 format plus
    the length bonus over one pool (groups None: the whole batch, as the batch reward manager calls it)."""
    overall = [0.9 * a + 0.1 * f for a, f in zip(acc, fmt)]
    pools = defaultdict(list)
    for i in range(len(acc)):
        pools[None if groups is None else groups[i]].append(i)
    for members in pools.values():
        corr = [i for i in members if acc[i] == 1.0]
        if not corr:
            continue
        lo, hi = min(lengths[i] for i in corr), max(lengths[i] for i in corr)
        denom = hi - lo + eps
        for i in corr:
            overall[i] += 1.0 - (lengths[i] - lo) / denom if linear else (hi - lengths[i]) / denom * alpha * (
                1 - delta) + delta
    return overall


@pytest.mark.parametrize("pool, linear", [("batch", False), ("group", False), ("batch", True)])
def test_jet_bonus_matches_the_released_reward(pool, linear):
    rng = random.Random(3)
    shaper = JETShortest(pool=pool, linear=linear)
    for _ in range(300):
        groups = [g for g in range(rng.randrange(1, 5)) for _ in range(rng.choice([1, 2, 6, 12]))]
        n = len(groups)
        acc = [float(rng.random() < rng.choice([0.0, 0.5, 1.0])) for _ in range(n)]
        fmt = [float(rng.random() < 0.8) for _ in range(n)]
        lengths = [float(rng.choice([rng.randrange(1, 200), 50])) for _ in range(n)]
        base = torch.tensor([0.9 * a + 0.1 * f for a, f in zip(acc, fmt)], dtype=torch.float64)
        b = ShapingBatch(rewards=base, correct=torch.tensor(acc), lengths=torch.tensor(lengths),
                         truncated=torch.zeros(n, dtype=torch.bool), group_ids=torch.tensor(groups), step=0)
        got = shaper(b).rewards.tolist()
        want = released_jet(acc, fmt, lengths, None if pool == "batch" else groups, linear=linear)
        assert got == pytest.approx(want, abs=1e-9)


# ---- HBPO: ports of rllm/rewards/math_reward.py and verl/trainer/ppo/core_algos.py (ZJU-REAL/HBPO @5c8991d) --------

BUDGET_RE = re.compile(r"<think> I will answer the question with (\d+) tokens")


def released_last_boxed(s):
    """rllm math_utils extract_answer: the last \\boxed, brace-balanced, which must be \\boxed{...}; else None."""
    if "\\boxed" not in s:
        return None
    idx = s.rfind("\\boxed")
    depth, i = 0, idx
    while i < len(s):
        depth += (s[i] == "{") - (s[i] == "}")
        if s[i] == "}" and depth == 0:
            box = s[idx:i + 1]
            return box[7:-1] if box.startswith("\\boxed{") else None
        i += 1
    return None


def released_hbpo_reward(resp, n_gen, correct):
    """rllm/rewards/math_reward.py RewardMathFn.__call__ (the grader replaced by the given correctness)."""
    m = BUDGET_RE.search(resp)
    b = int(m.group(1)) if m else 4096
    if "</think>" not in resp or released_last_boxed(resp.split("</think>")[1]) is None:
        return -1.0
    if correct and n_gen <= 4096:
        res = 4 * np.cos(3.1416 * n_gen / 8192)
        if m:
            return float(min(res - 1 / 4096 * abs(b - n_gen), 4 * np.cos(3.1416 * b / 8192)))
        return float(np.round(res, 2))
    return 0.0


def test_hbpo_reward_matches_the_released_reward():
    rng = random.Random(0)
    reward = HBPOBudget()
    for _ in range(3000):
        b = rng.choice([512, 1024, 2048, 2560, None])
        head = f"<think> I will answer the question with {b} tokens" if b else "<think>"
        tail = rng.choice(["</think> so \\boxed{7}", "</think> seven", " no end \\boxed{7}", "</think>\\boxed{1}",
                           "</think> \\boxed{\\frac{1}{2}}", "</think> \\boxed{7", "</think> \\boxed 7 \\boxed{",
                           "</think> a</think> \\boxed{2}"])
        n = rng.randrange(1, 5000)
        ok = float(rng.random() < 0.6)
        got = reward(["q"], [head + tail], [[0] * n], num_tokens=[n], correct=[ok], budget=[b])[0]
        assert got == pytest.approx(released_hbpo_reward(head + tail, n, ok), abs=1e-6), (b, tail, n, ok)


def released_hbpo_advantage(scores, budgets, index, eps=1e-6):
    """verl/trainer/ppo/core_algos.py compute_grpo_outcome_advantage of the HBPO release (float32): the group
    z-score plus the sub-group term (sub-group mean - 4 cos(3.1416 b / 8192)), added twice as released; groups of
    more than one sample (the released handling of a group of one reads a stale value)."""
    f = np.float32
    members = defaultdict(list)
    for i, u in enumerate(index):
        members[u].append(i)
    out = []
    for i, u in enumerate(index):
        ids = members[u]
        s = np.array([scores[j] for j in ids], dtype=f)
        sub = np.mean(np.array([scores[j] for j in ids if budgets[j] == budgets[i]], dtype=f), dtype=f)
        a = (f(scores[i]) - s.mean(dtype=f)) / (s.std(ddof=1, dtype=f) + f(eps))
        intra = sub - f(4) * np.cos(f(3.1416 * budgets[i] / 8192))
        out.append(float(a + intra + intra))
    return out


def test_hbpo_advantage_matches_the_released_estimator_and_the_papers_form():
    rng = random.Random(1)
    for _ in range(400):
        index = [g for g in range(rng.randrange(1, 4)) for _ in range(rng.choice([2, 4, 8, 16]))]
        budgets = [rng.choice([512, 1024, 2048, 2560]) for _ in index]
        scores = [rng.choice([-1.0, 0.0, rng.uniform(2, 4)]) for _ in index]
        cols = {"budget": budgets}
        got = hbpo_advantages(torch.tensor(scores), torch.tensor(index), columns=cols, intra_scale=2.0)
        assert got.tolist() == pytest.approx(released_hbpo_advantage(scores, budgets, index), abs=2e-4)
        once = hbpo_advantages(torch.tensor(scores), torch.tensor(index), columns=cols)
        twice_minus = [2 * a - b for a, b in zip(once.tolist(), got.tolist())]  # z + intra: the paper's form
        zs = hbpo_advantages(torch.tensor(scores), torch.tensor(index), columns=cols, intra_scale=0.0)
        assert twice_minus == pytest.approx(zs.tolist(), abs=1e-6)
    # a group of one: R itself (the paper's form)
    assert hbpo_advantages(torch.tensor([3.0]), torch.tensor([0]), columns={"budget": [512]}).tolist() == [3.0]
    # a sub-group that earns its ceiling gets no intra penalty
    ceiling = 4 * math.cos(3.1416 * 512 / 8192)
    a = hbpo_advantages(torch.tensor([ceiling, ceiling]), torch.tensor([0, 0]), columns={"budget": [512, 512]})
    assert a.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_a_cut_past_the_end_and_a_bad_hook_batch():
    from rlkit.rollout.hooks import check_hook_batch, join_continuation

    s = Sample([1], [], [], "stop", "", 0, [])
    tail = Sample([1], [9], [-0.3], "stop", "z", 0, [1])
    joined = join_continuation(s, 1, [7, 7], "ab", tail, trace=True, decode=None)  # JET's cut of an empty answer
    assert joined.completion_ids == [7, 7, 9] and joined.injected == [0, 1] and joined.trainable() == [0, 0, 1]
    ok = StepBatchOf([Sample([1], [5], [-1.0], "stop", "", 0)] * 2)
    check_hook_batch(ok, 1, SamplingSpec(n=2), "h")
    with pytest.raises(ValueError, match="rollout hook h returned 2 samples of 1 prompts; expected 3"):
        check_hook_batch(ok, 1, SamplingSpec(n=3), "h")
    bad = StepBatchOf([Sample([1], [5], [-1.0, -2.0], "stop", "", 0), Sample([1], [5], [], "stop", "", 0)])
    with pytest.raises(ValueError, match="sample 0 has 2 logprobs for 1 completion tokens"):
        check_hook_batch(bad, 1, SamplingSpec(n=2), "h")


def StepBatchOf(samples):
    from rlkit.records import StepBatch

    return StepBatch([Prompt([1], "a", {})], samples)
