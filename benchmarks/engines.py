"""DDP vs DeepSpeed ZeRO-2 vs ZeRO-3 vs FSDP2 on the same work (issue 22): step time and peak memory per process.

    .venv/bin/python benchmarks/engines.py [--engines ddp,zero2,zero3,fsdp2] [--steps 4] [--nproc 2]

Each engine trains the embedded SmolLM2-135M-Instruct (real weights, fp32) for ``--steps`` steps on 2 processes
(gloo on a CPU), launched as users launch it: ``torchrun`` for DDP, ``accelerate launch --config_file
examples/accelerate/<engine>.yaml`` for the others. Same config for all: 8 prompts x 4 samples a step (MAWPS),
the hf rollout engine (so the process memory is the trainer's, not a vLLM engine's), 48 new tokens, packed
micro-batches of 2,048 tokens, AdamW, no evaluation, no checkpoints. Reported per engine: the median of
``time/step``, ``time/train`` and ``time/rollout`` over the steps after the first (which pays for start-up
work), the peak resident memory per process (``memory/peak_rss_gib``, each process's high-water mark, averaged
over the processes, max over steps), the fraction of parameter elements each process holds (run.json), and the
last step's gradient norm (the engines train the same batches: it should agree to several digits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"zero2": "zero2.yaml", "zero3": "zero3.yaml", "fsdp2": "fsdp2.yaml"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(engine: str, out: Path, steps: int, nproc: int) -> float:
    args = ["-m", "rlkit.cli", "train", f"--output_dir={out}", "--rollout.engine=hf", "--rollout.prompts_per_step=8",
            "--rollout.group_size=4", "--rollout.max_new_tokens=48", "--optim.micro_batch_tokens=2048",
            "--optim.lr=1e-6", f"--train.steps={steps}", "--eval.before=false", "--eval.after=false",
            "--checkpoint.save_final=false", "--logging.progress=false"]
    if engine == "ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(_port()), *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / CONFIGS[engine]), "--num_processes", str(nproc),
               "--main_process_port", str(_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def summarize(engine: str, out: Path, wall: float) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]
    dist = json.loads((out / "run.json").read_text())["distributed"]
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"engine": engine, "type": dist["type"], "zero_stage": dist.get("zero_stage"),
            "param_share": dist["param_share"], "step_s": med("time/step"), "train_s": med("time/train"),
            "rollout_s": med("time/rollout"), "peak_rss_gib": max(r["memory/peak_rss_gib"] for r in rows),
            "grad_norm_last": rows[-1]["optim/grad_norm"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="ddp,zero2,zero3,fsdp2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in a.engines.split(","):
            out = Path(tmp) / engine
            wall = launch(engine, out, a.steps, a.nproc)
            results.append(summarize(engine, out, wall))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {a.nproc} processes, steps 2..{a.steps} (median)\n")
    print("| engine | params held per process | step s | train s | rollout s | peak RSS per process GiB | last grad norm |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {100 * r['param_share']:.0f}% | {r['step_s']:.2f} | {r['train_s']:.2f} | "
              f"{r['rollout_s']:.2f} | {r['peak_rss_gib']:.2f} | {r['grad_norm_last']:.4f} |")


if __name__ == "__main__":
    main()
