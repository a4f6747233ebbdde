import math

import pytest
import torch

from rlkit.algorithms.losses import (
    ClipOptions,
    LossInputs,
    aggregation_denominator,
    aggregation_weights,
    k3_kl,
    ppo_clip_loss,
)


def _inp(logp, old, adv, mask=None, weights=None, ref=None):
    logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    mask = torch.ones_like(logp) if mask is None else torch.tensor(mask, dtype=torch.float64)
    w = mask / mask.sum() if weights is None else weights
    return LossInputs(logprobs=logp, old_logprobs=torch.tensor(old, dtype=torch.float64),
                      advantages=torch.tensor(adv, dtype=torch.float64), mask=mask, token_weights=w,
                      ref_logprobs=None if ref is None else torch.tensor(ref, dtype=torch.float64))


def test_ppo_clip_hand_computed_asymmetric():
    # ratios e^0.5=1.6487 (A>0 -> clipped at 1.28), e^-0.5=0.6065 (A<0 -> clipped at 0.8)
    inp = _inp([[0.5, -0.5]], [[0.0, 0.0]], [1.0])
    out = ppo_clip_loss(inp, ClipOptions(epsilon_low=0.2, epsilon_high=0.28))
    # token 1 (A=1, rho=1.6487): max(-1.6487, -1.28) = -1.28 ; token 2 (A=1, rho=0.6065): max(-0.6065, -0.8) = -0.6065
    assert out.loss.item() == pytest.approx((-1.28 - math.exp(-0.5)) / 2, abs=1e-9)
    assert out.stats["clip_frac"].item() == 1.0  # only the first token is clipped
    out.loss.backward()
    g = inp.logprobs.grad[0]
    assert g[0].item() == 0.0  # clipped token has no gradient
    assert g[1].item() == pytest.approx(-math.exp(-0.5) / 2, abs=1e-9)


def test_negative_advantage_and_dual_clip():
    # A=-1, rho = e^2 = 7.389: PPO term max(7.389, 1.2) = 7.389; dual clip c=3 caps it at 3
    inp = _inp([[2.0]], [[0.0]], [-1.0])
    assert ppo_clip_loss(inp).loss.item() == pytest.approx(math.exp(2.0), rel=1e-9)
    out = ppo_clip_loss(_inp([[2.0]], [[0.0]], [-1.0]), ClipOptions(dual_clip=3.0))
    assert out.loss.item() == pytest.approx(3.0)
    assert out.stats["dual_clip_frac"].item() == 1.0


def test_k3_kl_term():
    assert k3_kl(torch.tensor(0.3), torch.tensor(0.3)).item() == 0.0
    d = -0.4  # ref - logp
    assert k3_kl(torch.tensor(0.4), torch.tensor(0.0)).item() == pytest.approx(math.exp(d) - d - 1, rel=1e-6)
    inp = _inp([[0.4]], [[0.4]], [0.0], ref=[[0.0]])
    out = ppo_clip_loss(inp, ClipOptions(kl_coef=0.5))
    assert out.loss.item() == pytest.approx(0.5 * (math.exp(d) - d - 1), rel=1e-9)


MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float64)
LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]], dtype=torch.float64)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
    ("seq-mean-token-sum-norm", (1 + 2 + 3 + 4) / (2 * 8)),
])
def test_aggregation_modes_hand_computed(mode, expected):
    w = aggregation_weights(MASK, mode, aggregation_denominator(MASK, mode, max_len=8))
    assert float((w * LOSS).sum()) == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_microbatch_accumulation_equals_full_batch(mode):
    torch.manual_seed(0)
    mask = (torch.rand(6, 5) > 0.3).double()
    mask[:, 0] = 1
    loss = torch.randn(6, 5, dtype=torch.float64)
    denom = aggregation_denominator(mask, mode, 5)
    w = aggregation_weights(mask, mode, denom)
    full = (w * loss).sum()
    parts = sum((w[i:i + 2] * loss[i:i + 2]).sum() for i in range(0, 6, 2))
    assert float(parts) == pytest.approx(float(full))


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="valid: token-mean"):
        aggregation_denominator(MASK, "mean", 4)
