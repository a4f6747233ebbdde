"""Segment rollouts (UloRL) vs ordinary rollouts: step time and trained tokens per second (issue 5).

The real trainer (``rlkit train``: vLLM CPU rollouts, rewards, packed GRPO update, weight sync) runs
with ``rollout.segments`` = 1, 2 and 4 in turn, same model, prompts, seed and settings, repeated
``--repeats`` times in alternation (1, 2, 4, 1, 2, 4, ...) so that machine noise hits all three.

Workload: the tiny random Qwen2 (hidden 128, 2 layers, vocabulary 512) sampled at temperature 1. Its
next-token distribution is close to uniform, so a completion ends when EOS is drawn: lengths are
geometric with mean ~ vocabulary size, cut at ``--max-new`` tokens. That is a long tail: the median
sample is far shorter than the longest of a batch, and a step without segments waits for the longest.

Trained tokens/s = completion tokens of the samples that reached the update, summed over the measured
steps, divided by the summed step times. All steps count by default (``--warmup 0``): excluding the
first steps would favour segments (long groups started during the excluded steps are trained inside the
window), while counting all of them slightly disfavours segments (the pool left at the end was decoded
but not trained). Long runs make both effects small. Target: segments=4 >= 1.6x the trained tokens/s
of segments=1.

    .venv/bin/python benchmarks/segment_rollout.py [--steps 10] [--warmup 3] [--max-new 1024] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(model: str, out: Path, segments: int, args) -> dict:
    cmd = [sys.executable, "-m", "rlkit.cli", "train", f"--model.name_or_path={model}", f"--output_dir={out}", "--overwrite",
           f"--rollout.segments={segments}", f"--rollout.max_new_tokens={args.max_new}",
           f"--rollout.prompts_per_step={args.prompts}", f"--rollout.group_size={args.group}",
           "--rollout.temperature=1.0", "--rollout.kv_cache_gib=2", f"--train.steps={args.steps}",
           "--eval.before=false", "--eval.after=false", "--checkpoint.save_final=false",
           "--logging.progress=false", "--optim.lr=1e-5", "--rewards=[{name: boxed_format}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"segments={segments} failed")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "time/step" in m][args.warmup:]
    tokens = sum(m["completion/total_tokens"] for m in steps)
    seconds = sum(m["time/step"] for m in steps)
    return {"segments": segments, "steps": len(steps), "trained_tokens": tokens, "seconds": seconds,
            "trained_tokens_per_s": tokens / seconds, "step_time_s": seconds / len(steps),
            "rollout_s": sum(m["time/rollout"] for m in steps) / len(steps),
            "train_s": sum(m["time/train"] for m in steps) / len(steps),
            "samples_per_step": sum(m["completion/samples"] for m in steps) / len(steps),
            "mean_tokens": tokens / max(sum(m["completion/samples"] for m in steps), 1),
            "truncation_rate": sum(m["completion/truncation_rate"] for m in steps) / len(steps)}


def calibrate(model: str, max_new: int) -> list[dict]:
    """Decode cost per engine iteration at several batch sizes (the quantity segments save on is the time of
    iterations that run with few sequences left): wall time / longest completion, per batch size."""
    import os
    import time

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from rlkit.rollout.base import SamplingSpec
    from rlkit.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(model, max_model_len=max_new + 128, kv_cache_gib=2)
    prompt = list(range(10, 40))
    rows = []
    for batch in (1, 4, 16, 32):
        spec = SamplingSpec(n=batch, temperature=1.0, max_new_tokens=max_new // 4, seed=1)
        engine.generate([prompt], spec)  # warm-up
        t0 = time.perf_counter()
        out = engine.generate([prompt], spec)
        wall = time.perf_counter() - t0
        iters = max(s.num_tokens for s in out)
        rows.append({"batch": batch, "ms_per_iteration": 1000 * wall / iters,
                     "tokens_per_s": sum(s.num_tokens for s in out) / wall})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--max-new", type=int, default=1024)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--segments", default="1,2,4")
    ap.add_argument("--calibrate", action="store_true", help="only measure decode cost per iteration vs batch size")
    args = ap.parse_args()

    from rlkit.models import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="rlkit-seg-"))
    model = str(build_tiny_model(tmp / "model", seed=0))
    if args.calibrate:
        for row in calibrate(model, args.max_new):
            print(json.dumps(row), flush=True)
        return
    results = []
    for rep in range(args.repeats):
        for n in map(int, args.segments.split(",")):
            r = run_once(model, tmp / f"run-{n}-{rep}", n, args)
            results.append(r)
            print(json.dumps(r), flush=True)
    base = [r for r in results if r["segments"] == 1]
    print("\n| segments | step time s | rollout s | train s | samples/step | mean tokens | trained tokens/s | vs 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = base[min(len(base) - 1, results.index(r) // len(args.segments.split(",")))]
        print(f"| {r['segments']} | {r['step_time_s']:.2f} | {r['rollout_s']:.2f} | {r['train_s']:.2f} | "
              f"{r['samples_per_step']:.1f} | {r['mean_tokens']:.0f} | {r['trained_tokens_per_s']:.0f} | "
              f"{r['trained_tokens_per_s'] / ref['trained_tokens_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
