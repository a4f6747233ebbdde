import pytest
import torch

from rlkit import registry
from rlkit.records import ShapingBatch
from rlkit.shaping.laser import bucket_of, candidates, min_correct


def build_shaper(name, kwargs=None):
    return registry.build(registry.resolve("shaper", name), kwargs or {})


def test_candidates_buckets_and_min_correct():
    assert candidates(1024, 4096, 1024) == [1024, 2048, 3072, 4096]
    assert candidates(500, 3072, 1024) == [500, 1024, 2048, 3072]
    assert [bucket_of(p) for p in (0.0, 0.3, 1 / 3, 0.6, 2 / 3, 1.0)] == ["hard", "hard", "medium", "medium", "easy", "easy"]
    assert [min_correct(b, 8, "ceil") for b in ("easy", "medium", "hard")] == [6, 3, 1]  # the paper
    assert [min_correct(b, 8, "floor") for b in ("easy", "medium", "hard")] == [5, 2, 1]  # the released config


def monitor(groups):
    lengths = torch.tensor([float(L) for _, ls in groups for L in ls])
    correct = torch.tensor([float(i < c) for c, ls in groups for i in range(len(ls))])
    gids = torch.tensor([g for g, (_, ls) in enumerate(groups) for _ in ls])
    return lengths, correct, gids


def test_targets_from_expected_correct_responses():
    kw = dict(lower=100, upper=400, interval=100, monitor_samples=8)
    groups = [(7, [50, 50, 150, 150, 150, 250, 250, 350]),   # easy: P(100) = 2/8, ECR = 1.5 (ceil) -> 100
              (4, [50, 50, 50, 150, 150, 250, 250, 250]),    # medium: P(100) = 3/8
              (1, [50, 150, 250, 350, 450, 450, 450, 450])]  # hard: needs P = 1, nothing <= 400 covers all
    ceil = build_shaper("laser_d", kw)
    assert ceil.update_from_monitor(*monitor(groups)) == {"target_hard": -1, "target_medium": 100, "target_easy": 100}
    floor = build_shaper("laser_d", {**kw, "rounding": "floor"})
    floor.update_from_monitor(*monitor(groups))
    # medium with floor: floor(3/8 * 2) = 0 at 100; floor(5/8 * 2) = 1 at 200
    assert floor.targets == {"hard": None, "medium": 200, "easy": 100}


def test_laser_d_and_de_bonuses():
    shaper = build_shaper("laser_d", {"alpha": 0.5})
    shaper.targets = {"easy": 100, "medium": 200, "hard": None}
    # group 0 easy (3/3 correct): lengths 50, 150, 90; group 1 hard (0/3): falls back to the batch max (300)
    b = ShapingBatch(rewards=torch.zeros(6), correct=torch.tensor([1.0, 1, 1, 0, 0, 0]),
                     lengths=torch.tensor([50.0, 150, 90, 300, 250, 100]), truncated=torch.zeros(6, dtype=torch.bool),
                     group_ids=torch.tensor([0, 0, 0, 1, 1, 1]), step=0,
                     terms={"boxed_format": torch.tensor([1.0, 1, 1, 1, 1, 0])},
                     looping=torch.tensor([False, False, False, False, True, False]))
    assert shaper(b).rewards.tolist() == [0.5, 0.0, 0.5, 0.0, 0.0, 0.0]
    de = build_shaper("laser_de", {"alpha": 0.5})
    de.targets = {"easy": 100, "medium": 200, "hard": 120}
    # hard target 120: 300 (formatted, not looping) explores -> +0.5; 250 loops -> 0; 100 is within target -> 0
    assert de(b).rewards.tolist() == [0.5, 0.0, 0.5, 0.5, 0.0, 0.0]
    assert de.needs_looping and not shaper.needs_looping
    b.terms = {}
    with pytest.raises(ValueError, match="laser_de needs the format term 'boxed_format'"):
        de(b)


def test_laser_state_round_trip():
    s = build_shaper("laser_d", {})
    s.targets = {"easy": 1024, "medium": 2048, "hard": None}
    t = build_shaper("laser_d", {})
    t.load_state_dict(s.state_dict())
    assert t.targets == s.targets
