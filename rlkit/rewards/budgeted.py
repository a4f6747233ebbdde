"""Rewards of the budget-announcing methods: HBPO's budget-aware reward (``hbpo_budget``), which reads the budget a
rollout hook tagged each sample with (rlkit.rollout.hooks ``hbpo_budgets``). Formulas, the released code and every
deviation are in the docstrings (architecture rule 12); tests/unit/test_hook_methods.py ports the released functions.
"""

from __future__ import annotations

import math

from rlkit.rewards.registry import register_reward


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` with balanced braces (released rllm math_utils extract_answer: the
    last ``\\boxed`` / ``\\fbox``, which must be ``\\boxed{``), None when there is none or it never closes."""
    start = text.rfind("\\boxed")
    if start < 0 or not text.startswith("\\boxed{", start):
        return None
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[start + len("\\boxed{"):j]
    return None


@register_reward("hbpo_budget", factory=True)
class HBPOBudget:
    """HBPO's budget-aware reward (Lyu et al. arXiv 2507.15844; released rllm/rewards/math_reward.py
    ``RewardMathFn.__call__``), with b the sample's announced budget (its ``budget`` tag, rollout hook hbpo_budgets;
    l_max when it has none) and n its completion tokens (the announcement included, as released):

        format error (no ``think_end``, or no \\boxed{...} after it)   -> format_penalty (-1)
        correct and n <= l_max  -> min(beta cos(pi' n / (2 l_max)) - |b - n| / l_max, beta cos(pi' b / (2 l_max)))
                                   (no budget: round(beta cos(pi' n / (2 l_max)), 2))
        otherwise               -> 0

    beta 4, l_max 4096, pi' = 3.1416 (released). The paper's piecewise form (f1 for n > b, f2(b) otherwise) differs
    from the released min() only at b = 512, n < ~325. ``think_end`` empty: no format check (models without a
    thinking marker). Needs the correctness term (``correct``)."""

    needs_verifier = True

    def __init__(self, beta: float = 4.0, l_max: int = 4096, pi: float = 3.1416, think_end: str = "</think>",
                 format_penalty: float = -1.0):
        if l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {l_max}")
        self.beta, self.l_max, self.pi = float(beta), int(l_max), float(pi)
        self.think_end, self.format_penalty = think_end, float(format_penalty)

    def ceiling(self, budget: float) -> float:
        """f2(b) = beta cos(pi' b / (2 l_max)): the most a sample of budget b can earn (the estimator's baseline)."""
        return self.beta * math.cos(self.pi * budget / (2 * self.l_max))

    def __call__(self, prompts, completions, completion_ids, num_tokens=None, correct=None, budget=None, **kwargs):
        n_samples = len(completions)
        num_tokens = num_tokens or [len(c) for c in completion_ids]
        correct = correct or [None] * n_samples
        budget = budget or [None] * n_samples
        out = []
        for text, n, ok, b in zip(completions, num_tokens, correct, budget):
            if self.think_end:
                if self.think_end not in text or last_boxed(text.split(self.think_end)[1]) is None:
                    out.append(self.format_penalty)
                    continue
            if ok is None:
                out.append(None)
            elif ok >= 1 and n <= self.l_max:
                res = self.beta * math.cos(self.pi * n / (2 * self.l_max))
                out.append(round(res, 2) if b is None else min(res - abs(b - n) / self.l_max, self.ceiling(b)))
            else:
                out.append(0.0)
        return out
