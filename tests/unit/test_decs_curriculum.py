"""DECS's curriculum data scheduling (rlkit.algorithms.filters.DECSCurriculum) against its released trainer: the
kappa branch of pixas/DECS src_valid/valid_ray_trainer.py (group filter L1530-1570, kappa update L1661-1665) is
ported below as the reference; and the reward's ``nrp_ratio`` report reaching the filter through a RewardSet."""

import random

import numpy as np
import pytest
import torch

from rlkit.algorithms.filters import DECSCurriculum
from rlkit.config import ConfigError, load_config
from rlkit.records import Prompt, Sample, StepBatch

RATIO = "decs_redundancy/nrp_ratio"


def _no_reduce(t, op):
    return t


def _round(groups: list[list[float]], ratio: float) -> StepBatch:
    """One generation round: per group its samples' 0/1 verdicts; every correct sample reports ``ratio``."""
    prompts, samples, correct = [], [], []
    for g, verdicts in enumerate(groups):
        prompts.append(Prompt([g], f"q{g}", {"question": f"q{g}"}))
        samples += [Sample([g], [1, 2], [], "stop", "", g) for _ in verdicts]
        correct += verdicts
    c = torch.tensor(correct, dtype=torch.float32)
    r = torch.where(c > 0, torch.tensor(ratio), torch.tensor(float("nan")))
    return StepBatch(prompts, samples, rewards=c.clone(), terms={"correct": c, RATIO: r}, correct=c)


def released_step(kappa: float, rounds: list[list[list[float]]], quota: int, rng: random.Random) -> list[int]:
    """Ported from the released trainer (valid_ray_trainer.py L1530-1600, enable_kappa): the all-correct groups each
    round appends, until the batch has ``quota`` prompts (or the rounds run out)."""
    cur_batch_kept_num, num_prompt_in_batch, appended = 0, 0, []
    for groups in rounds:
        std = {u: np.std(v) for u, v in enumerate(groups)}
        mean = {u: np.mean(v) for u, v in enumerate(groups)}
        kept = [u for u in std if std[u] > 0]
        all_correct = [u for u in std if mean[u] > 0 and std[u] == 0]
        n = 0
        if kappa > 0:
            cur_batch_kept_num += len(kept)
            n = int(kappa * cur_batch_kept_num / (1 - kappa))
            if n > 0:
                cur_batch_kept_num = 0
            n = min(n, len(all_correct))
            kept.extend(rng.sample(all_correct, k=n))
        appended.append(n)
        num_prompt_in_batch += len(kept)
        if num_prompt_in_batch >= quota:
            break
    return appended


def released_kappa(kappa: float, last: float, ratio_mean: float, kappa_lr: float) -> tuple[float, float]:
    """valid_ray_trainer.py L1661-1665."""
    if last != 0:
        kappa = kappa + (ratio_mean - last) * kappa_lr
    return kappa, ratio_mean


def test_kappa_and_the_easy_groups_added_follow_the_released_trainer():
    rng = random.Random(3)
    quota, kappa_lr = 8, 0.6  # a large rate so that kappa matters within a few steps
    f = DECSCurriculum(max_rounds=10, kappa_lr=kappa_lr, round_prompts=2.0)
    kappa, last = 0.0, 0.5
    added_any = False
    for _ in range(12):
        ratio = rng.choice([0.3, 0.6, 0.75, 0.9, 1.0])
        rounds = [[rng.choice([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]])
                   for _ in range(2 * quota)] for _ in range(10)]
        calls = []

        def produce(n, round_idx, rounds=rounds, calls=calls, ratio=ratio):
            calls.append(n)
            return _round(rounds[round_idx][:n], ratio)

        out = f.collect(quota, produce, _no_reduce)
        want = released_step(kappa, rounds, quota, random.Random(0))
        assert out.metrics["sampling/kappa"] == pytest.approx(kappa)
        assert calls == [2 * quota] * len(want)  # rounds of gen_batch_size = 2 x the quota until the quota is met
        assert out.metrics["sampling/easy_groups"] == sum(want)
        added_any |= sum(want) > 0
        assert len(out.prompts) == quota and out.padding is None
        kappa, last = released_kappa(kappa, last, ratio, kappa_lr)
        assert f.kappa == pytest.approx(kappa) and f.last_ratio == pytest.approx(last)
        assert f.kappa == pytest.approx(kappa_lr * (ratio - 0.5))  # the sum telescopes
    assert added_any


def test_at_kappa_zero_it_is_dynamic_sampling_and_easy_groups_join_only_when_kappa_is_positive():
    from rlkit.algorithms.filters import DynamicSampling

    groups = [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
    f = DECSCurriculum(max_rounds=1)
    out = f.collect(2, lambda n, i: _round(groups, 0.8), _no_reduce)
    ref = DynamicSampling(max_rounds=1).collect(2, lambda n, i: _round(groups, 0.8), _no_reduce)
    assert sorted(p.text for p in out.prompts) == sorted(p.text for p in ref.prompts) == ["q1", "q4"]
    assert out.metrics["sampling/easy_groups"] == 0
    assert f.kappa == pytest.approx(0.2 * (0.8 - 0.5))  # from 0: the ratio rose from 0.5 to 0.8
    # kappa 0.06 > 0: 2 kept give int(0.06 * 2 / 0.94) = 0 easy groups, 40 kept give int(0.06 * 40 / 0.94) = 2
    assert f.collect(2, lambda n, i: _round(groups, 0.8), _no_reduce).metrics["sampling/easy_groups"] == 0
    f.kappa, f.last_ratio = 0.06, 0.8
    many = [[1, 0, 0, 0]] * 40 + [[1, 1, 1, 1]] * 3
    out = f.collect(42, lambda n, i: _round(many, 0.8), _no_reduce)
    easy = [p for p in out.prompts if p.text in {"q40", "q41", "q42"}]
    assert out.metrics["sampling/easy_groups"] == 2 == len(easy) and out.padding is None
    # a falling ratio gives kappa < 0: no easy group joins
    f.kappa, f.last_ratio = 0.0, 0.8
    f.collect(4, lambda n, i: _round(groups, 0.3), _no_reduce)
    assert f.kappa < 0
    assert f.collect(42, lambda n, i: _round(many, 0.3), _no_reduce).metrics["sampling/easy_groups"] == 0


def test_a_step_without_a_ratio_keeps_kappa_and_the_state_resumes_exactly():
    f = DECSCurriculum(kappa_lr=0.2)
    f.collect(1, lambda n, i: _round([[1, 0]], 0.9), _no_reduce)
    kappa = f.kappa
    f.collect(1, lambda n, i: _round([[0, 0], [1, 0]], float("nan")), _no_reduce)  # released: NaN from here on
    assert f.kappa == kappa and f.last_ratio == pytest.approx(0.9)
    g = DECSCurriculum(kappa_lr=0.2)
    g.load_state_dict(f.state_dict())
    groups = [[1, 0, 0, 0]] * 30 + [[1, 1, 1, 1]] * 10
    a = f.collect(40, lambda n, i: _round(groups, 0.7), _no_reduce)
    b = g.collect(40, lambda n, i: _round(groups, 0.7), _no_reduce)
    assert [p.text for p in a.prompts] == [p.text for p in b.prompts] and a.metrics == b.metrics


def test_bad_options_and_a_missing_ratio_are_named():
    with pytest.raises(ValueError, match=r"kappa_lr must be in \[0, 2\)"):
        DECSCurriculum(kappa_lr=2.5)
    with pytest.raises(ValueError, match="round_prompts must be >= 1"):
        DECSCurriculum(round_prompts=0.5)
    batch = _round([[1, 0]], 0.5)
    del batch.terms[RATIO]
    with pytest.raises(ValueError, match="reads the per-sample column 'decs_redundancy/nrp_ratio'"):
        DECSCurriculum().collect(1, lambda n, i: batch, _no_reduce)
    from rlkit.trainers.stages import build_components

    with pytest.raises(ConfigError, match=r"filter \(decs_curriculum\) reads the reward column\(s\) "
                                          r"decs_redundancy/nrp_ratio, which no reward term gives"):
        build_components(load_config(overrides={"filter": {"name": "decs_curriculum"},
                                                "rewards": [{"name": "math_correct"}]}))
