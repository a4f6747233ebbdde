"""Importance corrections between the rollout engine and the trainer: token masks of kind "forward".

The engine samples with its own numerics (another kernel, precision or an older policy version), so its token
probabilities pi_behaviour differ from the trainer's pi_old for the same policy. Each correction below sees, per
micro-batch, the per-token log-ratio

    log rho_t = clamp(log pi_old(y_t) - log pi_behaviour(y_t), -20, 20)

(rlkit.algorithms.losses.importance_ratio; pi_old is the policy the loss's ratio is taken against, pi_behaviour the
engine's logprobs) and returns a weight per token that multiplies the loss's token weights after the forward pass;
the aggregation normaliser is unchanged (TRL's convention: a masked token weighs 0 but still counts in token-mean;
verl's rejection sampling also drops it from the normaliser). The share of weight a correction removes is
``mask/<name>/masked_frac``. They compose with each other and with any loss, and with ``algorithm.tis_cap``
(token-level TIS, the correction that existed first: min(rho_t, C)).

Thresholds are the released defaults: IcePop [0.5, 5] (AReaL's IcePop example and TRL's token_mask mode; the Ring-1T
report's own values are quoted differently by different ports), masked IS [0.5, 2] (verl's token_k1 example), sequence
TIS cap 2 (verl ``rollout_is_threshold``), geometric rejection [0.999, 1.001] (verl ``decoupled_geo_rs``), sequence
masked IS cap 2 and band [0.5, 2] (verl ``decoupled_seq_is_rs``).
"""

from __future__ import annotations

import torch

from rlkit.algorithms.losses import importance_ratio
from rlkit.records import MaskInputs
from rlkit.registry import register

LOG_BOUND = 20.0  # the log-ratio clamp of every correction (one far-off token cannot overflow float32)


def _log_ratio(inp: MaskInputs) -> torch.Tensor:
    """log rho [B, C] over the loss mask (0 off it), detached."""
    if inp.old_logprobs is None or inp.behaviour_logprobs is None:
        raise ValueError("an importance correction needs the old and the engine's (behaviour) logprobs")
    lr = (inp.old_logprobs.detach().float() - inp.behaviour_logprobs.float()).clamp(-LOG_BOUND, LOG_BOUND)
    return lr * (inp.mask > 0)


def _band(lower: float, upper: float, name: str) -> None:
    if not 0 <= lower <= 1 <= upper:
        raise ValueError(f"{name}: need 0 <= lower <= 1 <= upper, got lower={lower}, upper={upper}")


@register("token_mask", "icepop")
class IcePop:
    """IcePop (Ring-1T, arXiv 2510.18855; the masked IS of TRL's ``vllm_importance_sampling_mode: token_mask`` and
    AReaL's ``rejection_sampling: {level: token, action: mask}``): each token is weighted by its own ratio where the
    ratio lies in the band, and by 0 outside it:

        w_t = rho_t * 1[lower <= rho_t <= upper]

    Defaults lower 0.5, upper 5.0 (AReaL's gsm8k_icepop example, TRL's docs)."""

    kind = "forward"

    def __init__(self, lower: float = 0.5, upper: float = 5.0):
        _band(lower, upper, "icepop")
        self.lower, self.upper = lower, upper

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        rho = importance_ratio(_log_ratio(inp), torch.zeros(()), LOG_BOUND)
        inside = (rho >= self.lower) & (rho <= self.upper)
        return torch.where(inside, rho, torch.zeros_like(rho)).to(inp.mask.dtype)


@register("token_mask", "mis")
class MaskedIS:
    """Token-level masked importance sampling (verl's rejection sampling ``rollout_rs: token_k1``): a token whose
    ratio leaves the band is dropped, every other token keeps weight 1 (no reweighting):

        w_t = 1[lower <= rho_t <= upper]

    Defaults 0.5 and 2.0 (verl's documented example band)."""

    kind = "forward"

    def __init__(self, lower: float = 0.5, upper: float = 2.0):
        _band(lower, upper, "mis")
        self.lower, self.upper = lower, upper

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        rho = importance_ratio(_log_ratio(inp), torch.zeros(()), LOG_BOUND)
        return ((rho >= self.lower) & (rho <= self.upper)).to(inp.mask.dtype)


@register("token_mask", "seq_tis")
class SequenceTIS:
    """Sequence-level truncated importance sampling (verl's Seq-TIS, ``rollout_is: sequence``): one weight per
    completion, the product of its token ratios truncated at C, on every token of it:

        w_i = min(exp(clamp(sum_t log rho_it, -20, 20)), C)

    Default C = 2.0 (verl's ``rollout_is_threshold``). The clamp is on the summed log-ratio, as verl's."""

    kind = "forward"

    def __init__(self, cap: float = 2.0):
        if cap < 1:
            raise ValueError(f"seq_tis: cap must be >= 1, got {cap}")
        self.cap = cap

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        total = _log_ratio(inp).sum(-1).clamp(-LOG_BOUND, LOG_BOUND)
        return torch.exp(total).clamp(max=self.cap)[:, None].expand_as(inp.mask).to(inp.mask.dtype)


@register("token_mask", "seq_mis")
class SequenceMaskedIS:
    """Sequence-level masked IS (verl's Seq-MIS, ``decoupled_seq_is_rs``: sequence IS with rejection on the summed
    log-ratio): a completion whose ratio product leaves the band weighs 0, the others the truncated product:

        P_i = exp(clamp(sum_t log rho_it, -20, 20));  w_i = min(P_i, C) * 1[lower <= P_i <= upper]

    Defaults C = 2.0, band [0.5, 2.0] (verl's preset)."""

    kind = "forward"

    def __init__(self, cap: float = 2.0, lower: float = 0.5, upper: float = 2.0):
        _band(lower, upper, "seq_mis")
        if cap < 1:
            raise ValueError(f"seq_mis: cap must be >= 1, got {cap}")
        self.cap, self.lower, self.upper = cap, lower, upper

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        product = torch.exp(_log_ratio(inp).sum(-1).clamp(-LOG_BOUND, LOG_BOUND))
        inside = (product >= self.lower) & (product <= self.upper)
        w = torch.where(inside, product.clamp(max=self.cap), torch.zeros_like(product))
        return w[:, None].expand_as(inp.mask).to(inp.mask.dtype)


@register("token_mask", "geo_rs")
class GeometricRejection:
    """Geometric rejection sampling (verl's Geo-RS, ``decoupled_geo_rs``, ``rollout_rs: seq_mean_k1``): a completion
    is kept (weight 1) only when the geometric mean of its token ratios lies in the band, else dropped (weight 0):

        G_i = exp(mean_t log rho_it);  w_i = 1[lower <= G_i <= upper]

    Defaults [0.999, 1.001] (verl's preset). Length-independent, unlike the product of Seq-TIS."""

    kind = "forward"

    def __init__(self, lower: float = 0.999, upper: float = 1.001):
        _band(lower, upper, "geo_rs")
        self.lower, self.upper = lower, upper

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        n = (inp.mask > 0).sum(-1).clamp(min=1)
        geo = torch.exp(_log_ratio(inp).sum(-1) / n)
        keep = ((geo >= self.lower) & (geo <= self.upper)).to(inp.mask.dtype)
        return keep[:, None].expand_as(inp.mask)
