"""Policy losses and loss aggregation (DESIGN rule 6: injected, pure, algorithm-blind trainer).

A loss takes a ``LossInputs`` of per-token tensors ``[B, T]`` and returns a ``LossOutputs``. The
aggregation (token-mean, seq-mean-token-mean, Dr.GRPO's constant normaliser) is folded into
``token_weights``, computed once per optimizer step over the *whole* minibatch on every rank
(``aggregation_weights``), so gradient accumulation over micro-batches and ranks is exact:
``loss = sum_t token_weights_t * loss_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit._registry import Registry

LOSSES = Registry("policy loss")


def resolve_loss(name: str):
    return LOSSES.resolve(name)


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] current policy, requires grad
    old_logprobs: torch.Tensor  # [B, T] policy that the ratio is taken against
    advantages: torch.Tensor  # [B] sequence-level advantage, broadcast over tokens
    mask: torch.Tensor  # [B, T] 1.0 on completion tokens that count
    token_weights: torch.Tensor  # [B, T] aggregation weights (zero off-mask)
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference policy for the KL term


@dataclass
class LossOutputs:
    loss: torch.Tensor  # scalar, already aggregated with token_weights
    stats: dict[str, torch.Tensor]  # token-sums over `mask` (divide by the mask total to get means)


def aggregation_denominator(mask: torch.Tensor, mode: str, max_len: int) -> float:
    """The normaliser of `mode` for the minibatch rows in `mask` [N, T] (all-reduce it across ranks)."""
    rows_with_tokens = float((mask.sum(1) > 0).sum())
    if mode == "token-mean":
        return float(mask.sum())
    if mode == "seq-mean-token-mean":
        return rows_with_tokens
    if mode == "seq-mean-token-sum-norm":
        return float(mask.shape[0]) * float(max_len)
    raise ValueError(f"unknown aggregation {mode!r}; valid: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm")


def aggregation_weights(mask: torch.Tensor, mode: str, denominator: float) -> torch.Tensor:
    """Per-token weights w [N, T] so that ``sum(w * loss_t)`` is the aggregated loss.

    token-mean (DAPO, Yu et al. 2025 eq. 12): sum_i sum_t l_it / sum_i |o_i|.
    seq-mean-token-mean (GRPO paper, eq. 3): (1/G) sum_i (1/|o_i|) sum_t l_it.
    seq-mean-token-sum-norm (Dr.GRPO, Liu et al. 2025): sum_i sum_t l_it / (N * max_len).
    """
    denominator = max(float(denominator), 1.0)
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(1, keepdim=True).clamp(min=1)
        return mask / lengths / denominator
    if mode in ("token-mean", "seq-mean-token-sum-norm"):
        return mask / denominator
    raise ValueError(f"unknown aggregation {mode!r}")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


@LOSSES.register("ppo_clip")
def ppo_clip_loss(inp: LossInputs, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                  dual_clip: float = 0.0, kl_coef: float = 0.0) -> LossOutputs:
    """Clipped surrogate (PPO, Schulman et al. 2017 eq. 7; GRPO eq. 3) with DAPO clip-higher
    (Yu et al. 2025 eq. 10: separate eps_low / eps_high) and dual clip (Ye et al. 2020 eq. 5):

        rho   = exp(logp - logp_old)
        l_t   = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))
        l_t   = min(l_t, -A c)                    if A < 0 and c > 1 (dual clip)
        l_t  += beta * k3(pi || pi_ref)           if beta > 0
        loss  = sum_t w_t l_t                     (w from aggregation_weights)
    """
    adv = inp.advantages.unsqueeze(1).to(inp.logprobs.dtype)
    log_ratio = (inp.logprobs - inp.old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = torch.maximum(unclipped, clipped)
    mask = inp.mask
    stats = {"clip_frac": ((clipped > unclipped).float() * mask).sum().detach()}
    if dual_clip > 1:
        dual = -adv * dual_clip
        use_dual = (adv < 0) & (per_token > dual)
        per_token = torch.where(use_dual, dual, per_token)
        stats["dual_clip_frac"] = (use_dual.float() * mask).sum().detach()
    if kl_coef > 0 and inp.ref_logprobs is not None:
        kl = k3_kl(inp.logprobs, inp.ref_logprobs)
        per_token = per_token + kl_coef * kl
        stats["kl"] = (kl.detach() * mask).sum()
    stats["ratio"] = (ratio.detach() * mask).sum()
    loss = (per_token * inp.token_weights).sum()
    return LossOutputs(loss=loss, stats=stats)
