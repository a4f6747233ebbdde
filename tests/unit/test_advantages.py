import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit import registry
from rlkit.algorithms.advantages import dr_grpo_advantages, grpo_advantages, rloo_advantages


def resolve_advantage(name):
    return registry.resolve("advantage", name).obj


R = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_grpo_group_scale_hand_computed():
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: zero variance -> all zero
    std = math.sqrt(((0.5**2) * 4) / 3)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / torch.tensor([std] * 4 + [1] * 4)
    expected[4:] = 0
    got = grpo_advantages(R, G, scale="group")
    assert torch.allclose(got[:4], expected[:4], atol=1e-5)
    assert torch.equal(got[4:], torch.zeros(4))


def test_grpo_batch_and_none_scale():
    batch_std = R.std()
    assert torch.allclose(grpo_advantages(R, G, scale="batch"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / (batch_std + 1e-6))
    assert torch.allclose(grpo_advantages(R, G, scale="none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        grpo_advantages(R, G, scale="bogus")


def test_dr_grpo_has_no_scale_and_rloo_leave_one_out():
    # dr_grpo never divides by a std: it no longer takes a `scale` option at all
    assert "scale" not in registry.resolve("advantage", "dr_grpo").options
    assert torch.allclose(dr_grpo_advantages(R, G), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    # RLOO: r_i - mean of the other three; for r=1: 1 - 1/3, for r=0: 0 - 2/3
    got = rloo_advantages(R, G)
    assert torch.allclose(got[:4], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)


def test_groups_need_not_be_contiguous():
    ids = torch.tensor([3, 7, 3, 7])
    r = torch.tensor([1.0, 5.0, 3.0, 5.0])
    assert torch.allclose(grpo_advantages(r, ids, scale="none"), torch.tensor([-1.0, 0.0, 1.0, 0.0]))


def test_registry_resolution_and_errors():
    assert resolve_advantage("grpo") is grpo_advantages
    assert resolve_advantage("rlkit.algorithms.advantages:rloo_advantages") is rloo_advantages
    with pytest.raises(KeyError, match="registered advantages: batch_norm, decs, dr_grpo, grpo, hbpo, rloo"):
        resolve_advantage("nope")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=6), min_size=1, max_size=5))
def test_group_advantages_sum_to_zero_per_group(groups):
    r = torch.tensor([v for g in groups for v in g], dtype=torch.float64)
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    for scale in ("group", "none"):
        adv = grpo_advantages(r, ids, scale=scale)
        for i in range(len(groups)):
            assert abs(float(adv[ids == i].sum())) < 1e-6


def test_batch_norm_hand_computed():
    from rlkit.algorithms.advantages import batch_norm_advantages

    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 1, 1])
    L = torch.tensor([1.0, 3.0, 2.0, 2.0])
    # group baseline: A = [0.5, -0.5, 0, 0]; token-weighted mean m = (0.5 - 1.5) / 8 = -0.125
    m = -0.125
    v = (1 * (0.5 - m) ** 2 + 3 * (-0.5 - m) ** 2 + 4 * m**2) / 7
    expected = (torch.tensor([0.5, -0.5, 0.0, 0.0]) - m) / math.sqrt(v + 1e-8)
    assert torch.allclose(batch_norm_advantages(r, g, lengths=L), expected, atol=1e-6)
    assert resolve_advantage("batch_norm") is batch_norm_advantages


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3, allow_nan=False), st.integers(1, 300)), min_size=4, max_size=16))
def test_batch_norm_has_zero_token_weighted_mean(samples):
    from rlkit.algorithms.advantages import batch_norm_advantages

    r = torch.tensor([x for x, _ in samples], dtype=torch.float64)
    L = torch.tensor([n for _, n in samples], dtype=torch.float64)
    g = torch.arange(len(samples)) // 2
    adv = batch_norm_advantages(r, g, lengths=L)
    assert abs(float((adv * L).sum() / L.sum())) < 1e-6
