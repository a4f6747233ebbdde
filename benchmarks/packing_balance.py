"""Balance of ``plan_micro_batches`` under tight budgets (issue 35 item 2), against the packer of another revision.

    .venv/bin/python benchmarks/packing_balance.py [--trials 3000] [--seed 0] [--old REV]

Random long-tail batches (2-300 samples, budgets 512 / 2,048 / 16,384 tokens, log-normal lengths of sigma 0.5-1.2
and median 5-30% of the budget, quadratic cost share b of 0, 1e-5 or 1e-4 per token) planned into the count the
packer needs, a few more, or that count rounded up to a multiple of 8 (the SP planner's rounded variant). Reports,
per b, the worst cost of the heaviest micro-batch over max(mean cost, the costliest sample), how many plans returned
fewer non-empty micro-batches than asked, and the planning seconds. ``--old REV`` loads rlkit/kernels/packing.py of
that git revision and runs the same batches through it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import subprocess
import tempfile
import time
from pathlib import Path

from rlkit.kernels import packing


def run(P, seed: int, trials: int) -> tuple[dict, int, float]:
    rng = random.Random(seed)
    worst: dict = {}
    short, seconds = 0, 0.0
    for _ in range(trials):
        n, cap, b = rng.randint(2, 300), rng.choice([512, 2048, 16384]), rng.choice([0, 1e-5, 1e-4])
        sigma, med = rng.choice([0.5, 1.0, 1.2]), cap * rng.choice([0.05, 0.15, 0.3])
        lengths = [max(1, min(cap, int(rng.lognormvariate(math.log(med), sigma)))) for _ in range(n)]
        natural = len(P.plan_micro_batches(lengths, cap, b=b))
        want = rng.choice([natural, natural + rng.randint(1, 8), -(-natural // 8) * 8])
        t = time.perf_counter()
        parts = P.plan_micro_batches(lengths, cap, min_count=want, b=b)
        seconds += time.perf_counter() - t
        full = [p for p in parts if p]
        short += len(full) < min(want, n)
        costs = [sum(P.sequence_cost(lengths[i], 1, b) for i in p) for p in full]
        floor = max(sum(costs) / len(parts), max(P.sequence_cost(x, 1, b) for x in lengths))
        worst[b] = max(worst.get(b, 0.0), max(costs) / floor)
    return worst, short, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--old", default="", help="a git revision whose packer runs the same batches")
    args = ap.parse_args()
    packers = [("this tree", packing)]
    if args.old:
        source = subprocess.run(["git", "show", f"{args.old}:rlkit/kernels/packing.py"], check=True,
                                capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / "old_packing.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_packing", path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        packers.append((args.old, old))
    print("| packer | worst max / max(mean, costliest), b = 0 | b = 1e-5 | b = 1e-4 | plans short of the count | s |")
    print("|---|---|---|---|---|---|")
    for name, P in packers:
        worst, short, seconds = run(P, args.seed, args.trials)
        print(f"| {name} | {worst[0]:.3f} | {worst[1e-5]:.3f} | {worst[1e-4]:.3f} | {short} of {args.trials} | "
              f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
