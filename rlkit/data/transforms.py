"""Prompt transforms: they rewrite a step's prompts before the rollout.

A transform is a registered factory whose object is called as ``transform(prompts, ctx: StageContext)
-> (prompts, metrics)``; ``ctx.render(columns, extra_text)`` re-applies the chat template.

Token-budget curricula (Hammoud et al. "Train Long, Think Short", arXiv 2508.08940, sec. 3; methods.md sec. 4):
the budget is a pure function of the training step, so a resumed run continues the schedule exactly. It is
injected into each prompt (``template``) and handed to rewards as the per-sample ``budget`` column, which
``budget_triangular`` reads.
"""

from __future__ import annotations

import math
from typing import Literal

from rlkit.records import Prompt, StageContext
from rlkit.registry import register


def budget_at(schedule: str, step: int, total_steps: int, *, initial: int, final: int, gamma: float, every: int,
              decays: int) -> int:
    """B(step) of a schedule.

    exponential (the paper's main form):  B(t) = max(1, B0 * gamma^floor(t / every))
    steps (its ablation): n = decays points over total_steps, I = T / (n + 1), d = (B_f / B0)^(1/n),
                          B = B0 * d^k on [k I, (k + 1) I)
    linear: the same decay points, equal drops B0 - k (B0 - B_f) / n
    """
    if schedule == "exponential":
        return max(1, int(round(initial * gamma ** (step // every))))
    interval = total_steps / (decays + 1)
    k = min(int(step // interval), decays) if interval > 0 else decays
    if schedule == "steps":
        d = (final / initial) ** (1 / decays)
        return max(1, int(round(initial * d**k)))
    if schedule == "linear":
        return max(1, int(round(initial - k * (initial - final) / decays)))
    raise ValueError(f"unknown budget schedule {schedule!r}")


@register("prompt_transform", "budget_curriculum")
class BudgetCurriculum:
    """Token-budget curriculum (Train Long, Think Short, arXiv 2508.08940 sec. 3): the step's budget B(t)
    goes into every prompt (``template``) and the ``budget`` column. Paper: exponential, B0 256, gamma 0.7,
    every 150 steps of 600 (final 87)."""

    def __init__(self, schedule: Literal["exponential", "steps", "linear"] = "exponential", initial: int = 256,
                 final: int = 87, gamma: float = 0.7, every: int = 150, decays: int = 3, inject: bool = True,
                 template: str = "IMPORTANT: You should use exactly {budget} tokens in your response."):
        problems = [msg for bad, msg in (
            (initial < 1 or final < 1, "initial and final must be >= 1"),
            (schedule == "exponential" and (every < 1 or not 0 < gamma <= 1 or not math.isfinite(gamma)),
             "every must be >= 1 and gamma in (0, 1]"),
            (schedule in ("steps", "linear") and decays < 1, "decays must be >= 1"),
            (inject and "{budget}" not in template, "template must contain {budget}")) if bad]
        if problems:
            raise ValueError(f"budget_curriculum: {problems[0]}")
        self.schedule, self.inject, self.template = schedule, inject, template
        self.params = dict(initial=initial, final=final, gamma=gamma, every=every, decays=decays)

    def budget(self, step: int, total_steps: int) -> int:
        return budget_at(self.schedule, step, total_steps, **self.params)

    def __call__(self, prompts: list[Prompt], ctx: StageContext) -> tuple[list[Prompt], dict]:
        b = self.budget(ctx.step, ctx.total_steps)
        extra = self.template.format(budget=b) if self.inject else ""
        return [ctx.render({**p.columns, "budget": b}, extra) for p in prompts], {"current": b}
