"""Group- and batch-level reward shaping (architecture rule 3, second layer; methods.md sec. 0 contract 1).

A shaper sees the whole step at once, after the per-sample terms are combined:
``shaper(batch: ShapingBatch) -> ShapingResult`` (ShapingBatch: rlkit.records) with the new per-sample rewards and its metrics.
The trainer gathers the step from all data-parallel ranks first, so group and batch statistics are
global. Shapers are configured as ``shaping: [{name, kwargs}]`` and applied in order. Controller state
(statistics, schedules) is returned by ``state_dict()`` and saved with every checkpoint.
Unknown correctness (NaN) is never counted as wrong: pass rates are over the known samples, and a sample
of unknown correctness keeps its reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlkit.records import ShapingBatch, group_index
from rlkit.registry import register


@dataclass
class ShapingResult:
    rewards: torch.Tensor
    metrics: dict = field(default_factory=dict)


class Shaper:
    """Base of the built-in shapers: the declarations the trainer reads once at start-up, and no state.

    ``needs_looping``: the batch must carry the loop detector's flags. ``monitor``: (every, size, samples)
    when the shaper refreshes targets from a monitor set; the trainer then calls ``update_from_monitor``
    with the gathered monitor rollouts every ``every`` steps (and before the first). ``needs_columns``: the
    dataset columns of each sample's prompt the batch must carry (``ShapingBatch.columns``)."""

    needs_looping = False
    needs_columns: tuple[str, ...] = ()
    monitor: tuple[int, int, int] | None = None

    def update_from_monitor(self, lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def pass_rate(correct: torch.Tensor) -> float:
    """Share of correct samples among those whose correctness is known (architecture rule 2: None/NaN is masked,
    never counted as wrong); NaN when none is known."""
    known = correct[~torch.isnan(correct)]
    return float((known >= 1).float().mean()) if known.numel() else float("nan")


def sigmoid_length_penalty(lengths: torch.Tensor, correct: torch.Tensor, alpha: float) -> torch.Tensor:
    """Arora & Zanette penalty for one group: alpha * sigmoid(z_i) for correct samples, 0 otherwise, with
    z = (L - mean(L | correct)) / std(L | correct). z = 0 when fewer than 2 correct samples or std = 0
    (methods.md sec. 1 default; deviates from LASER's code, which then applies the maximum penalty)."""
    ok = correct >= 1
    pen = torch.zeros_like(lengths)
    if int(ok.sum()) == 0:
        return pen
    lc = lengths[ok]
    std = lc.std() if lc.numel() >= 2 else torch.tensor(0.0)
    z = (lc - lc.mean()) / std if float(std) > 0 else torch.zeros_like(lc)
    pen[ok] = alpha * torch.sigmoid(z)
    return pen


@register("shaper", "stop_properly")
class StopProperly(Shaper):
    """DLER's stop-properly penalty (NVlabs/DLER reward_manager/dapo.py; methods.md sec. 2): the reward of a
    response that did not stop on its own (finish_reason "length") is multiplied by `coef` (0.1).
    Multiplicative, hence a shaper rather than an additive term."""

    def __init__(self, coef: float = 0.1):
        self.coef = coef

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        r = torch.where(b.truncated, b.rewards * self.coef, b.rewards)
        return ShapingResult(r, {"penalised_fraction": float(b.truncated.float().mean())})


@register("shaper", "efficient_reasoning")
class EfficientReasoning(Shaper):
    """Arora & Zanette "Training Language Models to Reason Efficiently" (arXiv 2502.04463, eq. 4;
    LASER Table 2): correct samples get r - alpha * sigmoid((L - mean_c) / std_c), statistics over the
    group's correct samples; incorrect samples are unchanged. alpha in [0, 1), typically 0.05-0.4."""

    needs_verifier = True

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        r = b.rewards.clone()
        for idx in group_index(b.group_ids):
            r[idx] -= sigmoid_length_penalty(b.lengths[idx], b.correct[idx], self.alpha)
        return ShapingResult(r, {"penalty_mean": float((b.rewards - r).mean())})


@register("shaper", "kimi")
class KimiLength(Shaper):
    """Kimi k1.5 length reward (arXiv 2501.12599 sec. 2.3.3 eq. "len_reward"; LASER's compute_kimi_penalty):
    lambda_i = 0.5 - (L_i - L_min) / (L_max - L_min) over the group (min and max over all its responses, 0 if all
    lengths are equal); r += coef * lambda_i if correct, r += coef * min(0, lambda_i) if incorrect.
    coef 0.4 (LASER repo).

    ``format_term``: the name of a format reward term (e.g. ``boxed_format``). When given, a badly formatted
    sample (that term < 1) gets no length term, as LASER's released ``compute_kimi_penalty``, which adds the term
    only to scores 1.0 (correct) and -0.5 (wrong, well formatted) and none to -1 (bad format): rewards
    [1.0, -1.0] (correct short, badly formatted long) become [1.2, -1.0], not [1.2, -1.2]. Without it (default)
    every sample is shaped, as the Kimi report's formula (which has no format notion); the kimi recipe sets it."""

    needs_verifier = True

    def __init__(self, coef: float = 0.4, format_term: str | None = None):
        self.coef, self.format_term = coef, format_term

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        r = b.rewards.clone()
        fmt = None
        if self.format_term is not None:
            fmt = b.terms.get(self.format_term)
            if fmt is None:
                raise ValueError(f"kimi: format_term {self.format_term!r} is not a reward term of the run; add it "
                                 "to `rewards` (weight 0 if it should not add to the reward)")
        for idx in group_index(b.group_ids):
            L = b.lengths[idx]
            span = float(L.max() - L.min())
            lam = 0.5 - (L - L.min()) / span if span > 0 else torch.zeros_like(L)
            c = b.correct[idx]
            bonus = torch.where(c >= 1, lam, lam.clamp(max=0.0))
            skip = torch.isnan(c)
            if fmt is not None:  # LASER: no length term for a badly formatted sample (NaN format: not applicable)
                skip = skip | (torch.nan_to_num(fmt[idx], nan=1.0) < 1)
            r[idx] += self.coef * torch.where(skip, torch.zeros_like(bonus), bonus)
        return ShapingResult(r, {"bonus_mean": float((r - b.rewards).mean())})


@register("shaper", "grpo_lambda")
class GrpoLambda(Shaper):
    """GRPO-lambda (Dai, Liu, Si arXiv 2505.18086; methods.md sec. 1): groups with high correctness get the
    Arora-Zanette length penalty r_i = R_i - alpha * sigmoid(z_i) (correct) / 0 (incorrect); the others keep
    the plain 0/1 reward. mode="top_fraction": the top ceil(lam * B) groups by pass rate c_k (stable sort,
    seeded random tie-break); mode="threshold": groups with c_k >= threshold. alpha is not given by the
    paper; 0.2 is our default (Arora & Zanette use 0.05-0.4). Per-sample rewards are rebuilt from the
    verifier, so other per-sample terms are dropped, as in the paper."""

    needs_verifier = True

    def __init__(self, lam: float = 0.2, alpha: float = 0.2, mode: Literal["top_fraction", "threshold"] = "top_fraction",
                 threshold: float = 0.5,
                 seed: int = 0):
        if mode not in ("top_fraction", "threshold"):
            raise ValueError(f"grpo_lambda: mode must be top_fraction or threshold, got {mode!r}")
        if mode == "top_fraction" and not 0 < lam <= 1:
            raise ValueError(f"grpo_lambda: lam must be in (0, 1], got {lam}")
        self.lam, self.alpha, self.mode, self.threshold, self.seed = lam, alpha, mode, threshold, seed
        self.switched_total, self.groups_total = 0, 0

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        groups = group_index(b.group_ids)
        rates = torch.tensor([pass_rate(b.correct[idx]) for idx in groups])
        rates = torch.nan_to_num(rates, nan=-1.0)  # a group of unknown correctness is never switched
        if self.mode == "threshold":
            chosen = set(torch.nonzero(rates >= self.threshold).flatten().tolist())
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + b.step)
            tie = torch.rand(len(groups), generator=gen)
            order = sorted(range(len(groups)), key=lambda k: (-float(rates[k]), float(tie[k])))
            chosen = {k for k in order[:math.ceil(self.lam * len(groups))] if rates[k] >= 0}
        # rewards rebuilt from the verifier; a sample of unknown correctness keeps its combined reward
        r = torch.where(torch.isnan(b.correct), b.rewards, b.correct)
        for k, idx in enumerate(groups):
            if k in chosen:
                r[idx] = r[idx] - sigmoid_length_penalty(b.lengths[idx], b.correct[idx], self.alpha)
        self.switched_total += len(chosen)
        self.groups_total += len(groups)
        return ShapingResult(r, {"switched_fraction": len(chosen) / max(len(groups), 1),
                                 "switched_fraction_cumulative": self.switched_total / max(self.groups_total, 1)})

    def state_dict(self) -> dict:
        return {"switched_total": self.switched_total, "groups_total": self.groups_total}

    def load_state_dict(self, state: dict) -> None:
        self.switched_total, self.groups_total = state["switched_total"], state["groups_total"]


@register("shaper", "da_dler")
class DifficultyAwareTruncation(Shaper):
    """DA-DLER (DLER arXiv 2510.15110 sec. 4.3; methods.md sec. 2): per-question truncation length by pass rate.
    p_q = group correctness ratio, measured on the rollouts before the tighter cap (methods.md default);
    with thresholds d_1 < ... < d_n and lengths l_1 ... l_{n+1}, the question gets l_i for p_q in
    [d_i, d_{i+1}) (d_0 = 0, d_{n+1} = inf). Responses longer than l(q), or truncated by the engine, get
    reward `rho` (0). Paper: thresholds [0.5], lengths [4000, 2000] (hard questions keep 4000 tokens)."""

    needs_verifier = True

    def __init__(self, thresholds: Sequence[float] = (0.5,), lengths: Sequence[int] = (4000, 2000), rho: float = 0.0):
        self.thresholds, self.lengths, self.rho = list(thresholds), list(lengths), rho
        if len(self.lengths) != len(self.thresholds) + 1:
            raise ValueError(f"da_dler: need len(lengths) == len(thresholds) + 1, got {self.lengths} / {self.thresholds}")
        if self.thresholds != sorted(self.thresholds):
            raise ValueError(f"da_dler: thresholds must be ascending, got {self.thresholds}")

    def cap_for(self, pass_rate: float) -> int:
        return self.lengths[sum(pass_rate >= d for d in self.thresholds)]

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        r = b.rewards.clone()
        caps = torch.zeros_like(b.lengths)
        for idx in group_index(b.group_ids):  # unknown pass rate (NaN) -> the first (longest) tier
            caps[idx] = float(self.cap_for(pass_rate(b.correct[idx])))
        cut = (b.lengths > caps) | b.truncated
        r[cut] = self.rho
        return ShapingResult(r, {"cut_fraction": float(cut.float().mean()), "cap_mean": float(caps.mean())})


@register("shaper", "palu")
class Palu(Shaper):
    """PALU per-question budgets (Gao et al. arXiv 2510.10168; methods.md sec. 7; code not public).

    Each question q keeps a budget L_q (start: max_tokens). Responses longer than L_q, or truncated, get
    `rho` (0): the budget is enforced as truncation through the reward (generation itself runs to
    rollout.max_new_tokens). After scoring, with R_q the group's pass rate under the budget:
    R_q >= C: L_q <- max(min_tokens, L_q - (Q_1.0 - Q_{1-tau})) over the lengths of the correct responses;
    otherwise L_q <- max_tokens. The update is used the next time q is sampled (the paper's off-policy
    estimate from the previous epoch). Paper: C = 0.8, tau = 0.5. Budgets are checkpointed."""

    needs_verifier = True

    def __init__(self, max_tokens: int, C: float = 0.8, tau: float = 0.5, min_tokens: int = 16, rho: float = 0.0):
        if not 0 < tau <= 1:
            raise ValueError(f"palu: tau must be in (0, 1], got {tau}")
        self.max_tokens, self.C, self.tau, self.min_tokens, self.rho = max_tokens, C, tau, min_tokens, rho
        self.budgets: dict[str, int] = {}

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        if b.keys is None:
            raise ValueError("palu needs question keys in the shaping batch")
        r = b.rewards.clone()
        compress = 0
        for idx in group_index(b.group_ids):
            key = str(b.keys[int(idx[0])])
            budget = self.budgets.get(key, self.max_tokens)
            over = (b.lengths[idx] > budget) | b.truncated[idx]
            r[idx[over]] = self.rho
            c = b.correct[idx]
            ok = (c >= 1) & ~over
            known = ~torch.isnan(c)
            if known.any() and float(ok[known].float().mean()) >= self.C:
                L = b.lengths[idx][ok].double()
                step = float(torch.quantile(L, 1.0) - torch.quantile(L, 1.0 - self.tau))
                self.budgets[key] = max(self.min_tokens, int(budget - step))
                compress += 1
            else:
                self.budgets[key] = self.max_tokens
        n = len(group_index(b.group_ids))
        return ShapingResult(r, {"compress_fraction": compress / max(n, 1),
                                 "budget_mean": sum(self.budgets.values()) / max(len(self.budgets), 1)})

    def state_dict(self) -> dict:
        return {"budgets": dict(self.budgets)}

    def load_state_dict(self, state: dict) -> None:
        self.budgets = dict(state["budgets"])
