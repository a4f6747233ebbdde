"""Which micro-batches of an SP group run sequence-parallel: a pure planner next to kernels/packing.py (issue 12).

RL rollouts are long-tailed: most completions are short, a few hit the cap. Fixed-degree sequence parallelism
shards every micro-batch over the P ranks of an SP group and pays the all-to-all on all of them. Following
FlexSP (Wang et al., "Data-Centric and Heterogeneity-Adaptive Sequence Parallelism", ASPLOS'25), the adaptive
plan runs sequence-parallel only the samples that do not fit one rank's token budget; the others are packed
into per-rank micro-batches that the P ranks run side by side, each its own, as data parallelism inside the
group. Either way every sample is trained once with the same weights, so gradients are the same; only the
time differs.

Memory model: a rank holds the activations of ``tokens`` tokens, so a micro-batch fits when its tokens (or its
tokens / P when sharded) are at most ``budget``. Time model: ``sequence_cost`` (a*L + b*L^2) per sequence; a
sharded micro-batch costs its cost / P plus ``comm`` per token for the exchanges; a step of side-by-side
micro-batches costs its slowest rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlkit.kernels.packing import plan_micro_batches, sequence_cost


@dataclass(frozen=True)
class GroupStep:
    """One forward/backward of the SP group. ``sharded``: the P ranks run ``parts[0]`` together, each a 1/P
    shard of the packed row; otherwise rank r runs ``parts[r]`` alone (possibly empty)."""

    sharded: bool
    parts: tuple[tuple[int, ...], ...]


def step_cost(step: GroupStep, lengths: Sequence[int], sp: int, a: float = 1.0, b: float = 0.0,
              comm: float = 0.0) -> float:
    """Predicted time of one group step under the module's time model."""
    if step.sharded:
        idx = step.parts[0]
        return sum(sequence_cost(lengths[i], a, b) for i in idx) / sp + comm * sum(lengths[i] for i in idx)
    return max((sum(sequence_cost(lengths[i], a, b) for i in part) for part in step.parts), default=0.0)


def plan_group_steps(lengths: Sequence[int], sp: int, budget: int, mode: str = "adaptive", *,
                     a: float = 1.0, b: float = 0.0) -> list[GroupStep]:
    """The group steps that train every sample of ``lengths`` once within ``budget`` tokens per rank.

    ``fixed``: every micro-batch sharded (packed up to P x budget tokens). ``adaptive``: samples longer than
    the budget are packed into sharded micro-batches; the rest into per-rank micro-batches of at most
    ``budget`` tokens, balanced by cost over the P ranks of each side-by-side step. A sample longer than
    P x budget goes alone into a sharded micro-batch (as rlkit.kernels.packing lets an over-budget unit go
    alone): the budget is a planning target, the device's memory the real limit."""
    if sp < 1 or budget < 1:
        raise ValueError(f"plan_group_steps: sp and budget must be >= 1, got {sp} and {budget}")
    if mode not in ("fixed", "adaptive"):
        raise ValueError(f"plan_group_steps: mode must be fixed or adaptive, got {mode!r}")
    long = [i for i, n in enumerate(lengths) if mode == "fixed" or n > budget]
    short = [i for i, n in enumerate(lengths) if mode == "adaptive" and n <= budget]
    steps = [GroupStep(True, (tuple(long[j] for j in mb),))
             for mb in plan_micro_batches([lengths[i] for i in long], sp * budget, a=a, b=b) if mb]
    if short:
        mbs = [[short[j] for j in mb] for mb in plan_micro_batches([lengths[i] for i in short], budget, a=a, b=b)
               if mb]
        rounds = math.ceil(len(mbs) / sp)
        costs = [sum(sequence_cost(lengths[i], a, b) for i in mb) for mb in mbs]
        # deal the micro-batches into `rounds` steps of at most sp each, heaviest first, each to the step with
        # the least cost so far that still has a free rank
        loads = [[0.0, []] for _ in range(rounds)]
        for k in sorted(range(len(mbs)), key=lambda k: -costs[k]):
            slot = min((s for s in loads if len(s[1]) < sp), key=lambda s: s[0])
            slot[0] += costs[k]
            slot[1].append(mbs[k])
        for _, parts in loads:
            parts = parts + [[] for _ in range(sp - len(parts))]
            steps.append(GroupStep(False, tuple(tuple(p) for p in parts)))
    return steps


def plan_cost(steps: list[GroupStep], lengths: Sequence[int], sp: int, a: float = 1.0, b: float = 0.0,
              comm: float = 0.0) -> float:
    """Predicted time of a plan: the sum of its steps."""
    return sum(step_cost(s, lengths, sp, a, b, comm) for s in steps)
