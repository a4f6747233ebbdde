"""Policy losses and loss aggregation (DESIGN rule 6: injected, pure, algorithm-blind trainer).

A loss takes a ``LossInputs`` of per-token tensors ``[B, T]`` and returns a ``LossOutputs``. The
aggregation (token-mean, seq-mean-token-mean, Dr.GRPO's constant normaliser) is folded into
``token_weights``, computed once per optimizer step over the *whole* minibatch on every rank
(``aggregation_weights``), so gradient accumulation over micro-batches and ranks is exact:
``loss = sum_t token_weights_t * loss_t``.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch

from rlkit._registry import Registry

LOSSES = Registry("policy loss")


def resolve_loss(name: str):
    return LOSSES.resolve(name)


def needs_whole_groups(loss_fn) -> bool:
    """True for losses that are not sums over tokens (DRPO): the packer and micro-batcher must keep
    every group inside one loss call."""
    fn = getattr(loss_fn, "func", loss_fn)  # functools.partial
    return bool(getattr(fn, "needs_whole_groups", False))


def build_loss(algorithm, max_new_tokens: int):
    """Bind the config to the loss: each algorithm option the loss's signature names (epsilon_low,
    epsilon_high, dual_clip, kl_coef, max_len = max_new_tokens) plus ``algorithm.loss_kwargs``."""
    fn = resolve_loss(algorithm.loss)
    params = inspect.signature(fn).parameters
    available = {"epsilon_low": algorithm.epsilon_low, "epsilon_high": algorithm.epsilon_high,
                 "dual_clip": algorithm.dual_clip, "kl_coef": algorithm.kl_coef, "max_len": max_new_tokens}
    unknown = [k for k in algorithm.loss_kwargs if k not in params]
    if unknown:
        valid = [k for k in params if k != "inp"]
        raise KeyError(f"loss {algorithm.loss!r} has no option {unknown[0]!r}; valid: {', '.join(valid)}")
    kwargs = {k: v for k, v in available.items() if k in params}
    kwargs.update(algorithm.loss_kwargs)
    return functools.partial(fn, **kwargs)


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] current policy, requires grad
    old_logprobs: torch.Tensor  # [B, T] policy that the ratio is taken against
    advantages: torch.Tensor  # [B] sequence-level advantage, broadcast over tokens
    mask: torch.Tensor  # [B, T] 1.0 on completion tokens that count
    token_weights: torch.Tensor  # [B, T] aggregation weights (zero off-mask)
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference policy for the KL term
    # sequence-level losses (DRPO) only: whole groups are in the micro-batch
    group_ids: torch.Tensor | None = None  # [B] group of each row
    correct: torch.Tensor | None = None  # [B] verifier 0/1 (NaN unknown)
    group_scale: float = 1.0  # world size / number of groups in the whole minibatch (all ranks)


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


def dmmpt_keep(old_logprobs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor,
               tau: float = 0.99, sigma: float = 0.2) -> torch.Tensor:
    """Dynamic masking of well-mastered positive tokens (UloRL, Du et al. 2025, eq. 9-10):

        MPT    = {t in sample i : p_old(o_t) >= tau and r_i = 1}
        H_i    = (1/|o_i|) sum_t entropy_t                 (mean token entropy of response i)
        I(i,t) = 1 if H_i < sigma and t in MPT else 0
        keep   = 1 - I                                    (the loss normaliser 1/sum|o_i| is unchanged)

    old_logprobs, entropy, mask: [B, C]; correct: [B] (1 = correct; NaN or 0 = not). Returns keep [B, C]
    in {0, 1}. p comes from the old policy (methods.md: the source is unstated; pi_old is available).
    """
    n = mask.sum(-1).clamp(min=1.0)
    mean_entropy = (entropy * mask).sum(-1) / n
    gate = (correct == 1) & (mean_entropy < sigma)
    mastered = old_logprobs >= math.log(tau)
    return 1.0 - (mastered & gate[:, None] & (mask > 0)).to(mask.dtype)


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


@LOSSES.register("kl_cov")
def kl_cov_loss(inp: LossInputs, *, kl_cov_ratio: float = 0.002, ppo_kl_coef: float = 1.0) -> LossOutputs:
    """KL-Cov (Cui et al. arXiv 2505.22617; verl compute_policy_loss_kl_cov; DOT's loss, methods.md sec. 6):
    cov_t = (A_t - mean A)(logp_t - mean logp), detached, over the micro-batch's valid tokens; the top
    k = max(1, floor(ratio * N)) tokens by cov_t get l_t = -A rho + coef |logp - logp_old|, all others
    l_t = -A rho. No ratio clipping in this mode. DOT: ratio 0.002, coef 1.0."""
    mask = inp.mask > 0
    adv = inp.advantages.unsqueeze(1).expand_as(inp.logprobs).to(inp.logprobs.dtype)
    ratio = torch.exp((inp.logprobs - inp.old_logprobs).clamp(-20.0, 20.0))
    per_token = -adv * ratio
    n = int(mask.sum())
    chosen = torch.zeros_like(mask)
    if n > 0:
        a_v, lp_v = adv[mask].detach(), inp.logprobs[mask].detach()
        cov = (a_v - a_v.mean()) * (lp_v - lp_v.mean())
        k = max(1, math.floor(kl_cov_ratio * n))
        top = torch.topk(cov, k).indices
        flat = torch.zeros(n, dtype=torch.bool, device=mask.device)
        flat[top] = True
        chosen[mask] = flat
    per_token = per_token + torch.where(chosen, ppo_kl_coef * (inp.logprobs - inp.old_logprobs).abs(),
                                        torch.zeros_like(per_token))
    stats = {"kl_cov_frac": (chosen.float() * inp.mask).sum().detach(), "ratio": (ratio.detach() * inp.mask).sum()}
    return LossOutputs(loss=(per_token * inp.token_weights).sum(), stats=stats)


def drpo_weights(len_reward: torch.Tensor, correct: torch.Tensor, lam: float) -> torch.Tensor:
    """DRPO positive weights for one group (Li et al. arXiv 2510.04474 eq. 7):
    w_i = exp(r_l(o_i)/lambda) / sum_{j in S+} exp(r_l(o_j)/lambda) for correct i, 0 otherwise."""
    pos = correct >= 1
    w = torch.zeros_like(len_reward)
    if pos.any():
        w[pos] = torch.softmax(len_reward[pos] / lam, dim=0)
    return w


def drpo_loss(inp: LossInputs, *, max_len: int, lam: float = 0.1, tau: float = 10.0, beta: float = 1e3,
              delta: float = 1e-4) -> LossOutputs:
    """DRPO decoupled objective (Li et al. arXiv 2510.04474 eqs. 4-7; methods.md sec. 3), per group q with
    correct set S+ and incorrect set S-, s(o) = mean token logprob of o, r_l(o) = 1 - |o| / C (C = max_len):

        J_q = sum_{o in S+} w(o) s(o) - tau * log( (1/|S-|) sum_{o in S-} exp(s(o)/tau) )
        loss = -sum_{mixed q} J_q * group_scale + beta * max(KL - delta, 0).detach() * KL

    Groups without both a correct and an incorrect sample contribute 0 but count in the normaliser
    (group_scale = world / groups in the minibatch). KL = token mean of (logp_old - logp) over the
    micro-batch (ppo_kl_type "kl"); its penalty is weighted by the micro-batch's share of the groups.
    The negative term uses the exact log-mean-exp of eq. 7 (the released code's value differs by a
    constant, same gradient). Paper: lambda 0.1, tau 10, beta 1e3, delta 1e-4, no PPO clip."""
    if inp.group_ids is None or inp.correct is None:
        raise ValueError("drpo needs group_ids and correct in LossInputs (whole groups per micro-batch)")
    mask = inp.mask
    lengths = mask.sum(1)
    s = (inp.logprobs * mask).sum(1) / lengths.clamp(min=1)
    len_reward = 1 - lengths / max_len
    total = s.new_zeros(())
    groups = torch.unique(inp.group_ids)
    mixed = 0
    for g in groups:
        idx = inp.group_ids == g
        c = inp.correct[idx]
        pos, neg = c >= 1, c == 0
        if not pos.any() or not neg.any():
            continue
        mixed += 1
        w = drpo_weights(len_reward[idx], c, lam)
        s_neg = s[idx][neg]
        neg_term = tau * (torch.logsumexp(s_neg / tau, 0) - math.log(s_neg.numel()))
        total = total + (w * s[idx]).sum() - neg_term
    kl = ((inp.old_logprobs - inp.logprobs) * mask).sum() / mask.sum().clamp(min=1)
    penalty = beta * (kl.detach() - delta).clamp(min=0) * kl
    loss = -total * inp.group_scale + penalty * len(groups) * inp.group_scale
    stats = {"kl": ((inp.old_logprobs - inp.logprobs).detach() * mask).sum(),
             "ratio": (torch.exp(inp.logprobs - inp.old_logprobs).detach() * mask).sum(),
             "mixed_groups": torch.tensor(float(mixed))}
    return LossOutputs(loss=loss, stats=stats)


drpo_loss.needs_whole_groups = True
LOSSES.register("drpo")(drpo_loss)
