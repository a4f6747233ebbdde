"""Advantage estimators: pure functions ``fn(rewards [N], group_ids [N], lengths [N], **options) -> advantages [N]``.

``lengths`` (completion tokens) is passed for estimators that weight by tokens. ``scale`` is an option of
the estimators that divide by a standard deviation (grpo, rloo); the config's ``algorithm.scale: auto``
keeps each estimator's default, and an explicit scale given to an estimator without that option is
rejected when the config is parsed.

Every sample of a group must be present (keep groups whole). The trainer gathers the whole
step's rewards across data-parallel ranks before calling, so "batch" statistics are global.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from rlkit.records import group_index
from rlkit.registry import register

EPS = 1e-6


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, group unbiased std (0 for a group of one) and group size, each [N]. Vectorised
    scatter sums over each sample's group slot (``torch.unique``'s inverse), not index lists
    (``records.group_index``): the statistics are needed per sample, in one pass."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    k = int(inv.max()) + 1 if inv.numel() else 0
    v = values.double()
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, torch.ones_like(v))
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, v) / count
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, (v - mean[inv]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return mean[inv].to(values.dtype), std[inv].to(values.dtype), count[inv].to(values.dtype)


def _scaled(adv: torch.Tensor, rewards: torch.Tensor, group_std: torch.Tensor, scale: str) -> torch.Tensor:
    """Divide by the group std ("group"), the std of all rewards of the step ("batch"), or nothing ("none")."""
    if scale == "group":
        return adv / (group_std + EPS)
    if scale == "batch":
        return adv / (rewards.std() + EPS) if rewards.numel() > 1 else adv
    if scale == "none":
        return adv
    raise ValueError(f"unknown advantage scale {scale!r}; valid: group, batch, none")


@register("advantage", "grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor | None = None, *,
                    scale: Literal["group", "batch", "none"] = "group") -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3): A_i = (r_i - mean_g(r)) / (std_g(r) + eps).

    scale="group": divide by the group's unbiased std (the paper); "batch": by the std of all rewards
    in the step (TRL's scale_rewards="batch"); "none": no division (Dr.GRPO, Liu et al. 2025 sec. 3.1).
    A zero-variance group gets advantage 0 for every member.
    """
    mean, std, _ = group_stats(rewards, group_ids)
    return _scaled(rewards - mean, rewards, std, scale)


@register("advantage", "dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                       lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 3): A_i = r_i - mean_g(r).

    No std division (no `scale` option); pair it with aggregation "seq-mean-token-sum-norm" to also
    drop the 1/|o_i| length normalisation.
    """
    mean, _, _ = group_stats(rewards, group_ids)
    return rewards - mean


@register("advantage", "rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor | None = None, *,
                    scale: Literal["group", "batch", "none"] = "none") -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 5): A_i = r_i - mean_{j != i} r_j = G/(G-1) * (r_i - mean_g(r)).

    `scale` "group"/"batch" additionally divide by the group / batch std, as in grpo.
    """
    mean, std, count = group_stats(rewards, group_ids)
    return _scaled((rewards - mean) * count / (count - 1).clamp(min=1), rewards, std, scale)


@register("advantage", "batch_norm")
def batch_norm_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                          lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Batch-normalised group baseline (DLER arXiv 2510.15110 eq. 3; REINFORCE++-baseline, verl's
    reinforce_plus_plus_baseline): A_i = r_i - mean_g(r), then whitened over the whole step,
    A_i <- (A_i - m) / sqrt(v + 1e-8), with token-weighted statistics (every response token counts once):
    m = sum_i L_i A_i / sum_i L_i, v = sum_i L_i (A_i - m)^2 / (sum_i L_i - 1) (Bessel over tokens, as
    verl's masked_whiten). No `scale` option; without `lengths` every sample weighs 1.
    """
    mean, _, _ = group_stats(rewards, group_ids)
    adv = (rewards - mean).double()
    w = torch.ones_like(adv) if lengths is None else lengths.double().clamp(min=0)
    total = float(w.sum())
    if total <= 1:
        return torch.zeros_like(rewards)
    m = (w * adv).sum() / total
    v = (w * (adv - m) ** 2).sum() / (total - 1)
    return ((adv - m) / torch.sqrt(v + 1e-8)).to(rewards.dtype)


# Token-level signals: an estimator declaring ``tokens`` (rlkit.registry.AdvantageCaps) is also called with
# ``token_rewards`` (one float tensor per sample, its completion's length: the weighted sum of the token- and
# chunk-shaped reward terms) and returns one tensor of per-token advantages per sample, which the loss reads token
# by token (rlkit.algorithms.losses.token_advantages) under the usual mask and aggregation weights.


@register("advantage", "decs", tokens=True)
def decs_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor | None = None, *,
                    token_rewards: list[torch.Tensor] | None = None, eps: float = 1e-6) -> list[torch.Tensor]:
    """DECS (arXiv 2509.25827; released code src_valid/valid_ray_trainer.py compute_grpo_proc_length_advantage_return):
    GRPO per token column. Sample i's reward at token t is R_it = r_i + u_it (r_i its scalar reward, u_it its token
    reward, e.g. decs_redundancy's -beta L_i/T on the redundant span), and R_it = r_i past its end (the released
    code pads every row with its outcome reward and normalises the padded columns too). Each column is normalised
    over the group:

        A_it = (R_it - mean_{j in g} R_jt) / (std_{j in g} R_jt + eps)        (unbiased std; eps = 1e-6)

    A group of one takes mean 0 and std 1 (A = R / (1 + eps)), as released. Returned: A_i[:L_i] per sample.
    Deviation: the statistics are taken in float64, so a column whose rewards are all equal gets exactly 0 (the
    released float32 mean can be off by one ulp while the std is 0, which gives every token of such a column
    about -0.12 at 16 samples: a float32 artefact, not the method)."""
    n = len(rewards)
    tok = token_rewards if token_rewards is not None else [torch.zeros(int(x)) for x in
                                                           (lengths if lengths is not None else torch.zeros(n))]
    out: list[torch.Tensor] = [torch.zeros(0)] * n
    for idx in group_index(group_ids):
        rows = idx.tolist()
        width = max((tok[i].numel() for i in rows), default=0)
        r = rewards[idx].double()
        grid = r[:, None].repeat(1, width)
        for k, i in enumerate(rows):
            grid[k, :tok[i].numel()] += tok[i].double()
        if len(rows) == 1:
            adv = grid / (1.0 + eps)
        else:
            adv = (grid - grid.mean(0)) / (grid.std(0) + eps)
        for k, i in enumerate(rows):
            out[i] = adv[k, :tok[i].numel()].to(rewards.dtype)
    return out


@register("advantage", "hbpo", needs_columns=("budget",))
def hbpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor | None = None, *,
                    columns: dict | None = None, beta: float = 4.0, l_max: int = 4096, pi: float = 3.1416,
                    intra_scale: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """HBPO (Lyu et al. arXiv 2507.15844, Alg. 1; released verl/trainer/ppo/core_algos.py
    compute_grpo_outcome_advantage): within a prompt's group, sub-groups share a budget b (the sample's ``budget``
    column: the hbpo_budgets rollout hook's tag; l_max when it has none),

        A_ij = (R_ij - mean_g R) / (std_g R + eps) + intra_scale * (mean_{sub-group i} R - beta cos(pi' b_i / (2 l_max)))

    with the unbiased std, eps 1e-6, beta 4, l_max 4096 and pi' 3.1416 as released. A group of one takes A = R (the
    paper's form). intra_scale 1 is the paper's; the released code adds the intra term twice (intra_scale 2), and
    for a group of one adds the previous row's intra term (not reproduced)."""
    budgets = list((columns or {}).get("budget") or [None] * len(rewards))
    b = torch.tensor([float(l_max if x is None else x) for x in budgets], dtype=torch.float64)
    r = rewards.double()
    out = torch.zeros_like(r)
    for idx in group_index(group_ids):
        if idx.numel() == 1:
            out[idx] = r[idx]
            continue
        g = r[idx]
        z = (g - g.mean()) / (g.std() + eps)
        for k, i in enumerate(idx.tolist()):
            same = idx[b[idx] == b[i]]
            z[k] += intra_scale * (r[same].mean() - beta * math.cos(pi * float(b[i]) / (2 * l_max)))
        out[idx] = z
    return out.to(rewards.dtype)
