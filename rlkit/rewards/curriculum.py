"""Token-budget curricula (Hammoud et al. "Train Long, Think Short", arXiv 2508.08940, sec. 3; methods.md sec. 4).

The budget is a pure function of the training step, so a resumed run continues the schedule exactly.
The loop injects it into each prompt (``budget.template``) and hands it to rewards as the per-sample
``budget`` column, which ``budget_triangular`` reads.
"""

from __future__ import annotations

import math


def budget_at(cfg, step: int, total_steps: int) -> int | None:
    """B(step) for ``cfg`` (a BudgetConfig); None when no schedule is set.

    exponential (the paper's main form):  B(t) = max(1, B0 * gamma^floor(t / every))
    steps (its ablation): n = decays points over total_steps, I = T / (n + 1), d = (B_f / B0)^(1/n),
                          B = B0 * d^k on [k I, (k + 1) I)
    linear: the same decay points, equal drops B0 - k (B0 - B_f) / n
    """
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "exponential":
        return max(1, int(round(cfg.initial * cfg.gamma ** (step // cfg.every))))
    interval = total_steps / (cfg.decays + 1)
    k = min(int(step // interval), cfg.decays) if interval > 0 else cfg.decays
    if cfg.schedule == "steps":
        d = (cfg.final / cfg.initial) ** (1 / cfg.decays)
        return max(1, int(round(cfg.initial * d**k)))
    if cfg.schedule == "linear":
        return max(1, int(round(cfg.initial - k * (cfg.initial - cfg.final) / cfg.decays)))
    raise ValueError(f"unknown budget schedule {cfg.schedule!r}")


def check(cfg) -> str | None:
    """A problem with the budget config, or None."""
    if cfg.schedule == "none":
        return None
    if cfg.initial < 1 or cfg.final < 1:
        return "budget.initial and budget.final must be >= 1"
    if cfg.schedule == "exponential" and (cfg.every < 1 or not 0 < cfg.gamma <= 1):
        return "budget.every must be >= 1 and budget.gamma in (0, 1]"
    if cfg.schedule in ("steps", "linear") and cfg.decays < 1:
        return "budget.decays must be >= 1"
    if "{budget}" not in cfg.template and cfg.inject:
        return "budget.template must contain {budget}"
    return None if math.isfinite(cfg.gamma) else "budget.gamma must be finite"
