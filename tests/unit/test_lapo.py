"""LAPO (issue 34 item 7) against its released reward functions (ZJU-REAL/LAPO @ bd59dfd), ported below in the test's
own words: the stage-1 band reward and median, the stage-2 Gaussian, the targets carried from stage 1 to stage 2."""

import json
import math
import random
import statistics

import numpy as np
import pytest
import torch

from rlkit.records import Prompt, ShapingBatch, StageContext
from rlkit.shaping.lapo import LAPOAnnounce, LAPOBand, LAPOTarget, load_targets, percentile


def released_stage1(acc, lengths, w=0.7, margin=100.0):
    """examples/scripts/reward_func_stage1.py reward_func, one prompt's group (the intended rewards: the released
    second append of acc is a bug that makes the file fail downstream) and the logged median."""
    ok = [n for a, n in zip(acc, lengths) if a]
    lo, hi = (np.percentile(ok, 30), np.percentile(ok, 70)) if ok else (0, 0)
    out = []
    for a, n in zip(acc, lengths):
        r = 0.0
        if a and lo < hi:
            r = 1.0 if lo <= n <= hi else max(0.0, 1.0 - min(abs(n - lo), abs(n - hi)) / margin)
        out.append(1.0 * a + w * r)
    return out, (statistics.median(ok) if ok else 0)


def released_stage2(tokens, acc, lengths, sigma=120.0, w=0.8):
    """examples/scripts/reward_func_stage2.py reward_func, one group; ``tokens`` the announced length (4096: none
    learned, the group's median correct length is the target). Lengths as one measure (the released code measures
    the statistics and the reward on two slices of the text 12 tokens apart: a deviation, see the module doc)."""
    ok = [n for a, n in zip(acc, lengths) if a]
    med = statistics.median(ok) if ok else 0
    out = []
    for a, n in zip(acc, lengths):
        r = 0.0
        if a > 0:
            t = tokens if tokens != 4096 else med
            r = math.exp(-((n - t) ** 2) / (2 * sigma ** 2))
        out.append(1.0 * a + w * r)
    return out


def _batch(acc, lengths, groups, keys=None, columns=None):
    n = len(acc)
    return ShapingBatch(rewards=torch.tensor(acc, dtype=torch.float64), correct=torch.tensor(acc),
                        lengths=torch.tensor(lengths, dtype=torch.float32), truncated=torch.zeros(n, dtype=torch.bool),
                        group_ids=torch.tensor(groups), step=0, keys=keys, columns=columns)


def _groups(rng):
    groups = [g for g in range(rng.randrange(1, 4)) for _ in range(rng.choice([1, 2, 3, 8]))]
    acc = [float(rng.random() < rng.choice([0.0, 0.5, 1.0])) for _ in groups]
    lengths = [float(rng.choice([rng.randrange(1, 600), 200])) for _ in groups]
    return groups, acc, lengths


def test_percentile_is_numpys_linear_percentile():
    rng = random.Random(0)
    for _ in range(500):
        xs = [rng.uniform(0, 100) for _ in range(rng.randrange(1, 12))]
        for q in (0, 30, 50, 70, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_stage1_matches_the_released_reward_and_records_the_last_median():
    rng = random.Random(1)
    shaper = LAPOBand()
    for _ in range(400):
        groups, acc, lengths = _groups(rng)
        keys = [f"q{g}" for g in groups]
        got = shaper(_batch(acc, lengths, groups, keys)).rewards.tolist()
        want, medians = [], {}
        for g in sorted(set(groups)):
            rows = [i for i, x in enumerate(groups) if x == g]
            r, med = released_stage1([acc[i] for i in rows], [lengths[i] for i in rows])
            want += r
            medians[f"q{g}"] = med
        assert got == pytest.approx(want, abs=1e-9)
        assert {k: shaper.medians[k] for k in medians} == pytest.approx(medians)


def test_stage2_matches_the_released_reward():
    rng = random.Random(2)
    shaper = LAPOTarget()
    for _ in range(400):
        groups, acc, lengths = _groups(rng)
        targets = {g: rng.choice([4096, rng.randrange(50, 500)]) for g in set(groups)}
        cols = [{"target_length": targets[g]} for g in groups]
        got = shaper(_batch(acc, lengths, groups, columns=cols)).rewards.tolist()
        want = []
        for g in sorted(set(groups)):
            rows = [i for i, x in enumerate(groups) if x == g]
            want += released_stage2(targets[g], [acc[i] for i in rows], [lengths[i] for i in rows])
        assert got == pytest.approx(want, abs=1e-9)


def test_the_learned_lengths_reach_stage_twos_prompts(tmp_path):
    """Stage 1's state, as a checkpoint saves it, is what stage 2 announces (int(median); 4096 for 0 or unseen)."""
    band = LAPOBand()
    band(_batch([1.0, 1.0, 1.0, 0.0, 0.0], [10.0, 20.0, 31.0, 5.0, 5.0], [0, 0, 0, 1, 1], keys=["a:1"] * 3 + ["a:2"] * 2))
    state = {"step": 3, "stages": {"shaping[0].lapo_band": band.state_dict()}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert load_targets(str(tmp_path)) == {"a:1": 20.0, "a:2": 0.0}
    announce = LAPOAnnounce(targets=str(tmp_path))
    ctx = StageContext(step=0, total_steps=1, render=lambda cols, extra: Prompt([1], extra, cols))
    prompts = [Prompt([1], "", {"source": s, "question": "q"}) for s in ("a:1", "a:2", "a:3")]
    out, metrics = announce(prompts, ctx)
    assert [p.text for p in out] == ["I will answer the question with 20 tokens.",
                                     "I will answer the question with 4096 tokens.",
                                     "I will answer the question with 4096 tokens."]
    assert [p.columns["target_length"] for p in out] == [20, 4096, 4096] and metrics["known_frac"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="holds no lapo_band state"):
        (tmp_path / "other.json").write_text(json.dumps({"stages": {}}))
        load_targets(str(tmp_path / "other.json"))
