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
