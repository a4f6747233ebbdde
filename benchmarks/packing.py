"""Training forward+backward throughput, padded vs packed micro-batches (issue 4).

Same model, same samples, same loss, one process; the two modes alternate (padded, packed, padded,
packed, ...) so that machine noise hits both. Workload: completion lengths drawn log-normal with median
``--median`` and sigma ``--sigma``, capped at ``--cap``; prompts of 32-96 tokens; random token ids.
Padded = rlkit's right-padded micro-batches of ``--rows`` sequences in rollout order, each padded to its
longest sequence (TRL pads the same way, to the longest of the batch). Packed = rlkit's default: one
row per micro-batch under ``--budget`` tokens, varlen attention, no padding.

Reported: real tokens / s of each mode, the padding ratio (tokens computed when padded / real tokens:
the physical limit of the speed-up) and the speed-up. Target: speed-up >= 0.8 x padding ratio.

    .venv/bin/python benchmarks/packing.py [--samples 32] [--hidden 256] [--layers 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import tempfile
import time

import torch


def lognormal_lengths(n: int, median: float, sigma: float, cap: int, seed: int) -> list[int]:
    r = random.Random(seed)
    return [max(1, min(cap, int(round(math.exp(math.log(median) + sigma * r.gauss(0, 1)))))) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--median", type=float, default=300)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--cap", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=4, help="sequences per padded micro-batch")
    ap.add_argument("--budget", type=int, default=8192, help="tokens per packed micro-batch")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from accelerate import Accelerator

    from rlkit.algorithms.losses import ppo_clip_loss
    from rlkit.config import AlgorithmConfig
    from rlkit.models import build_tiny_model, load_policy
    from rlkit.parallel.micro import MicroBatching, plan_rank
    from rlkit.records import StepBatch
    from rlkit.rollout.base import Sample
    from rlkit.trainers.batch import LogprobPolicy
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    acc = Accelerator(cpu=args.device == "cpu")
    tmp = tempfile.mkdtemp(prefix="rlkit-bench-")
    path = build_tiny_model(f"{tmp}/model", hidden_size=args.hidden, layers=args.layers, heads=args.hidden // 32,
                            kv_heads=max(1, args.hidden // 64))
    policy = LogprobPolicy(load_policy(str(path), torch.float32)).to(acc.device)
    vocab = policy.model.config.vocab_size
    r = random.Random(args.seed)
    lengths = lognormal_lengths(args.samples, args.median, args.sigma, args.cap, args.seed)
    samples = [Sample([r.randrange(3, vocab) for _ in range(r.randint(32, 96))], [r.randrange(3, vocab) for _ in range(n)],
                      [0.0] * n, "stop", "", i // 8) for i, n in enumerate(lengths)]
    batch = prepare_tokens(StepBatch([], samples, advantages=torch.randn(len(samples),
                                                                         generator=torch.Generator().manual_seed(0))))
    real = sum(len(s.prompt_ids) + s.num_tokens for s in samples)
    modes = {"padded": MicroBatching(packing=False, micro_batch_size=args.rows),
             "packed": MicroBatching(packing=True, micro_batch_tokens=args.budget, cost_b=1 / (6 * args.hidden))}
    padded_tokens = sum(len(mb.idx) * max(len(samples[i].prompt_ids) + samples[i].num_tokens for i in mb.idx)
                        for mb in plan_rank([[i] for i in range(len(samples))], samples, modes["padded"], acc))
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)  # lr 0: every repeat does identical work
    times: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(args.repeats + 1):  # repeat 0 warms up both modes and is not counted
        for name, mbs in modes.items():
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            update_policy(
                policy, opt, None, acc, batch,
                UpdateSettings(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(), pad_id=0, temperature=1.0, batching=mbs, max_new_tokens=args.cap, max_grad_norm=0.0),
                seed=0)
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
    best = {m: min(t) for m, t in times.items()}
    result = {
        "device": torch.cuda.get_device_name() if acc.device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "model": f"random Qwen2 hidden {args.hidden}, {args.layers} layers",
        "samples": len(samples), "lengths": {"median": sorted(lengths)[len(lengths) // 2], "max": max(lengths),
                                             "mean": sum(lengths) / len(lengths)},
        "real_tokens": real, "padded_tokens": padded_tokens, "padding_ratio": padded_tokens / real,
        "tokens_per_s": {m: real / t for m, t in best.items()}, "times_s": times,
        "speedup": best["padded"] / best["packed"],
    }
    result["speedup_over_ratio"] = result["speedup"] / result["padding_ratio"]
    print(json.dumps(result, indent=2))
    print(f"padding ratio {result['padding_ratio']:.2f}  speed-up {result['speedup']:.2f}  "
          f"({result['speedup_over_ratio']:.2f} x ratio; target >= 0.8)")


if __name__ == "__main__":
    main()
