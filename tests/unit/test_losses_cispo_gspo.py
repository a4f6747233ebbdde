"""CISPO and GSPO against hand-computed values, and the aggregation a loss declares."""

import math

import pytest
import torch

from rlkit.algorithms.losses import LossInputs, aggregation_weights, cispo_loss, gspo_loss, importance_ratio
from rlkit.config import ConfigError, load_config, resolve


def test_cispo_weights_every_token_by_its_clipped_detached_ratio():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.5, -1.0]])
    mask = torch.ones(1, 3)
    out = cispo_loss(LossInputs(logp, old, torch.tensor([2.0]), mask, aggregation_weights(mask, "token-mean", 3.0)))
    w = [1.0, math.exp(-0.5), 1.28]  # ratios 1, 0.607, 1.649 -> the last clipped at 1 + 0.28; no lower bound
    want = -(2.0 / 3.0) * (w[0] * -1.0 + w[1] * -2.0 + w[2] * -0.5)
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    out.loss.backward()
    # the clipped token still gets a gradient (PPO's clip would zero it): -(A / 3) * weight
    assert logp.grad[0].tolist() == pytest.approx([-(2.0 / 3.0) * x for x in w], rel=1e-6)
    assert out.stats["clip_frac"].item() == 1.0


def test_gspo_clips_the_length_normalised_sequence_ratio():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-0.5, -2.5, 0.0], [-1.01, -1.01, -1.01]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([-0.5, 1.0])
    out = gspo_loss(LossInputs(logp, old, adv, mask, aggregation_weights(mask, "seq-mean-token-mean", 2.0)))
    # s_0 = exp((0.5 - 0.5) / 2) = 1: l_0 = 0.5; s_1 = exp(0.01) > 1 + 4e-4 with A > 0: clipped, l_1 = -1.0004
    assert out.loss.item() == pytest.approx((0.5 - 1.0004) / 2, rel=1e-5)
    out.loss.backward()
    # d l_0 / d logp_t = -A s_0 / |o_0|, times 1/G; the clipped sequence gets none; padding none
    assert logp.grad.flatten().tolist() == pytest.approx([0.125, 0.125, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    assert out.stats["clip_frac"].item() == 3.0  # token-weighted: the 3 tokens of the clipped sequence
    assert out.stats["seq_ratio"].item() == pytest.approx(2 * 1.0 + 3 * math.exp(0.01), rel=1e-6)


def test_one_ratio_helper_bounds_the_log_ratio():
    r = importance_ratio(torch.tensor([100.0, -100.0, 0.5]), torch.tensor([0.0, 0.0, 0.0]))
    assert r.tolist() == pytest.approx([math.exp(20.0), math.exp(-20.0), math.exp(0.5)], rel=1e-6)


def test_a_loss_declares_its_aggregation():
    assert resolve(load_config(overrides=["algorithm.loss=gspo"])).algorithm.aggregation == "seq-mean-token-mean"
    assert resolve(load_config(overrides=["algorithm.loss=cispo"])).algorithm.aggregation == "token-mean"
    assert resolve(load_config(overrides=[])).algorithm.aggregation == "token-mean"  # auto without a declaration
    edited = load_config(overrides=["algorithm.loss=gspo"])
    edited.algorithm.loss = "cispo"  # auto stays auto in the described config: an edit resolves to the new loss's
    assert edited.algorithm.aggregation == "auto" and resolve(edited).algorithm.aggregation == "token-mean"
    with pytest.raises(ConfigError, match="loss 'gspo' is defined with 'seq-mean-token-mean'"):
        load_config(overrides=["algorithm.loss=gspo", "algorithm.aggregation=token-mean"])
