"""Segment rollout bookkeeping (release, min groups, max wait, pool state) and the DMMPT mask.

The worker is engine-agnostic; here a scripted engine decides each sample's total length so that the
release logic can be checked exactly. The vLLM behaviour (greedy equality, version tags across a real
weight update) is in tests/integration/test_segments_vllm.py.
"""

import json

import torch

from rlkit.algorithms.masks import DMMPT
from rlkit.data import Prompt
from rlkit.records import MaskInputs
from rlkit.rollout.base import Sample, SamplingSpec, per_prompt_specs
from rlkit.rollout.segments import SegmentRolloutWorker

EOS = 2


class ScriptedEngine:
    """Prompt [p]; member j's first token is 1000 + j; it ends with EOS at total length script[p][j]."""

    def __init__(self, script):
        self.script, self.version, self.calls = script, 0, []

    def generate(self, prompts, spec):
        out = []
        for k, (seq, s) in enumerate(zip(prompts, per_prompt_specs(spec, len(prompts)))):
            self.calls.append((list(seq), s.max_new_tokens, s.n))
            for j in range(s.n):
                member = seq[1] - 1000 if len(seq) > 1 else j
                want = self.script[seq[0]][member] - (len(seq) - 1)
                ids = ([1000 + member] if len(seq) == 1 else []) + [7] * 10_000
                ids = ids[:min(want, s.max_new_tokens)]
                stop = len(ids) == want
                if stop:
                    ids[-1] = EOS
                out.append(Sample(list(seq), ids, [-0.5] * len(ids), "stop" if stop else "length", "x" * len(ids), k,
                                  [self.version] * len(ids)))
        return out


def _prompt(p):
    return Prompt([p], f"q{p}", {"question": f"q{p}"})


SPEC = SamplingSpec(n=2, temperature=1.0, max_new_tokens=999, seed=0)


def test_groups_are_released_whole_and_carry_over_across_steps():
    engine = ScriptedEngine({10: [3, 9], 11: [2, 2]})
    worker = SegmentRolloutWorker(engine, segment_len=4, max_total_len=12, min_groups=0)
    released, m = worker.step([_prompt(10), _prompt(11)], SPEC, step=0)
    assert [g.prompt.ids for g in released] == [[11]]  # group 10 waits for its 9-token member
    assert m["segments/pool_groups"] == 1 and m["segments/pool_unfinished"] == 1
    engine.version = 1  # a weight update between steps
    released, m = worker.step([], SPEC, step=1)
    assert released == []  # 8 of 9 tokens so far
    released, m = worker.step([], SPEC, step=2)
    (g,) = released
    long = g.members[1]
    assert long.num_tokens == 9 and long.finish_reason == "stop" and long.completion_ids[-1] == EOS
    assert long.segments == [0] * 4 + [1] * 4 + [2]
    assert long.versions == [0] * 4 + [1] * 5  # each token carries the version that produced it
    assert len(long.logprobs) == 9
    assert m["segments/mean_wait_steps"] == 2 and m["segments/pool_groups"] == 0
    # continuations re-prompt with prompt + prefix and ask only for what is left of the segment budget
    assert engine.calls[2] == ([10, 1001, 7, 7, 7], 4, 1)


def test_min_groups_decodes_more_rounds_in_the_same_step():
    engine = ScriptedEngine({10: [3, 9]})
    worker = SegmentRolloutWorker(engine, segment_len=4, max_total_len=12, min_groups=1)
    released, m = worker.step([_prompt(10)], SPEC, step=0)
    assert len(released) == 1 and m["segments/rounds"] == 3
    assert released[0].members[1].versions == [0] * 9


def test_max_total_len_finishes_without_eos_and_max_wait_cuts():
    engine = ScriptedEngine({10: [30, 2]})
    worker = SegmentRolloutWorker(engine, segment_len=4, max_total_len=8, min_groups=0)
    worker.step([_prompt(10)], SPEC, step=0)
    released, _ = worker.step([], SPEC, step=1)
    assert released[0].members[0].num_tokens == 8 and released[0].members[0].finish_reason == "length"
    engine = ScriptedEngine({10: [30, 2]})
    worker = SegmentRolloutWorker(engine, segment_len=4, max_total_len=100, min_groups=0, max_wait=2)
    for step in range(2):
        released, _ = worker.step([_prompt(10)] if step == 0 else [], SPEC, step=step)
        assert released == []
    released, m = worker.step([], SPEC, step=2)
    assert m["segments/forced_groups"] == 1
    assert released[0].members[0].num_tokens == 12 and released[0].members[0].finish_reason == "length"


def test_pool_state_round_trip_continues_identically():
    script = {10: [3, 11], 11: [6, 7], 12: [1, 13]}

    def run(interrupt: bool):
        worker = SegmentRolloutWorker(ScriptedEngine(script), segment_len=4, max_total_len=16, min_groups=0)
        out = []
        for step in range(6):
            if interrupt and step == 2:  # a checkpoint (JSON, like trainer_state.json) and a fresh worker
                state = json.loads(json.dumps(worker.state_dict()))
                worker = SegmentRolloutWorker(ScriptedEngine(script), segment_len=4, max_total_len=16, min_groups=0)
                worker.load_state_dict(state)
            new = [_prompt(10 + step)] if step < 3 else []
            released, _ = worker.step(new, SPEC, step=step)
            out += [(step, g.key, [(m.completion_ids, m.segments, m.finish_reason) for m in g.members])
                    for g in released]
        return out

    plain, resumed = run(False), run(True)
    assert plain == resumed and len(plain) == 3


def dmmpt_keep(old, ent, mask, correct, tau, sigma):
    inp = MaskInputs(mask=mask, truncated=torch.zeros(mask.shape[0], dtype=torch.bool), correct=correct,
                     old_logprobs=old, entropy=ent)
    return DMMPT(tau=tau, sigma=sigma).keep(inp)


def test_dmmpt_mask_by_hand():
    import math

    lp = torch.log(torch.tensor([[0.995, 0.5, 0.999, 0.0], [0.995, 0.995, 0.2, 0.0], [0.999, 0.999, 0.999, 0.999]]))
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    entropy = torch.tensor([[0.1, 0.3, 0.05, 9.0], [0.1, 0.1, 0.1, 0.0], [0.5, 0.5, 0.5, 0.5]])
    correct = torch.tensor([1.0, 0.0, 1.0])
    keep = dmmpt_keep(lp, entropy, mask, correct, tau=0.99, sigma=0.2)
    # sample 0: correct, mean entropy (0.1+0.3+0.05)/3 = 0.15 < 0.2 -> tokens with p >= 0.99 masked (0 and 2);
    #           the padded position (entropy 9, mask 0) neither counts in the mean nor gets masked
    # sample 1: incorrect -> nothing masked; sample 2: mean entropy 0.5 >= 0.2 -> nothing masked
    assert keep.tolist() == [[0.0, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert dmmpt_keep(lp, entropy, mask, torch.tensor([1.0, math.nan, 1.0]), 0.99, 0.6)[2].tolist() == [0.0] * 4
