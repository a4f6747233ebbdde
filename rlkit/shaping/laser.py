"""LASER-D and LASER-DE: difficulty-aware adaptive length targets from a monitor set
(Liu et al. arXiv 2505.15612 sec. 5 and Appendix D; hkust-nlp/Laser; methods.md sec. 5).

Every ``monitor_every`` steps (and before the first step) the trainer generates ``monitor_samples``
rollouts for each prompt of a fixed monitor set with the current policy and calls ``update_from_monitor``.
Monitor prompts are bucketed by accuracy (hard <= 1/3 < medium <= 2/3 < easy: ``monitor_bucket``). For each bucket d and
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
from typing import Literal

import torch

from rlkit.records import ShapingBatch, group_index
from rlkit.registry import register
from rlkit.shaping.groups import Shaper, ShapingResult, pass_rate

BUCKETS = ("hard", "medium", "easy")


def candidates(lower: int, upper: int, interval: int) -> list[int]:
    """LASER-D's candidate lengths (arXiv 2505.15612 sec. 5; hkust-nlp/Laser constants.py
    ``get_length_threshold``): [lower, lower + interval, ..., upper]; if lower < interval:
    [lower, interval, 2 interval, ..., upper].

    A documented difference: the released code switches at a hard-coded 1024 (lower < 1024 gives
    [lower, 1024, 1024 + interval, ...]) and may add one candidate past upper. Every released script and the
    paper use interval 1024 (and upper - lower a multiple of it), where the two lists are equal. rlkit keeps the
    grid on multiples of ``interval`` so that other intervals stay a grid: with lower 100, interval 100, upper
    400 the released rule would leave only [100] (nothing between 100 and 1024)."""
    if lower < interval:
        return [lower] + list(range(interval, upper + 1, interval))
    return list(range(lower, upper + 1, interval))


def bucket_of(rate: float) -> str:
    """Training groups by pass rate: easy >= 2/3, medium >= 1/3, else hard (LASER's code)."""
    return "easy" if rate >= 2 / 3 else "medium" if rate >= 1 / 3 else "hard"


def monitor_bucket(rate: float) -> str:
    """Monitor prompts by accuracy: hard <= 1/3 < medium <= 2/3 < easy (LASER sec. 5, methods.md sec. 5)."""
    return "hard" if rate <= 1 / 3 + 1e-6 else "medium" if rate <= 2 / 3 + 1e-6 else "easy"  # float32 rates


def min_correct(bucket: str, k: int, rounding: str) -> int:
    frac = {"easy": 2 / 3, "medium": 1 / 3, "hard": None}[bucket]
    if frac is None:
        return 1
    return math.ceil(k * frac - 1e-9) if rounding == "ceil" else math.floor(k * frac + 1e-9)


@register("shaper", "laser_d")
class LaserD(Shaper):
    """LASER-D (Liu et al. arXiv 2505.15612 sec. 5): + alpha for correct responses within the bucket's target."""

    variant = "d"
    needs_verifier = True
    needs_looping = False  # LASER-DE's exploration bonus reads the loop detector's flags
    monitor = (20, 500, 8)  # (every, size, samples) of the default options; __init__ sets the configured ones

    def __init__(self, alpha: float = 0.5, lower: int = 1024, upper: int = 16384, interval: int = 1024,
                 monitor_every: int = 20, monitor_size: int = 500, monitor_samples: int = 8,
                 rounding: Literal["ceil", "floor"] = "ceil", expected_correct: float = 1.0,
                 format_term: str = "boxed_format"):
        self.alpha, self.rounding, self.expected = alpha, rounding, expected_correct
        self.candidates = candidates(lower, upper, interval)
        self.monitor = (monitor_every, monitor_size, monitor_samples)
        self.monitor_samples = monitor_samples
        self.format_term = format_term
        self.targets: dict[str, int | None] = {b: None for b in BUCKETS}

    def update_from_monitor(self, lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> dict:
        """Recompute L_A(d) from monitor rollouts; a bucket without a qualifying candidate gets None
        (then the batch's longest response is used). A prompt of unknown accuracy is left out."""
        by_bucket: dict[str, list[float]] = {b: [] for b in BUCKETS}
        k = self.monitor_samples
        for idx in group_index(group_ids):
            rate = pass_rate(correct[idx])
            if rate == rate:  # not NaN
                by_bucket[monitor_bucket(rate)].extend(lengths[idx].tolist())
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
        r = b.rewards.clone()
        fallback = float(b.lengths.max()) if b.lengths.numel() else 0.0
        bonus = torch.zeros_like(r)
        for idx in group_index(b.group_ids):
            rate = pass_rate(b.correct[idx])
            if rate != rate:  # no known correctness in the group: no bonus
                continue
            target = self.targets[bucket_of(rate)]
            target = fallback if target is None else target
            L, c = b.lengths[idx], b.correct[idx]  # NaN compares False: unknown samples get no bonus
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


@register("shaper", "laser_de")
class LaserDE(LaserD):
    """LASER-DE (arXiv 2505.15612 sec. 5): LASER-D plus + alpha for long, formatted, non-looping wrong answers."""

    variant = "de"
    needs_looping = True
