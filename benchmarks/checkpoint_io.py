"""Checkpoint write and restore time: rlkit's format (safetensors + JSON, every file fsynced before the
rename, issue 11) against accelerate's ``save_state`` / ``load_state`` (pickled scheduler and random states, no
fsync), the format before issue 11, on the same model and optimizer state in the same process.

    .venv/bin/python benchmarks/checkpoint_io.py [--model smollm2-135m-instruct] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from accelerate import Accelerator
    from transformers import get_scheduler

    from rlkit.models import load_policy, load_tokenizer, resolve_model_path
    from rlkit.trainers.batch import LogprobPolicy
    from rlkit.trainers.checkpoint import save_checkpoint
    from rlkit.trainers.state_io import load_training_state

    path = resolve_model_path(args.model)
    acc = Accelerator(cpu=True)
    model = load_policy(path, torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=0, num_training_steps=10)
    prepared, opt = acc.prepare(LogprobPolicy(model), opt)
    ids = torch.randint(0, 1000, (1, 64))
    prepared.model(input_ids=ids).logits.float().mean().backward()  # populate AdamW's state
    opt.step()
    sched.step()
    acc.register_for_checkpointing(sched)
    tok = load_tokenizer(path)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    times = {k: [] for k in ("rlkit save", "rlkit restore", "accelerate save", "accelerate restore")}
    size = {}
    try:
        for r in range(args.repeats):
            t = time.perf_counter()
            final = save_checkpoint(root / "rlkit", r + 1, acc, prepared, tok, opt, sched, {"step": r + 1}, keep_last=1)
            times["rlkit save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            load_training_state(final / "trainer", acc, prepared, opt, sched)
            times["rlkit restore"].append(time.perf_counter() - t)
            old = root / "accelerate" / f"step_{r}"
            t = time.perf_counter()
            acc.save_state(str(old / "accelerate"))
            acc.unwrap_model(prepared).model.save_pretrained(old / "policy")
            tok.save_pretrained(old / "policy")
            times["accelerate save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            acc.load_state(str(old / "accelerate"))
            times["accelerate restore"].append(time.perf_counter() - t)
            size = {"rlkit": sum(p.stat().st_size for p in final.rglob("*") if p.is_file()),
                    "accelerate": sum(p.stat().st_size for p in old.rglob("*") if p.is_file())}
            shutil.rmtree(old)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, fp32 + AdamW; "
          f"{platform.machine()}, {os.cpu_count()} cores; median of {args.repeats}")
    print(f"checkpoint size: rlkit {size['rlkit'] / 2**30:.2f} GiB, accelerate {size['accelerate'] / 2**30:.2f} GiB")
    print("| | seconds (median) |")
    print("|---|---|")
    for k, v in times.items():
        print(f"| {k} | {sorted(v)[len(v) // 2]:.2f} |")


if __name__ == "__main__":
    main()
