"""Micro-batch planning time and quality, the planner before issue 24 vs now (issue 24 item 1).

    .venv/bin/python benchmarks/planner.py [--sizes 256,1024,8192] [--old-limit 1024] [--repeats 3]

Lengths: log-normal with median 3,000 tokens (sigma 1), capped at 16,384 (a long-tail RL rollout), seed = n.
Budget 16,384 tokens a micro-batch, cost a*L + b*L^2 with b = 1 / (6 x 3,584) (Qwen2-7B's hidden size, as the
trainer sets it). For each size: time of one ``plan_micro_batches`` call (best of ``--repeats``, the cache
cleared before each), micro-batches against the lower bound ceil(total / budget), and cost imbalance (heaviest
micro-batch over the mean). Also ``rlkit.parallel.plan.plan_group`` (SP 8, adaptive and flex, with benchmarks/sp_sim.py's
time model of Qwen2-7B on H100s) at the same sizes, on a 32k-cap tail.

"old" is the planner as it was before issue 24, reproduced here from its algorithm: Karmarkar-Karp at
ceil(total / budget) parts, re-run with one more part until every part fits. It is run only up to
``--old-limit`` samples (it took 20.6 s at 1,024 on this machine; its time grows faster than n^2).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time

from rlkit.kernels import packing as P
from rlkit.parallel.plan import CostModel, plan_group

BUDGET = 16384
B = 1.0 / (6 * 3584)


def lengths_of(n: int) -> list[int]:
    rng = random.Random(n)
    return [min(BUDGET, max(16, int(rng.lognormvariate(math.log(3000), 1.0)))) for _ in range(n)]


def old_plan(lengths: list[int], max_tokens: int, b: float) -> list[list[int]]:
    """The pre-issue-24 planner: Karmarkar-Karp with k, k+1, k+2, ... parts until every part fits."""
    n, k = len(lengths), max(math.ceil(sum(lengths) / max_tokens), 1)
    costs = [P.sequence_cost(x, 1.0, b) for x in lengths]
    while True:
        parts = P.karmarkar_karp(costs, min(k, n))
        if all(len(p) <= 1 or sum(lengths[i] for i in p) <= max_tokens for p in parts) or k >= n:
            return [p for p in parts if p]
        k += 1


def quality(plan, lengths) -> tuple[int, int, float]:
    costs = [sum(P.sequence_cost(lengths[i], 1.0, B) for i in mb) for mb in plan if mb]
    return len(costs), math.ceil(sum(lengths) / BUDGET), max(costs) / (sum(costs) / len(costs))


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        P._plan.cache_clear()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,1024,8192")
    ap.add_argument("--old-limit", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}\n")
    print("| samples | planner | seconds | micro-batches | lower bound | cost imbalance (max/mean) |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in a.sizes.split(",")):
        lengths = lengths_of(n)
        if n <= a.old_limit:
            t, plan = best_time(lambda lengths=lengths: old_plan(lengths, BUDGET, B), 1)
            mb, lb, imb = quality(plan, lengths)
            print(f"| {n} | old (KK, k+1 re-runs) | {t:.3f} | {mb} | {lb} | {imb:.3f} |", flush=True)
        else:
            print(f"| {n} | old (KK, k+1 re-runs) | not run (> {a.old_limit} samples) | | | |", flush=True)
        t, plan = best_time(lambda lengths=lengths: P.plan_micro_batches(lengths, BUDGET, b=B), a.repeats)
        mb, lb, imb = quality(plan, lengths)
        print(f"| {n} | new | {t:.3f} | {mb} | {lb} | {imb:.3f} |", flush=True)
    from sp_sim import cost_model

    cost: CostModel = cost_model(8)
    print("\nplan_group (one SP group of 8, 16,384 tokens per rank, sp_sim's time model):\n")
    print("| samples | mode | seconds | rounds | predicted vs lower bound |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in a.sizes.split(",")):
        lengths = [min(2 * BUDGET, x * 2) for x in lengths_of(n)]  # a 32k-cap tail: some need several ranks
        for mode in ("adaptive", "flex"):
            t, plan = best_time(lambda lengths=lengths, mode=mode: plan_group(lengths, 8, BUDGET, mode, cost), a.repeats)
            print(f"| {n} | {mode} | {t:.3f} | {len(plan.rounds)} | +{100 * (plan.predicted / plan.bound - 1):.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
