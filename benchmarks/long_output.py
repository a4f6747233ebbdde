"""Long-output training (issue 12): the longest completion that trains under a memory budget, adaptive vs fixed
sequence parallelism on a long-tail batch, and the time per token of SP 2 vs SP 1.

    .venv/bin/python benchmarks/long_output.py memory   [--budget-gib 4] [--layers 2] [--configs ...]
    .venv/bin/python benchmarks/long_output.py adaptive [--samples 32] [--cap 32768] [--budget 4096] [--nproc 4]
    .venv/bin/python benchmarks/long_output.py overhead [--length 8192]

``memory``: one completion of L tokens after a 64-token prompt, forward + backward of the GRPO loss (ppo_clip,
token-mean), no optimizer step, each probe in a fresh process (``sp2``: two, under torchrun); the peak resident
memory (VmHWM) of the process (the larger of the two for sp2) must stay under ``--budget-gib``. The longest L
is found by doubling from ``--start`` and then bisecting to ``--precision``. The model is a random Qwen2 with
Qwen2.5-0.5B's width (hidden 896, MLP 4864, 14 heads, 2 KV heads) and vocabulary (151936, tied embeddings) but
``--layers`` layers. Configurations, each adding to the one before:
  hf       plain transformers: full logits, log-softmax over the vocabulary, no checkpointing
  ckpt     + activation checkpointing (transformers' gradient_checkpointing_enable)
  chunked  + rlkit's LogprobPolicy: packed row, LM head + log-softmax in chunks of 512 scored tokens
  tiled    + tiled MLP (rlkit.kernels.memory; checkpoint offload too when on CUDA: on a CPU it moves nothing)
  sp2      + Ulysses sequence parallelism over 2 processes (per-process memory)

``adaptive``: a small model (hidden 256, 4 layers), a long-tail batch (log-normal lengths as in
benchmarks/packing.py, capped at ``--cap``), one update over ``--nproc`` processes (default 4) with sp_size = nproc
in fixed, adaptive and flex mode, alternating, best of ``--repeats``, after the start-up calibration of the time
model (rlkit.parallel.calibrate, as the trainer does); prints each plan's predicted seconds and lower bound next to
the measured time.

``overhead``: one sample of ``--length`` tokens, forward + backward, time per token on 1 process (sp 1) and on 2
processes sharing it (sp 2), the same small model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
CONFIGS = ("hf", "ckpt", "chunked", "tiled", "sp2")
WIDE = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
            vocab_size=151936, tie_word_embeddings=True)
SMALL = dict(hidden_size=256, intermediate_size=704, num_attention_heads=8, num_key_value_heads=2, vocab_size=4096,
             tie_word_embeddings=False)
PROMPT = 64


def _model(dims: dict, layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(num_hidden_layers=layers, max_position_embeddings=1 << 18, rope_theta=1e6, **dims)
    return Qwen2ForCausalLM(cfg).float()


def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29400 + os.getpid() % 500), str(HERE), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _samples(lengths: list[int], vocab: int, seed: int = 0):
    from rlkit.records import Sample

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, vocab, (PROMPT + n,), generator=gen).tolist()
        out.append(Sample(ids[:PROMPT], ids[PROMPT:], [0.0] * n, "stop", "", i // 8))
    return out


def setup_memory_savers(model, tiled: bool) -> None:
    """rlkit's long-output savers on ``model``: activation checkpointing; ``tiled``: + tiled MLP, and checkpoint
    offload to (pinned) CPU memory when CUDA is present (on a CPU it moves nothing)."""
    from types import SimpleNamespace

    from rlkit.kernels import memory

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tiled:
        offload = torch.cuda.is_available()
        memory.apply(model, SimpleNamespace(parallel=SimpleNamespace(tiled_mlp="always", offload_checkpoints=offload),
                                            model=SimpleNamespace(gradient_checkpointing=True)))


def policy_grpo_step(model, length: int, vocab: int, sp_group=None) -> None:
    """One forward + backward of the GRPO loss (ppo_clip, token-mean) through rlkit's LogprobPolicy (packed row,
    chunked LM head) on one completion of ``length`` tokens after a PROMPT-token prompt, on the model's device."""
    from rlkit.algorithms.losses import LossInputs, aggregation_weights, ppo_clip_loss
    from rlkit.parallel.batch import collate, shard_micro_batch
    from rlkit.trainers.batch import LogprobPolicy

    device = next(model.parameters()).device
    groups = {torch.distributed.get_world_size(sp_group): sp_group} if sp_group is not None else None
    policy = LogprobPolicy(model, sp_groups=groups)
    mb = collate(_samples([length], vocab), pad_id=0)
    if sp_group is not None:
        mb = shard_micro_batch(mb, torch.distributed.get_world_size(sp_group), torch.distributed.get_rank(sp_group))
    mb = mb.to(device)
    lp, _ = policy(mb)
    mask = mb.completion_mask
    loss = ppo_clip_loss(LossInputs(logprobs=lp, old_logprobs=lp.detach(), advantages=torch.ones(1, device=device),
                                    mask=mask, token_weights=aggregation_weights(mask, "token-mean", float(mask.sum()))))
    loss.loss.backward()


def hf_grpo_step(model, length: int, vocab: int) -> None:
    """Plain transformers: full logits and log-softmax over the vocabulary, then the token-mean GRPO surrogate."""
    sample = _samples([length], vocab)[0]
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids], device=next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[:, PROMPT - 1:-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, PROMPT:, None]).squeeze(-1)
    (-(torch.exp(lp - lp.detach())).sum() / length).backward()


def _policy_step(config: str, length: int, layers: int, sp_group=None) -> None:
    """One forward + backward of the GRPO loss on one completion of ``length`` tokens (rlkit configs)."""
    model = _model(WIDE, layers)
    setup_memory_savers(model, tiled=config in ("tiled", "sp2"))
    policy_grpo_step(model, length, WIDE["vocab_size"], sp_group)


def _hf_step(config: str, length: int, layers: int) -> None:
    """Plain transformers: full logits and log-softmax over the vocabulary (``ckpt``: with checkpointing)."""
    model = _model(WIDE, layers)
    model.config._attn_implementation = "sdpa"
    if config == "ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf_grpo_step(model, length, WIDE["vocab_size"])


def probe(config: str, length: int, layers: int) -> dict:
    """Run one configuration at one length in a fresh process; returns its peak memory and time."""
    if config == "sp2":
        proc = _torchrun(2, "_probe", config, str(length), str(layers))
    else:
        proc = subprocess.run([sys.executable, str(HERE), "_probe", config, str(length), str(layers)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr[-500:]}
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return {"ok": True, "peak_gib": max(r["peak_gib"] for r in rows), "seconds": max(r["seconds"] for r in rows)}


def _probe_main(config: str, length: int, layers: int) -> None:
    group = None
    if config == "sp2":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        group = dist.new_group([0, 1])
    t = time.perf_counter()
    if config in ("hf", "ckpt"):
        _hf_step(config, length, layers)
    else:
        _policy_step(config, length, layers, group)
    print(json.dumps({"peak_gib": _peak_gib(), "seconds": time.perf_counter() - t}), flush=True)


def longest(config: str, budget: float, layers: int, precision: float, start: int, max_len: int, log) -> dict:
    """Doubling from ``start``, then bisection: the longest completion whose probe stays under ``budget`` GiB."""
    fits, fails, probes = 0, None, []
    n = start
    while n <= max_len:
        r = probe(config, n, layers)
        probes.append({"length": n, **{k: v for k, v in r.items() if k != "error"}})
        log(config, n, r)
        if r["ok"] and r["peak_gib"] <= budget:
            fits, n = n, n * 2
        else:
            fails = n
            break
    while fails is not None and fails - fits > max(64, precision * fits):
        n = (fits + fails) // 2 // 64 * 64
        r = probe(config, n, layers)
        probes.append({"length": n, **{k: v for k, v in r.items() if k != "error"}})
        log(config, n, r)
        if r["ok"] and r["peak_gib"] <= budget:
            fits = n
        else:
            fails = n
    return {"longest": fits, "first_failing": fails, "probes": probes}


def memory_benchmark(args) -> dict:
    def log(config, n, r):
        print(f"  {config:8s} L={n:6d}: " + (f"{r['peak_gib']:.2f} GiB, {r['seconds']:.1f} s" if r["ok"] else
                                             "failed " + r["error"][-200:]), file=sys.stderr, flush=True)

    base = probe("chunked", 1, args.layers)  # the model, its gradients and the runtime, nearly no activations
    results = {c: longest(c, args.budget_gib, args.layers, args.precision, args.start, args.max_len, log)
               for c in args.configs}
    return {"budget_gib": args.budget_gib, "layers": args.layers, "baseline_peak_gib_at_1_token": base.get("peak_gib"),
            "results": results,
            "ratio_to_hf": {c: r["longest"] / max(results["hf"]["longest"], 1) for c, r in results.items()}
            if "hf" in results else {}}


def _update_main(modes: list[str], lengths: list[int], budget: int, repeats: int) -> None:
    """Under torchrun (P processes, sp_size P): the SP time model calibrated once (rlkit.parallel.calibrate), then
    one update of the long-tail batch per mode and repeat, modes alternating; rank 0 prints, per mode, the best
    measured seconds, the plan's predicted seconds and lower bound, and the degrees the plan used."""
    import dataclasses

    from accelerate import Accelerator

    from rlkit.algorithms.losses import ppo_clip_loss
    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.calibrate import calibrate, describe
    from rlkit.parallel.layout import make_layout
    from rlkit.parallel.micro import MicroBatching, plan_rank
    from rlkit.parallel.plan import attention_ratio
    from rlkit.records import StepBatch
    from rlkit.trainers.batch import LogprobPolicy
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    acc = Accelerator(cpu=True)
    layout = make_layout(acc, acc.num_processes, "flex")  # blocks of every degree; a mode only restricts the plan
    policy = LogprobPolicy(_model(SMALL, 4), sp_groups=layout.groups)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)  # lr 0: every repeat does identical work
    prepared, opt = acc.prepare(policy, opt)
    batch = prepare_tokens(StepBatch([], _samples(lengths, SMALL["vocab_size"]),
                                     advantages=torch.randn(len(lengths), generator=torch.Generator().manual_seed(0))))
    heads, hidden = SMALL["num_attention_heads"], SMALL["hidden_size"]
    shape = dict(layers=4, hidden=hidden, heads=heads, kv_heads=SMALL["num_key_value_heads"], head_dim=hidden // heads,
                 intermediate=SMALL["intermediate_size"], vocab=SMALL["vocab_size"])
    ratio = attention_ratio(**shape)  # as the trainer takes it (rlkit.trainers.run)
    cost = calibrate(prepared, acc, layout, budget=budget, ratio=ratio, layers=4, heads=heads,
                     kv_heads=shape["kv_heads"], head_dim=shape["head_dim"], vocab=shape["vocab"], checkpointing=False)
    out: dict = {"cost_model": cost.to_dict(), "described": describe(cost)}
    for rep in range(repeats + 1):  # repeat 0 warms up and is not counted
        for m in modes:
            mbs = MicroBatching(micro_batch_tokens=budget, cost_b=ratio, layout=dataclasses.replace(layout, mode=m),
                                cost=cost, calibrated=True)
            acc.wait_for_everyone()
            t = time.perf_counter()
            stats = update_policy(
                prepared, opt, None, acc, batch,
                UpdateSettings(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(), pad_id=0, temperature=1.0, batching=mbs, max_new_tokens=max(lengths), max_grad_norm=0.0),
                seed=0)
            acc.wait_for_everyone()
            seconds = time.perf_counter() - t
            row = out.setdefault(m, {"seconds": float("inf")})
            if rep:
                row["seconds"] = min(row["seconds"], seconds)
            row["predicted_s"], row["bound_s"] = stats.predicted_s, stats.bound_s
            micros = plan_rank([[i] for i in range(len(lengths))], batch.samples, mbs, acc)
            row["rounds"] = len(micros)
            row["degrees_rank0"] = sorted(m_.degree for m_ in micros if m_.idx)
    if acc.is_main_process:
        print(json.dumps(out), flush=True)


def adaptive_benchmark(args) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from packing import lognormal_lengths

    lengths = lognormal_lengths(args.samples, args.median, args.sigma, args.cap, args.seed)
    totals = [PROMPT + n for n in lengths]
    proc = _torchrun(args.nproc, "_update", json.dumps(["fixed", "adaptive", "flex"]), json.dumps(lengths),
                     str(args.budget), str(args.repeats))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    got = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
    for m in ("fixed", "adaptive", "flex"):
        got[m]["speedup_over_fixed"] = got["fixed"]["seconds"] / got[m]["seconds"]
        got[m]["predicted_speedup"] = got["fixed"]["predicted_s"] / got[m]["predicted_s"]
        got[m]["prediction_error"] = got[m]["predicted_s"] / got[m]["seconds"] - 1
    return {"lengths": {"n": len(lengths), "max": max(totals), "mean": sum(totals) / len(totals),
                        "over_budget": sum(t > args.budget for t in totals)},
            "processes": args.nproc, "budget_tokens_per_rank": args.budget, **got}


def _overhead_main(length: int, repeats: int) -> None:
    """Under torchrun (1 or 2 processes): forward + backward of one ``length``-token sample, best of repeats."""
    from accelerate import Accelerator

    from rlkit.parallel.batch import collate, shard_micro_batch
    from rlkit.parallel.layout import make_layout
    from rlkit.trainers.batch import LogprobPolicy

    acc = Accelerator(cpu=True)
    layout = make_layout(acc, acc.num_processes)
    policy = LogprobPolicy(_model(SMALL, 4), sp_groups=layout.groups)
    mb = collate(_samples([length], SMALL["vocab_size"]), pad_id=0)
    if layout.sp > 1:
        mb = shard_micro_batch(mb, layout.sp, layout.sp_rank)
    best = float("inf")
    for rep in range(repeats + 1):
        acc.wait_for_everyone()
        t = time.perf_counter()
        lp, _ = policy(mb)
        lp.sum().backward()
        acc.wait_for_everyone()
        if rep:
            best = min(best, time.perf_counter() - t)
    if acc.is_main_process:
        print(json.dumps({"seconds": best}), flush=True)


def overhead_benchmark(args) -> dict:
    out = {}
    for sp in (1, 2):
        proc = _torchrun(sp, "_overhead", str(args.length), str(args.repeats))
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        seconds = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])["seconds"]
        out[f"sp{sp}"] = {"seconds": seconds, "ms_per_token": 1000 * seconds / (PROMPT + args.length)}
    out["sp2_over_sp1_time"] = out["sp2"]["seconds"] / out["sp1"]["seconds"]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # child processes
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_probe":
            _probe_main(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "_update":
            _update_main(json.loads(rest[0]), json.loads(rest[1]), int(rest[2]), int(rest[3]))
        else:
            _overhead_main(int(rest[0]), int(rest[1]))
        sys.stdout.flush()
        os._exit(0)  # gloo teardown can abort a finished process (see tests/distributed)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["memory", "adaptive", "overhead"])
    ap.add_argument("--budget-gib", type=float, default=4.0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--precision", type=float, default=0.1, help="bisect until the interval is this fraction")
    ap.add_argument("--start", type=int, default=1024, help="first length probed (doubled until a probe fails)")
    ap.add_argument("--max-len", type=int, default=1 << 17)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--median", type=float, default=300)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--cap", type=int, default=32768)
    ap.add_argument("--budget", type=int, default=4096, help="tokens per rank of a micro-batch (adaptive)")
    ap.add_argument("--nproc", type=int, default=4, help="processes of the adaptive part (one SP group)")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = {"memory": memory_benchmark, "adaptive": adaptive_benchmark, "overhead": overhead_benchmark}[args.part]
    result = run(args)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                         else None}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
