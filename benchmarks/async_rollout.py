"""Step time of synchronous vs asynchronous (``rollout.async_steps=1``) rollouts over one `vllm serve`, same work.

One run: starts `rlkit serve MODEL` once, trains ``--steps`` steps synchronously and then the same steps with
``async_steps=1`` against it (same seed, prompts, batch sizes), and reports per mode the mean step time and each
phase (generation, the wait for a batch, reward, training, weight sync), leaving out the first ``--warmup``
steps. It also reports what the measured phases predict: synchronous = g + t + s, asynchronous = max(g, t) + s,
with g = generation, t = the rest of the step (reward, scoring, update, logging), s = weight sync. On one machine
with few cores the server and the trainer compete for the same cores, so the asynchronous run falls short of
its prediction; with the server on its own GPUs (the deployment async rollouts are for) they do not compete.

    .venv/bin/python benchmarks/async_rollout.py [--model smollm2-135m-instruct] [--steps 6] [--port 8123]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _start_server(model: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlkit.cli", "serve", model, "--host", "127.0.0.1", "--port",
                             str(port), "--max-model-len", "1024"], stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if "ready at" in line:
            return proc
    raise SystemExit(f"rlkit serve exited: see {log}")


def _run(args, out: Path, url: str, async_steps: int) -> list[dict]:
    cmd = [sys.executable, "-m", "rlkit.cli", "train", f"--model.name_or_path={args.model}", f"--output_dir={out}",
           "--overwrite", "--rollout.engine=vllm_server", f"--rollout.server_urls=[{url}]",
           f"--rollout.async_steps={async_steps}", f"--train.steps={args.steps}",
           f"--rollout.prompts_per_step={args.prompts}", f"--rollout.group_size={args.group}",
           f"--rollout.max_new_tokens={args.max_new_tokens}", "--eval.before=false",
           "--eval.after=false", "--checkpoint.save_final=false", "--logging.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def _phases(rows: list[dict]) -> dict:
    def mean(key, default=0.0):
        vals = [r.get(key, default) for r in rows]
        return sum(vals) / len(vals)

    step, sync = mean("time/step"), mean("time/weight_sync")
    # generation time: measured on the generating thread (async) or the rollout phase itself (sync)
    gen = mean("async/generate_s") if "async/generate_s" in rows[0] else mean("time/rollout")
    wait = mean("time/rollout")
    rest = step - wait - sync  # reward, scoring, update, metrics: everything the trainer does itself
    return {"step": step, "generate": gen, "wait": wait, "rest": rest, "sync": sync,
            "reward": mean("time/reward"), "train": mean("time/train"),
            "staleness": mean("async/staleness_max"), "tokens": mean("completion/mean_tokens")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlkit-async-bench-"))
    t0 = time.perf_counter()
    server = _start_server(args.model, args.port, work / "server.log")
    print(f"server up in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    url = f"http://127.0.0.1:{args.port}"
    try:
        results = {k: _phases(_run(args, work / f"run-{k}", url, k)[args.warmup:]) for k in (0, 1)}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    s, a = results[0], results[1]
    g, t, w = s["generate"], s["rest"], s["sync"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}; "
          f"{args.prompts} prompts x {args.group} samples, max {args.max_new_tokens} new tokens; "
          f"mean of steps {args.warmup + 1}-{args.steps}\n")
    print("| mode | step s | generation s | wait for batch s | rest of step s (reward + train + ...) | weight sync s |"
          " staleness | mean tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("sync", s), ("async_steps=1", a)):
        print(f"| {name} | {r['step']:.2f} | {r['generate']:.2f} | {r['wait']:.2f} | {r['rest']:.2f} | "
              f"{r['sync']:.3f} | {r['staleness']:.1f} | {r['tokens']:.1f} |")
    print(f"\nmeasured speed-up: {s['step'] / a['step']:.2f}x")
    print(f"predicted from the sync phases: sync g + t + s = {g + t + w:.2f} s, async max(g, t) + s = "
          f"{max(g, t) + w:.2f} s ({(g + t + w) / (max(g, t) + w):.2f}x); async phases: generation "
          f"{a['generate']:.2f} s vs {g:.2f} s sync, rest {a['rest']:.2f} s vs {t:.2f} s sync (contention)")
    print(json.dumps({"sync": s, "async": a}), file=sys.stderr)


if __name__ == "__main__":
    main()
