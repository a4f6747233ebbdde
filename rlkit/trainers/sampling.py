"""Dynamic sampling (DAPO, Yu et al. arXiv 2503.14476 sec. 3.2; DLER; methods.md sec. 0 contract 3):
groups whose filter metric has zero variance carry no GRPO signal and are dropped; generation continues
until the step has its quota of groups or the round limit is hit. Pure helpers; the loop orchestrates."""

from __future__ import annotations

import torch


def informative_groups(values: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-6) -> list[int]:
    """Group ids (in first-appearance order) whose `values` are not all equal (max - min > tol).
    NaN values (not applicable) are ignored; a group with fewer than two known values is dropped."""
    keep, seen = [], set()
    for g in group_ids.tolist():
        if g in seen:
            continue
        seen.add(g)
        v = values[group_ids == g]
        v = v[~torch.isnan(v)]
        if v.numel() >= 2 and float(v.max() - v.min()) > tol:
            keep.append(g)
    return keep


def fill_quota(kept: list, quota: int, fallback: list) -> tuple[list, int]:
    """Trim `kept` to `quota`, or pad it by repeating kept groups in order (DOT's predictive dynamic
    sampling rule); with nothing kept, pad from `fallback` (zero-variance groups: zero advantage).
    Returns (groups, number of padded entries)."""
    if len(kept) >= quota:
        return kept[:quota], 0
    source = kept or fallback
    if not source:
        raise ValueError("dynamic sampling: no groups to fill the batch with")
    out = list(kept)
    i = 0
    while len(out) < quota:
        out.append(source[i % len(source)])
        i += 1
    return out, quota - len(kept)


class PredictiveOversampling:
    """DOT's Predictive Dynamic Sampling (Wu et al. arXiv 2601.03969; methods.md sec. 6): one generation round
    of floor(B * f) prompts with f = clip((1 / mean(h)) * (1 + std(h)), f_min, f_max), h the last `window`
    per-step pass rates (informative groups / prompts sampled); f = f_max when mean(h) = 0 and f_init
    before any history. Paper: window 20, f_init 1.5, f_min 1.2, f_max 5.0. The history is checkpointed."""

    def __init__(self, window: int = 20, f_init: float = 1.5, f_min: float = 1.2, f_max: float = 5.0):
        self.window, self.f_init, self.f_min, self.f_max = window, f_init, f_min, f_max
        self.history: list[float] = []

    def factor(self) -> float:
        if not self.history:
            return self.f_init
        h = torch.tensor(self.history, dtype=torch.float64)
        mean = float(h.mean())
        if mean == 0:
            return self.f_max
        std = float(h.std()) if h.numel() > 1 else 0.0
        return min(self.f_max, max(self.f_min, (1 / mean) * (1 + std)))

    def prompts_for(self, quota: int) -> int:
        return max(quota, int(quota * self.factor()))

    def record(self, pass_rate: float) -> None:
        self.history = (self.history + [pass_rate])[-self.window:]

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
