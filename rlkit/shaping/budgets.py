"""Shapers of the rollout-hook methods: JET's shortest-correct bonus (``jet_shortest``). HBPO's budget-aware reward
is rlkit.rewards.budgeted ``hbpo_budget`` and its estimator rlkit.algorithms.advantages ``hbpo``.

Each carries its formula, the released code it follows and every deviation (architecture rule 12); the tests port
the released functions (tests/unit/test_hook_methods.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from rlkit.records import ShapingBatch, group_index
from rlkit.registry import register
from rlkit.shaping.groups import Shaper, ShapingResult


@register("shaper", "jet_shortest")
class JETShortest(Shaper):
    """JET's length bonus (Han et al. arXiv 2509.23392 eq. 6; released EasyR1/examples/reward_function/math.py
    ``compute_score``): over the pool of correct samples C, with l_min, l_max their lengths,

        bonus_i = ((l_max - l_i) / (l_max - l_min + eps)) * alpha * (1 - delta) + delta     for i in C

    added to the reward (alpha 1.2, delta 0.05, eps 1e-8; the base reward 0.9 acc + 0.1 format is the recipe's
    terms). A lone correct sample, or correct samples all of one length, get delta. ``pool``: "batch" pools every
    correct sample of the step (the released code: its batch reward manager calls the function once on the whole
    rollout batch), "group" each prompt's group (the paper's per-question normalisation). ``linear``: the ablation
    math_linear.py, bonus = 1 - (l_i - l_min) / (l_max - l_min + eps). Lengths are the counted lengths
    (rollout.thinking.count; released: the response tokens with EOS). Needs a correctness term; unknown correctness
    gets no bonus."""

    needs_verifier = True

    def __init__(self, alpha: float = 1.2, delta: float = 0.05, eps: float = 1e-8,
                 pool: Literal["batch", "group"] = "batch", linear: bool = False):
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.alpha, self.delta, self.eps, self.pool, self.linear = float(alpha), float(delta), float(eps), pool, linear

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        rewards = b.rewards.clone()
        pools = [torch.arange(len(rewards))] if self.pool == "batch" else group_index(b.group_ids)
        bonus = torch.zeros_like(rewards, dtype=torch.float64)
        for idx in pools:
            ok = idx[b.correct[idx] >= 1]
            if ok.numel() == 0:
                continue
            lengths = b.lengths[ok].double()
            lo, hi = lengths.min(), lengths.max()
            denom = hi - lo + self.eps
            if self.linear:
                bonus[ok] = 1.0 - (lengths - lo) / denom
            else:
                bonus[ok] = (hi - lengths) / denom * self.alpha * (1 - self.delta) + self.delta
        rewards = (rewards.double() + bonus).to(rewards.dtype)
        got = bonus[b.correct >= 1]
        return ShapingResult(rewards, {"bonus_mean": float(got.mean()) if got.numel() else math.nan})
