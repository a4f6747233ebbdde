"""Method stages against methods.md: filters on shaped rewards, until-full rounds, unknown correctness in the
shapers, LASER's monitor buckets, KL-Cov's minibatch-wide token choice."""

import math

import pytest
import torch

from rlkit.algorithms.filters import DynamicSampling
from rlkit.algorithms.losses import KLCovOptions, MinibatchInputs, kl_cov_select
from rlkit.records import Prompt, Sample, ShapingBatch, StepBatch
from rlkit.shaping.groups import DifficultyAwareTruncation, GrpoLambda, KimiLength, Palu
from rlkit.shaping.laser import LaserD, bucket_of, monitor_bucket

NAN = math.nan


def _batch(lengths_per_group, correct_per_group, shaper=None):
    """A StepBatch of groups with the given lengths and verifier values; rewards = correctness."""
    prompts, samples, correct = [], [], []
    for g, (lengths, corr) in enumerate(zip(lengths_per_group, correct_per_group)):
        prompts.append(Prompt([g], f"q{g}", {"question": f"q{g}", "source": f"f:{g}"}))
        samples += [Sample([g], [1] * n, [], "stop", "", g) for n in lengths]
        correct += corr
    c = torch.tensor(correct, dtype=torch.float32)
    batch = StepBatch(prompts, samples, rewards=torch.nan_to_num(c), terms={"correct": c}, correct=c)
    if shaper is not None:
        sb = ShapingBatch(batch.rewards, batch.correct, batch.lengths, batch.truncated, batch.group_ids, step=0)
        batch.shaped = shaper(sb).rewards
    return batch


def _no_reduce(t, op):
    return t


def test_da_dler_filters_on_the_shaped_reward():
    """All-correct easy groups, some samples over the 2,000-token cap: the cap gives them signal, so a filter on
    the shaped reward keeps them; a filter on correctness (the old order) drops exactly these groups."""
    cap = DifficultyAwareTruncation(thresholds=[0.5], lengths=[4000, 2000])
    groups = ([1500, 2500, 1800, 3000], [1000, 1200, 1100, 900], [500, 600, 700, 800])
    verdicts = ([1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0])

    def produce(n, round_idx):
        return _batch(groups, verdicts, shaper=cap)

    shaped = DynamicSampling(metric="shaped", max_rounds=1).collect(3, produce, _no_reduce)
    assert [p.text for p in shaped.prompts[:2]] == ["q0", "q2"]  # the capped easy group survives
    assert shaped.shaped[:4].tolist() == [1.0, 0.0, 1.0, 0.0]
    on_correct = DynamicSampling(metric="correct", max_rounds=1).collect(3, produce, _no_reduce)
    assert "q0" not in [p.text for p in on_correct.prompts[:1]]
    assert on_correct.metrics["sampling/informative_fraction"] == pytest.approx(1 / 3)


def test_until_full_generates_rounds_until_the_batch_is_full_and_reports_the_cap():
    rounds = []

    def produce(n, round_idx):  # every round: one informative group among n prompts
        rounds.append(n)
        return _batch([[10, 20]] * n, [[1, 0]] + [[1, 1]] * (n - 1))

    full = DynamicSampling(metric="correct", until_full=True, safety_cap=10).collect(4, produce, _no_reduce)
    assert len(full.prompts) == 4 and rounds == [4, 3, 2, 1]
    assert full.metrics["sampling/padded_groups"] == 0 and full.metrics["sampling/cap_hit"] == 0.0
    assert full.correct.tolist() == [1.0, 0.0] * 4  # only informative groups
    rounds.clear()
    capped = DynamicSampling(metric="correct", until_full=True, safety_cap=2).collect(4, produce, _no_reduce)
    assert rounds == [4, 3] and capped.metrics["sampling/cap_hit"] == 1.0
    assert capped.metrics["sampling/padded_groups"] == 2 and len(capped.prompts) == 4
    rounds.clear()  # without until_full, max_rounds (default 3) rounds, then padding; no cap reported
    short = DynamicSampling(metric="correct").collect(4, produce, _no_reduce)
    assert rounds == [4, 3, 2] and short.metrics["sampling/padded_groups"] == 1
    assert short.metrics["sampling/cap_hit"] == 0.0


def test_shapers_treat_unknown_correctness_as_unknown_not_wrong():
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0])
    correct = torch.tensor([1.0, NAN, NAN, NAN])
    rewards = torch.tensor([0.5, 0.7, 0.2, 0.9])

    def sb(**kw):
        base = dict(rewards=rewards.clone(), correct=correct, lengths=lengths, truncated=torch.zeros(4, dtype=torch.bool),
                    group_ids=torch.zeros(4, dtype=torch.long), step=0, keys=["k"] * 4)
        base.update(kw)
        return ShapingBatch(**base)

    kimi = KimiLength(coef=0.4)(sb()).rewards  # unknown samples keep their reward
    assert kimi[1:].tolist() == pytest.approx(rewards[1:].tolist()) and kimi[0] == pytest.approx(0.5 + 0.4 * 0.5)
    # pass rate over the known sample is 1.0: the group is switched; unknown samples keep the combined reward
    lam = GrpoLambda(mode="threshold", threshold=0.9)(sb())  # (NaN as wrong: pass rate 1/4, not switched)
    assert lam.metrics["switched_fraction"] == 1.0 and lam.rewards[1:].tolist() == pytest.approx(rewards[1:].tolist())
    # DA-DLER: pass rate 1.0 over the known sample -> the short cap (25); unknown is not "wrong" (0.25 -> long cap)
    da = DifficultyAwareTruncation(thresholds=[0.5], lengths=[100, 25])(sb()).rewards
    assert da.tolist() == pytest.approx([0.5, 0.7, 0.0, 0.0])
    palu = Palu(max_tokens=64, C=1.0)
    palu(sb(correct=torch.tensor([1.0, 1.0, NAN, NAN])))
    assert palu.budgets["k"] == 59  # 2 of 2 known correct: 64 - (20 - 15) (with NaN as wrong: 2/4 < C, reset to 64)
    laser = LaserD(alpha=1.0, lower=8, upper=64, interval=8)
    laser.update_from_monitor(lengths, correct, torch.zeros(4, dtype=torch.long))
    bonus = laser(sb()).rewards - rewards
    assert bonus[1:].tolist() == [0.0, 0.0, 0.0]


def test_laser_monitor_buckets_use_the_monitor_edges():
    assert [monitor_bucket(r) for r in (0.0, 1 / 3, 0.5, 2 / 3, 0.9)] == ["hard", "hard", "medium", "medium", "easy"]
    assert [bucket_of(r) for r in (1 / 3, 2 / 3)] == ["medium", "easy"]  # training groups keep LASER's code edges
    laser = LaserD(lower=8, upper=64, interval=8, monitor_samples=3)
    # one monitor prompt at accuracy 1/3 (hard) with lengths 40; one at 2/3 (medium) with lengths 16
    lengths = torch.tensor([40.0, 40.0, 40.0, 16.0, 16.0, 16.0])
    correct = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    laser.update_from_monitor(lengths, correct, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert laser.targets == {"hard": 40, "medium": 16, "easy": None}


def _cov_topk(lp, adv, mask, ratio):
    valid = mask > 0
    a = adv[:, None].expand_as(lp)[valid].double()
    x = lp[valid].double()
    cov = (a - a.mean()) * (x - x.mean())
    k = max(1, math.floor(ratio * int(valid.sum())))
    chosen = torch.zeros(int(valid.sum()), dtype=torch.bool)
    chosen[torch.topk(cov, k).indices] = True
    out = torch.zeros_like(valid)
    out[valid] = chosen
    return out


def test_kl_cov_selects_the_top_tokens_of_the_whole_minibatch():
    gen = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 30, generator=gen) * 4
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    mask = (torch.arange(30)[None, :] < torch.tensor([30, 4, 6, 5])[:, None]).float()  # one long response

    def select(rows):
        return kl_cov_select(MinibatchInputs(lp[rows], adv[rows], mask[rows], lambda t: t, lambda t: t),
                             KLCovOptions(kl_cov_ratio=0.1))["kl_cov_chosen"]

    whole = select([0, 1, 2, 3])
    assert torch.equal(whole, _cov_topk(lp, adv, mask, 0.1)) and int(whole.sum()) == 4  # floor(0.1 x 45)
    # per micro-batch (the long response alone, the rest together) the choice differs: alone, its advantage is
    # constant, every covariance is 0 and its first 3 tokens are taken only because they come first
    alone, rest = select([0]), select([1, 2, 3])
    assert alone[0, :3].all() and int(alone.sum()) == 3 and not torch.equal(torch.cat([alone, rest]), whole)


def test_kl_cov_chooses_exactly_k_tokens_when_covariances_tie():
    """A minibatch whose advantages are all equal (e.g. padded with zero-variance groups): every covariance is 0;
    exactly k tokens are chosen, the first ones in order."""
    lp = -torch.rand(3, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 8)
    chosen = kl_cov_select(MinibatchInputs(lp, torch.zeros(3), mask, lambda t: t, lambda t: t),
                           KLCovOptions(kl_cov_ratio=0.25))["kl_cov_chosen"]
    assert int(chosen.sum()) == 6 and chosen[0, :6].all() and not chosen[0, 6:].any() and not chosen[1:].any()
