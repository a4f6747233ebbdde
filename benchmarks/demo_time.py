"""Wall time of the embedded demo (what `make demo` runs: DLER scaled to CPU, then `rlkit report`) and its phases.

Runs the demo cold: a fresh model cache, so the one-off GGUF -> HF conversion is included. Prints a
markdown table for BENCHMARKS.md. Target (issue 2): <= 15 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/demo_time.py [--out runs/bench-demo] [extra rlkit train flags]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--warm-cache", action="store_true", help="reuse $RLKIT_CACHE instead of a fresh one")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or pass --out")
    env = dict(os.environ)
    if not args.warm_cache:
        env["RLKIT_CACHE"] = tempfile.mkdtemp(prefix="rlkit-cache-")
    t0 = time.perf_counter()
    for cmd in (["train", "--recipe", "dler", "examples/demo/config.yaml", f"--output_dir={out}", "--overwrite",
                 "--logging.progress=false", *extra], ["report", str(out)]):
        proc = subprocess.run([sys.executable, "-m", "rlkit.cli", *cmd], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(proc.returncode)
        print(proc.stdout[-1500:])
    wall = time.perf_counter() - t0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in steps if "reward/mean" in m]
    phase = {k: sum(m.get(f"time/{k}", 0.0) for m in train_steps)
             for k in ("rollout", "reward", "old_logprobs", "train", "weight_sync", "checkpoint", "step")}
    summary = json.loads((out / "eval_summary.json").read_text())
    setup_and_eval = wall - phase["step"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"steps: {len(train_steps)}; wall time: {wall:.0f} s ({wall / 60:.1f} min)\n")
    print("| phase | seconds | share |\n|---|---|---|")
    for k in ("rollout", "reward", "train", "weight_sync", "checkpoint"):
        print(f"| {k} (sum over steps) | {phase[k]:.1f} | {100 * phase[k] / wall:.0f}% |")
    print(f"| start-up + model conversion + eval before/after + report | {setup_and_eval:.1f} | {100 * setup_and_eval / wall:.0f}% |")
    print(f"| **total** | **{wall:.1f}** | |\n")
    tok = sum(m["throughput/rollout_tokens_per_s"] * m["time/rollout"] for m in train_steps)
    print(f"rollout tokens generated: {tok:.0f}; mean rollout {tok / max(phase['rollout'], 1e-9):.0f} tok/s; "
          f"mean train {sum(m['throughput/train_tokens_per_s'] for m in train_steps) / len(train_steps):.0f} tok/s")
    b, a = summary["before"], summary["after"]
    print("\n| held-out | before | after |\n|---|---|---|")
    from rlkit.trainers.evaluate import held_out_budgets

    budgets = held_out_budgets(b)[:-1]  # eval.budgets: the forced-answer scores below the cap
    keys = ["accuracy", "mean_tokens", "median_tokens", "truncation_rate"]
    keys += [f"{m}@{n}" for n in budgets for m in ("accuracy", "forced")] + (["budget_auc"] if budgets else [])
    for k in keys:
        print(f"| {k} | {b.get(k, float('nan')):.3f} | {a.get(k, float('nan')):.3f} |")
    from rlkit.evals.metrics import aes

    print(f"| AES vs before | - | {aes(a['accuracy'], a['mean_tokens'], b['accuracy'], b['mean_tokens']):+.3f} |")


if __name__ == "__main__":
    main()
