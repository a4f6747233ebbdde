"""DRPO, KL-Cov and group-aligned micro-batching (methods.md sec. 3 and 6)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.algorithms.losses import (
    DRPOOptions,
    KLCovOptions,
    LossInputs,
    MinibatchInputs,
    drpo_loss,
    drpo_weights,
    kl_cov_loss,
    kl_cov_select,
)
from rlkit.config import ConfigError, load_config
from rlkit.parallel.micro import unit_chunks
from rlkit.trainers import stages


def build_loss(cfg):
    """The configured loss with its options bound, and whether it keeps groups whole (as the trainer builds it)."""
    spec = stages.build_loss(cfg)
    return spec.fn, spec.whole_groups


def drpo_inputs(logp, mask, correct, groups, old=None, scale=1.0, max_new_tokens=4):
    logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(mask, dtype=torch.float64)
    return LossInputs(logprobs=logp, old_logprobs=logp.detach().clone() if old is None else torch.tensor(old, dtype=torch.float64),
                      advantages=torch.zeros(len(correct), dtype=torch.float64), mask=mask, token_weights=mask,
                      group_ids=torch.tensor(groups), correct=torch.tensor(correct, dtype=torch.float64),
                      group_scale=scale, max_new_tokens=max_new_tokens)


def test_drpo_hand_computed_value_and_gradient():
    # s = [-1, -3, -0.5]; equal positive lengths -> w = 0.5 each; one negative -> neg term = s_neg
    inp = drpo_inputs([[-1.0, -1.0], [-2.0, -4.0], [-0.5, -9.0]], [[1, 1], [1, 1], [1, 0]], [1, 1, 0], [0, 0, 0])
    out = drpo_loss(inp, DRPOOptions(tau=10.0))
    assert out.loss.item() == pytest.approx(-((0.5 * -1 + 0.5 * -3) - (-0.5)))
    out.loss.backward()
    g = inp.logprobs.grad
    assert g[0].tolist() == pytest.approx([-0.25, -0.25])  # -w / |o|
    assert g[2].tolist() == pytest.approx([1.0, 0.0])  # softmax over one negative = 1, / |o| = 1
    assert out.stats["mixed_groups_count"].item() == 1


def test_drpo_length_weights_and_unmixed_groups():
    # positives of length 1 and 3 (C = 4): r_l = 0.75, 0.25; lambda = 0.1 -> w0 = 1 / (1 + e^-5)
    w = drpo_weights(torch.tensor([0.75, 0.25, 0.5]), torch.tensor([1.0, 1.0, 0.0]), lam=0.1)
    assert w.tolist() == pytest.approx([1 / (1 + math.exp(-5)), 1 / (1 + math.exp(5)), 0.0])
    # an all-correct group and a mixed one: the all-correct group adds nothing but counts in group_scale
    inp = drpo_inputs([[-1.0], [-2.0], [-1.0], [-3.0]], [[1], [1], [1], [1]], [1, 1, 1, 0], [0, 0, 1, 1], scale=0.5)
    out = drpo_loss(inp)
    assert out.loss.item() == pytest.approx(-0.5 * (-1.0 - (-3.0)))
    with pytest.raises(ValueError, match="needs group_ids and correct"):
        drpo_loss(LossInputs(inp.logprobs, inp.old_logprobs, inp.advantages, inp.mask, inp.mask, max_new_tokens=4))
    with pytest.raises(ValueError, match="needs the completion cap"):
        drpo_loss(drpo_inputs([[-1.0], [-2.0]], [[1], [1]], [1, 0], [0, 0], max_new_tokens=0))


def test_drpo_kl_penalty_only_beyond_delta():
    old = [[-1.0], [-1.0]]
    near = drpo_inputs([[-1.0], [-1.0 + 1e-6]], [[1], [1]], [1, 1], [0, 0], old=old)  # KL ~ 5e-7 < delta
    assert drpo_loss(near, DRPOOptions(delta=1e-4)).loss.item() == 0.0
    far = drpo_inputs([[-1.5], [-1.5]], [[1], [1]], [1, 1], [0, 0], old=old)  # KL = 0.5
    assert drpo_loss(far, DRPOOptions(beta=2.0, delta=0.1)).loss.item() == pytest.approx(2.0 * 0.4 * 0.5 * 1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0.0, 1.0])), min_size=1, max_size=10),
       st.floats(0.01, 10))
def test_drpo_weights_are_a_distribution_over_positives(samples, lam):
    rl = torch.tensor([x for x, _ in samples], dtype=torch.float64)
    c = torch.tensor([y for _, y in samples], dtype=torch.float64)
    w = drpo_weights(rl, c, lam)
    assert torch.all(w >= 0)
    assert torch.all(w[c == 0] == 0)  # incorrect answers never enter the weights
    if (c == 1).any():
        assert float(w[c == 1].sum()) == pytest.approx(1.0)


def test_kl_cov_penalises_only_the_top_covariance_tokens():
    logp = torch.tensor([[-0.1, -2.0], [-1.0, -3.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.3, -2.0], [-1.0, -2.5]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    chosen = kl_cov_select(MinibatchInputs(logp.detach(), adv, mask, all_reduce_sum=lambda t: t,
                                           all_gather=lambda t: t), KLCovOptions(kl_cov_ratio=0.25))
    inp = LossInputs(logp, old, adv, mask, mask / 4, extra=chosen)
    out = kl_cov_loss(inp, KLCovOptions(kl_cov_ratio=0.25, ppo_kl_coef=1.0))  # k = 1 of 4 tokens
    # cov = (A - 0)(logp - (-1.525)) = [1.425, -0.475, -0.525, 1.475]: token (1,1) is the top one,
    # so it alone gets + |logp - old| = 0.5
    ratio = torch.exp(logp.detach() - old)
    base = (-torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64) * ratio).sum() / 4
    assert out.loss.item() == pytest.approx(float(base) + 0.5 / 4)
    assert out.stats["kl_cov_frac"].item() == 1


def test_build_loss_binds_typed_options_and_checks_them():
    fn, whole_groups = build_loss(load_config(overrides={"algorithm.loss": "drpo", "algorithm.loss_options": {"lam": 0.5},
                                                          "rollout.max_new_tokens": 64}))
    assert whole_groups and fn.keywords == {"options": DRPOOptions(lam=0.5)}  # defaults from the dataclass
    assert fn.keywords["options"] == DRPOOptions(lam=0.5, tau=10.0, beta=1e3, delta=1e-4)
    assert drpo_loss.whole_groups
    assert not build_loss(load_config())[1]
    # prompts_per_step is global now: each of the (here 1) processes keeps 6 prompts
    with pytest.raises(ConfigError, match="'algorithm.minibatches' must divide the 6 prompts of each process"):
        load_config(overrides={"algorithm.loss": "drpo", "algorithm.minibatches": 4, "rollout.prompts_per_step": 6,
                               "rollout.group_size": 2})
    with pytest.raises(ConfigError, match="loss 'drpo' needs a correctness term"):
        load_config(overrides={"algorithm.loss": "drpo", "rewards": [{"name": "boxed_format"}]})
    # the completion cap reaches the loss in LossInputs (what the loop has), so it is no option
    with pytest.raises(ConfigError, match=r"algorithm\.loss_options: policy loss 'drpo' has no option 'lambda'; "
                                          r"valid options: lam, tau, beta, delta"):
        load_config(overrides={"algorithm.loss": "drpo", "algorithm.loss_options": {"lambda": 0.1}})
    with pytest.raises(ConfigError, match=r"'algorithm\.loss_options\.lam' must be > 0, got -1"):  # typed ranges
        load_config(overrides={"algorithm.loss": "drpo", "algorithm.loss_options": {"lam": -1}})
    with pytest.raises(ConfigError, match=r"'algorithm\.loss_options\.tau' must be a number, got 'x'"):
        load_config(overrides={"algorithm.loss": "drpo", "algorithm.loss_options": {"tau": "x"}})


def test_unit_chunks_keep_units_whole():
    assert unit_chunks([4, 4, 4], 6) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert unit_chunks([1, 1, 1], 2) == [[0, 1], [2]]
    assert unit_chunks([2, 2, 8], 4) == [[0, 1, 2, 3], list(range(4, 12))]
