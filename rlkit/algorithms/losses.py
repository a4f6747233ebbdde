"""Policy losses and loss aggregation (architecture rule 6: injected, pure, algorithm-blind trainer).

A loss takes a ``LossInputs`` of per-token tensors ``[B, T]`` and returns a ``LossOutputs``. The
aggregation (token-mean, seq-mean-token-mean, Dr.GRPO's constant normaliser) is folded into
``token_weights``, computed once per optimizer step over the *whole* minibatch on every rank
(``aggregation_weights``), so gradient accumulation over micro-batches and ranks is exact:
``loss = sum_t token_weights_t * loss_t``.

Declarations a loss may carry (attributes of the function, read once at start-up):
- ``whole_groups``: the loss is not a sum over tokens (DRPO); micro-batches keep groups whole.
- ``aggregation``: the aggregation the loss is defined with (GSPO: seq-mean-token-mean; CISPO: token-mean);
  ``algorithm.aggregation: auto`` takes it, another explicit value is a parse-time error.
- ``prepare(MinibatchInputs, options) -> {name: [M, C] tensor}``: per-token inputs computed over the whole
  minibatch (all micro-batches, all ranks) before any backward pass; they reach the loss as ``inp.extra``.
- ``reference``: the name of the option that weights a KL penalty to the reference policy (ppo_clip: kl_coef);
  when it is > 0 the trainer loads and scores the reference model, and ``inp.ref_logprobs`` is set.
- ``tokens``: the loss reads each token's own advantage (``token_advantages(inp)``), so it trains on the per-token
  advantages of a token-level estimator (token and chunk rewards: DECS); a sequence-level loss (GSPO, DRPO) does
  not declare it, and a config pairing it with token-shaped rewards is refused when parsed.
Statistics are token sums over the mask (``loss/<name>`` = sum / tokens); a name ending in ``_count`` is a plain
count (``loss/<name>`` = the step's sum on a process).

Options are typed: each loss takes ``options``, a frozen dataclass of its own (``ClipOptions``, ``DRPOOptions``,
...), filled from the config's ``algorithm.loss_options`` (checked against the dataclass's fields when the config
is parsed; defaults from the dataclass). Everything else a loss needs is what the loop has, in ``LossInputs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlkit.records import group_index
from rlkit.registry import register


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
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, T] tensors from the loss's `prepare`
    entropy: torch.Tensor | None = None  # [B, T] the current policy's token entropy (with grad), what the loop has
    behaviour_logprobs: torch.Tensor | None = None  # [B, T] the rollout engine's logprobs (the behaviour policy)
    max_new_tokens: int = 0  # the completion cap of the run (rollout.max_new_tokens), e.g. DRPO's C
    # [B, T] per-token advantages when the estimator makes them (token / chunk rewards, AdvantageCaps.tokens); a loss
    # declaring ``tokens`` reads them through ``token_advantages``
    token_advantages: torch.Tensor | None = None


def token_advantages(inp: LossInputs | MinibatchInputs) -> torch.Tensor:
    """[B, T] the advantage of each token: the estimator's per-token advantages where it made them, else the
    sequence's advantage broadcast over its tokens (the one place a token-level loss reads advantages)."""
    if inp.token_advantages is not None:
        return inp.token_advantages.to(inp.logprobs.dtype)
    return inp.advantages.unsqueeze(1).expand_as(inp.logprobs).to(inp.logprobs.dtype)


@dataclass
class MinibatchInputs:
    """One rank's rows of a minibatch, for a loss's ``prepare`` (before any backward pass of the minibatch)."""

    logprobs: torch.Tensor  # [M, C] current policy (no grad)
    advantages: torch.Tensor  # [M]
    mask: torch.Tensor  # [M, C]
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]  # summed over ranks
    all_gather: Callable[[torch.Tensor], torch.Tensor]  # 1-D tensors of any length, concatenated in rank order
    rank: int = 0  # this rank's index (ties are broken in rank order)
    token_advantages: torch.Tensor | None = None  # [M, C] per-token advantages, when the estimator makes them


@dataclass
class LossOutputs:
    loss: torch.Tensor  # scalar, already aggregated with token_weights
    stats: dict[str, torch.Tensor]  # token-sums over `mask` (divide by the mask total to get means)


def aggregation_denominator(mask: torch.Tensor, mode: str, max_len: int) -> float:
    """The normaliser of `mode` for the minibatch rows in `mask` [N, T] (all-reduce it across ranks). ``auto`` (a
    config that was not validated, which resolves it to the loss's declared aggregation) is token-mean."""
    mode = "token-mean" if mode == "auto" else mode
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
    mode = "token-mean" if mode == "auto" else mode
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(1, keepdim=True).clamp(min=1)
        return mask / lengths / denominator
    if mode in ("token-mean", "seq-mean-token-sum-norm"):
        return mask / denominator
    raise ValueError(f"unknown aggregation {mode!r}")


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, bound: float = 20.0) -> torch.Tensor:
    """pi / pi_old = exp(logp - logp_old), the log-ratio clamped to [-bound, bound] so one far-off token cannot
    overflow float32 (exp(20) ~ 5e8): the one ratio every loss and importance correction uses."""
    return torch.exp((logprobs - old_logprobs).clamp(-bound, bound))


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


@dataclass(frozen=True)
class ClipOptions:
    """ppo_clip's options: the clip range below and above 1 (DAPO's clip-higher: epsilon_high 0.28), the dual-clip
    constant c > 1 for negative advantages (0: off) and beta of the k3 KL penalty to the reference policy (0: no
    reference model). ``check``: the valid range, checked when the config is parsed."""

    epsilon_low: float = field(default=0.2, metadata={"check": "[0,1)"})
    epsilon_high: float = field(default=0.2, metadata={"check": ">=0"})
    dual_clip: float = field(default=0.0, metadata={"check": "0|>1"})
    kl_coef: float = field(default=0.0, metadata={"check": ">=0"})


@register("loss", "ppo_clip", reference="kl_coef", tokens=True)
def ppo_clip_loss(inp: LossInputs, options: ClipOptions = ClipOptions()) -> LossOutputs:
    """Clipped surrogate (PPO, Schulman et al. 2017 eq. 7; GRPO eq. 3) with DAPO clip-higher
    (Yu et al. 2025 eq. 10: separate eps_low / eps_high) and dual clip (Ye et al. 2020 eq. 5):

        rho   = exp(logp - logp_old)
        l_t   = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))
        l_t   = min(l_t, -A c)                    if A < 0 and c > 1 (dual clip)
        l_t  += beta * k3(pi || pi_ref)           if beta > 0
        loss  = sum_t w_t l_t                     (w from aggregation_weights)
    """
    dual_clip, kl_coef = options.dual_clip, options.kl_coef
    adv = token_advantages(inp)
    ratio = importance_ratio(inp.logprobs, inp.old_logprobs)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - options.epsilon_low, 1 + options.epsilon_high)
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


@dataclass(frozen=True)
class KLCovOptions:
    """kl_cov's options: the share of a minibatch's tokens that get the penalty and its coefficient (DOT: 0.002,
    1.0)."""

    kl_cov_ratio: float = field(default=0.002, metadata={"check": "(0,1]"})
    ppo_kl_coef: float = field(default=1.0, metadata={"check": ">=0"})


def kl_cov_select(mb: MinibatchInputs, options: KLCovOptions = KLCovOptions()) -> dict:
    """KL-Cov's token choice over the whole minibatch (every micro-batch, every rank):
    cov_t = (A_t - mean A)(logp_t - mean logp) over the minibatch's valid tokens (means over all ranks),
    chosen = the top k = max(1, floor(ratio * N)) tokens by cov_t, N the minibatch's valid tokens.
    Exact global top-k from each rank's local top-k candidates (the global top k is within their union);
    tokens tied with the k-th value are taken in rank order, then position order, so exactly k are chosen."""
    valid = mb.mask > 0
    adv = token_advantages(mb).to(torch.float64)
    lp = mb.logprobs.to(torch.float64)
    totals = mb.all_reduce_sum(torch.stack([valid.sum().to(torch.float64), adv[valid].sum(), lp[valid].sum()]))
    n = int(totals[0])
    chosen = torch.zeros_like(valid)
    if n == 0:
        return {"kl_cov_chosen": chosen}
    cov = (adv - totals[1] / n) * (lp - totals[2] / n)
    k = max(1, math.floor(options.kl_cov_ratio * n))
    local = cov[valid]
    candidates = mb.all_gather(torch.topk(local, min(k, local.numel())).values)
    threshold = torch.topk(candidates, min(k, candidates.numel())).values[-1]
    above, tied = valid & (cov > threshold), valid & (cov == threshold)
    n_above = int(mb.all_reduce_sum(above.sum().to(torch.float64)))
    ties_before = mb.all_gather(tied.sum().reshape(1).to(torch.float64))  # every rank's tie count, in rank order
    rank_ties = int(tied.sum())
    earlier = int(ties_before[:mb.rank].sum())
    take = max(0, min(rank_ties, k - n_above - earlier))
    flat_tied = tied.flatten().nonzero().flatten()[:take]
    chosen = above.flatten().clone()
    chosen[flat_tied] = True
    return {"kl_cov_chosen": chosen.view_as(valid)}


@register("loss", "kl_cov")
def kl_cov_loss(inp: LossInputs, options: KLCovOptions = KLCovOptions()) -> LossOutputs:
    """KL-Cov (Cui et al. arXiv 2505.22617; verl compute_policy_loss_kl_cov; DOT's loss, methods.md sec. 6):
    the tokens chosen by ``kl_cov_select`` over the whole minibatch (top ratio by covariance of advantage and
    logprob) get l_t = -A rho + coef |logp - logp_old|, all others l_t = -A rho. No ratio clipping.
    DOT: ratio 0.002, coef 1.0. (verl selects within one micro-batch; a long response alone in a
    micro-batch has a constant advantage there, covariance 0, and arbitrary tokens would be penalised.)"""
    adv = token_advantages(inp)
    ratio = importance_ratio(inp.logprobs, inp.old_logprobs)
    chosen = inp.extra["kl_cov_chosen"] & (inp.mask > 0)
    per_token = -adv * ratio + torch.where(chosen, options.ppo_kl_coef * (inp.logprobs - inp.old_logprobs).abs(),
                                           torch.zeros_like(ratio))
    stats = {"kl_cov_frac": (chosen.float() * inp.mask).sum().detach(), "ratio": (ratio.detach() * inp.mask).sum()}
    return LossOutputs(loss=(per_token * inp.token_weights).sum(), stats=stats)


kl_cov_loss.prepare = kl_cov_select
kl_cov_loss.tokens = True


def drpo_weights(len_reward: torch.Tensor, correct: torch.Tensor, lam: float) -> torch.Tensor:
    """DRPO positive weights for one group (Li et al. arXiv 2510.04474 eq. 7):
    w_i = exp(r_l(o_i)/lambda) / sum_{j in S+} exp(r_l(o_j)/lambda) for correct i, 0 otherwise."""
    pos = correct >= 1
    w = torch.zeros_like(len_reward)
    if pos.any():
        w[pos] = torch.softmax(len_reward[pos] / lam, dim=0)
    return w


@dataclass(frozen=True)
class DRPOOptions:
    """drpo's options (Li et al. arXiv 2510.04474; the paper's values): the softmax temperature lambda of the
    positive weights, tau of the negative log-mean-exp, and the KL penalty's beta and free margin delta."""

    lam: float = field(default=0.1, metadata={"check": ">0"})
    tau: float = field(default=10.0, metadata={"check": ">0"})
    beta: float = field(default=1e3, metadata={"check": ">=0"})
    delta: float = field(default=1e-4, metadata={"check": ">=0"})


def drpo_loss(inp: LossInputs, options: DRPOOptions = DRPOOptions()) -> LossOutputs:
    """DRPO decoupled objective (Li et al. arXiv 2510.04474 eqs. 4-7; methods.md sec. 3), per group q with
    correct set S+ and incorrect set S-, s(o) = mean token logprob of o, r_l(o) = 1 - |o| / C (C =
    ``inp.max_new_tokens``, the run's completion cap):

        J_q = sum_{o in S+} w(o) s(o) - tau * log( (1/|S-|) sum_{o in S-} exp(s(o)/tau) )
        loss = -sum_{mixed q} J_q * group_scale + beta * max(KL - delta, 0).detach() * KL

    Groups without both a correct and an incorrect sample contribute 0 but count in the normaliser
    (group_scale = world / groups in the minibatch). KL = token mean of (logp_old - logp) over the
    micro-batch (ppo_kl_type "kl"); its penalty is weighted by the micro-batch's share of the groups.
    The negative term uses the exact log-mean-exp of eq. 7 (the released code's value differs by a
    constant, same gradient). Paper: lambda 0.1, tau 10, beta 1e3, delta 1e-4, no PPO clip."""
    if inp.group_ids is None or inp.correct is None:
        raise ValueError("drpo needs group_ids and correct in LossInputs (whole groups per micro-batch)")
    if inp.max_new_tokens < 1:
        raise ValueError("drpo needs the completion cap in LossInputs.max_new_tokens")
    lam, tau, beta, delta, max_len = options.lam, options.tau, options.beta, options.delta, inp.max_new_tokens
    mask = inp.mask
    lengths = mask.sum(1)
    s = (inp.logprobs * mask).sum(1) / lengths.clamp(min=1)
    len_reward = 1 - lengths / max_len
    total = s.new_zeros(())
    groups = group_index(inp.group_ids)
    mixed = 0
    for idx in groups:
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
    stats = {"kl_k1": ((inp.old_logprobs - inp.logprobs).detach() * mask).sum(),
             "ratio": (importance_ratio(inp.logprobs, inp.old_logprobs).detach() * mask).sum(),
             "mixed_groups_count": torch.tensor(float(mixed))}
    return LossOutputs(loss=loss, stats=stats)


drpo_loss.whole_groups = True
drpo_loss.needs_verifier = True  # reads ``correct``: S+ and S- per group
register("loss", "drpo")(drpo_loss)


@dataclass(frozen=True)
class CISPOOptions:
    """cispo's bounds of the detached importance weight: [1 - is_low, 1 + is_high]."""

    is_low: float = field(default=1.0, metadata={"check": "[0,1]"})
    is_high: float = field(default=0.28, metadata={"check": ">=0"})


@register("loss", "cispo")
def cispo_loss(inp: LossInputs, options: CISPOOptions = CISPOOptions()) -> LossOutputs:
    """CISPO (MiniMax-M1, Chen et al. arXiv 2506.13585, eqs. 4-5): REINFORCE on every token, each weighted by its
    importance ratio clipped and detached, so no token's gradient is dropped by clipping (PPO's clip zeroes the
    gradient of tokens outside the trust region; CISPO only bounds their weight):

        r_t  = exp(logp_t - logp_old_t)
        l_t  = - sg(clip(r_t, 1 - is_low, 1 + is_high)) * A * logp_t
        loss = sum_t w_t l_t            (token-mean: 1 / sum_i |o_i|, the paper's normaliser)

    The paper imposes no lower bound on the weight (a large epsilon_low: is_low = 1 here, r >= 0) and tunes only the
    upper one; its value is not given in the paper [assumption: 0.28, DAPO's clip-higher]. The gradient is
    r_hat A grad logp, equal to PPO's where the ratio is inside the bounds."""
    adv = token_advantages(inp)
    ratio = importance_ratio(inp.logprobs, inp.old_logprobs)
    weight = torch.clamp(ratio, 1 - options.is_low, 1 + options.is_high).detach()
    per_token = -weight * adv * inp.logprobs
    mask = inp.mask
    stats = {"clip_frac": ((weight != ratio.detach()).float() * mask).sum(), "ratio": (ratio.detach() * mask).sum()}
    return LossOutputs(loss=(per_token * inp.token_weights).sum(), stats=stats)


cispo_loss.aggregation = "token-mean"
cispo_loss.tokens = True


@dataclass(frozen=True)
class GSPOOptions:
    """gspo's sequence-level clip range below and above 1 (the paper's 3e-4 and 4e-4)."""

    seq_clip_low: float = field(default=3e-4, metadata={"check": "[0,1)"})
    seq_clip_high: float = field(default=4e-4, metadata={"check": ">=0"})


@register("loss", "gspo")
def gspo_loss(inp: LossInputs, options: GSPOOptions = GSPOOptions()) -> LossOutputs:
    """GSPO (Qwen, Zheng et al. arXiv 2507.18071, eqs. 5-7): the importance ratio and its clipping at the sequence
    level, the ratio length-normalised (a geometric mean of the token ratios):

        s_i  = exp( (1 / |o_i|) sum_t (logp_it - logp_old_it) )
        l_i  = - min( s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i )
        loss = (1 / G) sum_i l_i         (seq-mean-token-mean: token weights 1 / (|o_i| G) summed over o_i's tokens)

    Each token of o_i carries l_i, so ``sum_t w_it l_i`` = l_i / G. The paper's clipping ranges: 3e-4 (left) and
    4e-4 (right). Samples are never split across micro-batches (packing keeps a sample whole; under sequence
    parallelism the logprobs of the whole row are summed over the group first), so s_i is exact per micro-batch."""
    mask = inp.mask
    lengths = mask.sum(1).clamp(min=1)
    # the ratio of the sequences' geometric-mean token probabilities
    s = importance_ratio((inp.logprobs * mask).sum(1) / lengths, (inp.old_logprobs * mask).sum(1) / lengths)
    adv = inp.advantages.to(s.dtype)
    unclipped, clipped = -s * adv, -torch.clamp(s, 1 - options.seq_clip_low, 1 + options.seq_clip_high) * adv
    per_seq = torch.maximum(unclipped, clipped)
    loss = (per_seq.unsqueeze(1) * inp.token_weights).sum()
    tokens = mask.sum(1)
    stats = {"clip_frac": ((clipped > unclipped).float() * tokens).sum().detach(),
             "seq_ratio": (s.detach() * tokens).sum(), "ratio": (importance_ratio(inp.logprobs, inp.old_logprobs)
                                                               .detach() * mask).sum()}
    return LossOutputs(loss=loss, stats=stats)


gspo_loss.aggregation = "seq-mean-token-mean"
