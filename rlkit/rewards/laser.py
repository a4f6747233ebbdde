"""LASER-D and LASER-DE: difficulty-aware adaptive length targets from a monitor set
(Liu et al. arXiv 2505.15612 sec. 5 and Appendix D; hkust-nlp/Laser; methods.md sec. 5).

Every ``monitor_every`` steps (and before the first step) the trainer generates ``monitor_samples``
rollouts for each prompt of a fixed monitor set with the current policy and calls ``update_targets``.
Monitor prompts are bucketed by accuracy (hard <= 1/3 < medium <= 2/3 < easy). For each bucket d and
candidate length l: coverage P(l, d) = fraction of *all* the bucket's responses with length <= l, and
ECR_d(l) = P(l, d) * |C_d| where |C_d| = ceil (paper: 6/3/1 for K=8) or floor (released config: 5/2/1) of
(2K/3, K/3, 1). L_A(d) = the smallest candidate with ECR >= expected_correct (floor rounding tests
floor(P |C|) >= 1); with none, the longest response of the current training batch.
Training groups are bucketed by their pass rate (easy >= 2/3, medium >= 1/3, else hard), then
LASER-D:  + alpha for correct responses with L <= L_A(d);
LASER-DE: also + alpha for incorrect, well-formatted responses with L > L_A(d) that do not end in a
repetition loop (rlkit's loop detector, not LASER's n-gram detector: a documented deviation).
"""

from __future__ import annotations

import math

import torch

from rlkit.rewards.shaping import SHAPERS, ShapingBatch, ShapingResult, _groups, _need_correct

BUCKETS = ("hard", "medium", "easy")


def candidates(lower: int, upper: int, interval: int) -> list[int]:
    """LASER's get_length_threshold: [lower, lower + interval, ..., upper]; if lower < interval:
    [lower, interval, 2 interval, ..., upper]."""
    if lower < interval:
        return [lower] + list(range(interval, upper + 1, interval))
    return list(range(lower, upper + 1, interval))


def bucket_of(pass_rate: float) -> str:
    return "easy" if pass_rate >= 2 / 3 else "medium" if pass_rate >= 1 / 3 else "hard"


def min_correct(bucket: str, k: int, rounding: str) -> int:
    frac = {"easy": 2 / 3, "medium": 1 / 3, "hard": None}[bucket]
    if frac is None:
        return 1
    return math.ceil(k * frac - 1e-9) if rounding == "ceil" else math.floor(k * frac + 1e-9)


class LaserD:
    """LASER-D (variant "d") / LASER-DE (variant "de"): the targets L_A(d) are controller state."""

    def __init__(self, alpha: float = 0.5, lower: int = 1024, upper: int = 16384, interval: int = 1024,
                 monitor_every: int = 20, monitor_size: int = 500, monitor_samples: int = 8,
                 rounding: str = "ceil", expected_correct: float = 1.0, format_term: str = "boxed_format",
                 variant: str = "d"):
        if rounding not in ("ceil", "floor"):
            raise ValueError(f"laser: rounding must be ceil or floor, got {rounding!r}")
        self.alpha, self.rounding, self.expected, self.variant = alpha, rounding, expected_correct, variant
        self.candidates = candidates(lower, upper, interval)
        self.monitor_every, self.monitor_size, self.monitor_samples = monitor_every, monitor_size, monitor_samples
        self.format_term = format_term
        self.targets: dict[str, int | None] = {b: None for b in BUCKETS}
        self.needs_looping = variant == "de"

    def update_targets(self, lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> dict:
        """Recompute L_A(d) from monitor rollouts; a bucket without a qualifying candidate gets None
        (then the batch's longest response is used)."""
        by_bucket: dict[str, list[float]] = {b: [] for b in BUCKETS}
        k = self.monitor_samples
        for idx in _groups(group_ids):
            rate = float(torch.nan_to_num(correct[idx], nan=0.0).mean())
            by_bucket[bucket_of(rate)].extend(lengths[idx].tolist())
        for b in BUCKETS:
            L = torch.tensor(by_bucket[b])
            self.targets[b] = None
            if L.numel() == 0:
                continue
            c = min_correct(b, k, self.rounding)
            for cand in self.candidates:
                ecr = float((L <= cand).float().mean()) * c
                ok = math.floor(ecr + 1e-9) >= self.expected if self.rounding == "floor" else ecr >= self.expected - 1e-9
                if ok:
                    self.targets[b] = cand
                    break
        return {f"target_{b}": (t if t is not None else -1) for b, t in self.targets.items()}

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        _need_correct("laser", b.correct)
        r = b.rewards.clone()
        fallback = float(b.lengths.max()) if b.lengths.numel() else 0.0
        correct = torch.nan_to_num(b.correct, nan=0.0)
        bonus = torch.zeros_like(r)
        for idx in _groups(b.group_ids):
            target = self.targets[bucket_of(float(correct[idx].mean()))]
            target = fallback if target is None else target
            L, c = b.lengths[idx], correct[idx]
            bonus[idx] += self.alpha * ((c >= 1) & (L <= target)).float()
            if self.variant == "de":
                fmt = b.terms.get(self.format_term)
                if fmt is None:
                    raise ValueError(f"laser_de needs the format term {self.format_term!r} in `rewards`")
                looping = b.looping[idx] if b.looping is not None else torch.zeros_like(L, dtype=torch.bool)
                explore = (c < 1) & (torch.nan_to_num(fmt[idx], nan=0.0) >= 1) & (L > target) & ~looping
                bonus[idx] += self.alpha * explore.float()
        return ShapingResult(r + bonus, {"bonus_mean": float(bonus.mean())})

    def state_dict(self) -> dict:
        return {"targets": dict(self.targets)}

    def load_state_dict(self, state: dict) -> None:
        self.targets = dict(state["targets"])


@SHAPERS.register("laser_d")
def laser_d(**kwargs) -> LaserD:
    """LASER-D (Liu et al. arXiv 2505.15612 sec. 5): + alpha for correct responses within the bucket's target."""
    return LaserD(variant="d", **kwargs)


@SHAPERS.register("laser_de")
def laser_de(**kwargs) -> LaserD:
    """LASER-DE (arXiv 2505.15612 sec. 5): LASER-D plus + alpha for long, formatted, non-looping wrong answers."""
    return LaserD(variant="de", **kwargs)
