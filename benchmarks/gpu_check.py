"""GPU check (issue 24 item 6): rlkit's hot path on one CUDA device, in about 8 minutes, one report.

    make gpu-check                  # = PYTHONPATH=. python3 benchmarks/gpu_check.py --out ${OUT:-gpu-report}
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-smoke   # plumbing only, tiny shapes, CPU

Written for the lent H200: torch, transformers, accelerate and peft installed (plus pytest for the first part),
no network, no vLLM, no flash-attn, no venv. Writes ``report.md`` and ``results.json`` (every figure) into
``--out``, rewritten after each part so a killed run still leaves what it measured. Each part runs in its own
try/except: a failure is written into the report and the next part runs. Progress lines carry timestamps.

Parts, in this order (the memory part runs last, for ``--memory-budget-s`` and never past ``--deadline-s``):
  tests     ``pytest -m gpu tests/gpu`` in a subprocess (timeout ``--pytest-timeout``): counts and the output tail.
  logprobs  the LM-head logprobs + entropy of 32k tokens over Qwen2.5's vocabulary (151936, hidden 1536) in
            bf16, forward + backward: rlkit's chunked kernel vs the full-logits reference
            (rlkit.kernels.logprobs): peak extra memory, time, max differences.
  packing   training forward + backward on a Qwen2.5-1.5B-shaped random model (bf16, no checkpointing) over 32
            samples of long-tail length (log-normal, median 1k, sigma 1, cap 8k, 64-token prompts), micro-batches
            of at most ``--budget`` tokens: packed rows (rlkit's planner, the fused varlen attention), the same
            packed rows with the per-sequence SDPA loop forced, and right-padded rows (greedy in rollout order,
            rows x longest <= the same budget, pads counted). Tokens/s of real tokens, best of
            ``--repeats`` after one warm-up, and MFU = 6 N T / time / peak with N all parameters and
            T real tokens; a second MFU adds causal attention, 6 x layers x hidden x sum(L_i^2) (fwd + bwd).
            Peak: --peak-tflops, 989 (H100/H200 SXM bf16 dense, no sparsity).
  memory    the longest single completion (after a 64-token prompt) whose forward + backward of the GRPO
            token-mean loss stays under ``--budget-gib`` of torch.cuda.max_memory_allocated, for random bf16
            models of Qwen2.5-1.5B's and Qwen2.5-7B's real shapes (28 layers each), lengths doubling from 4k to
            128k, in three configurations, each adding to the one before (benchmarks/long_output.py's steps):
              hf             plain transformers (SDPA): full logits, log-softmax over the vocabulary, no checkpointing
              ckpt_chunked   rlkit's LogprobPolicy: packed row (fused varlen attention), chunked LM head, checkpointing
              tiled_offload  + tiled MLP and checkpointed layer inputs offloaded to pinned CPU memory
            A configuration stops at its first length over budget or out of memory, and before a length whose
            predicted time (2.5 x the previous one) would pass the model's share of the part's time (40% for the
            1.5B, the rest for the 7B); the report says which limit ended each configuration.

Expected time on one H200: tests about 1 minute, logprobs about 15 s, packing about 30 s, memory 3.5 minutes at
most (model builds included): about 6 minutes, under 8 whatever happens (``--deadline-s``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # sibling benchmarks (long_output, packing)
sys.path.insert(0, str(ROOT))  # rlkit without an install

import long_output  # noqa: E402
from packing import lognormal_lengths  # noqa: E402

PROMPT = long_output.PROMPT
SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
SMOKE_SHAPES = {  # --cpu-smoke: the same code on toy widths
    "tiny-tied": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "tiny-untied": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
                        num_key_value_heads=2, vocab_size=640, tie_word_embeddings=False),
}
CONFIGS = ("hf", "ckpt_chunked", "tiled_offload")
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _gib(n: float) -> float:
    return n / 2**30


def build_model(dims: dict, device, dtype=torch.bfloat16):
    """A random Qwen2 of these dimensions, created on ``device`` in ``dtype`` directly (no CPU copy)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(max_position_embeddings=1 << 18, rope_theta=1e6, **dims)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


# ---------------------------------------------------------------------------------------------------------- tests

def part_tests(args) -> dict:
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("pytest is not installed here (carry its wheels: pytest, pluggy, iniconfig, pygments)")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.pytest_timeout)
        out, rc, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as e:
        out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        rc, timed_out = None, True
    counts = {}
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)",
                              summary[-1] if summary else ""):
        counts["errors" if what.startswith("error") else what] = int(n)
    return {"command": " ".join(cmd[1:]), "returncode": rc, "timed_out": timed_out,
            "seconds": time.monotonic() - t, "counts": counts, "tail": out[-4000:]}


# ------------------------------------------------------------------------------------------------------- logprobs

def part_logprobs(args, device) -> dict:
    from rlkit.kernels.logprobs import chunked_logprobs, reference_logprobs

    T, V, H = (1024, 4096, 64) if args.cpu_smoke else (32768, 151936, 1536)
    chunk = 512
    methods = {"reference": reference_logprobs, "chunked": lambda *a: chunked_logprobs(*a, chunk=chunk)}

    def inputs(t):
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(t, H, device=device, generator=g).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(V, H, device=device, generator=g) * 0.02).to(torch.bfloat16).requires_grad_()
        return h, w, torch.randint(0, V, (t,), device=device, generator=g)

    def run(name, h, w, tgt):
        _sync(device)
        _free()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        lp, ent = methods[name](h, w, None, tgt, 1.0)
        gh, gw = torch.autograd.grad(lp.sum() + 0.5 * ent.sum(), (h, w))
        _sync(device)
        secs = time.perf_counter() - t0
        peak = _gib(torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else float("nan")
        return {"seconds": secs, "peak_extra_gib": peak}, [x.detach().float() for x in (lp, ent, gh, gw)]

    small = inputs(256)
    for name in methods:  # warm-up: cuBLAS handles, allocator
        run(name, *small)
    h, w, tgt = inputs(T)
    out = {"tokens": T, "vocab": V, "hidden": H, "dtype": "bfloat16", "chunk": chunk,
           "logits_fp32_gib": _gib(T * V * 4), "methods": {}}
    values = {}
    for name in ("chunked", "reference"):
        try:
            out["methods"][name], values[name] = run(name, h, w, tgt)
            log(f"  logprobs {name}: {out['methods'][name]}")
        except torch.cuda.OutOfMemoryError:
            out["methods"][name] = {"error": "out of memory"}
            log(f"  logprobs {name}: out of memory")
        _free()
    if "reference" not in values:  # compare on a shorter slice instead
        t = 8192
        out["compared_on_tokens"] = t
        _, values["reference"] = run("reference", h[:t].detach().requires_grad_(), w, tgt[:t])
        _, values["chunked"] = run("chunked", h[:t].detach().requires_grad_(), w, tgt[:t])
    names = ("logprob", "entropy", "grad_hidden", "grad_weight")
    out["max_abs_diff"] = {n: (a - b).abs().max().item() for n, a, b in zip(names, values["chunked"],
                                                                          values["reference"])}
    out["max_abs_reference"] = {n: b.abs().max().item() for n, b in zip(names, values["reference"])}
    ref, chk = out["methods"].get("reference", {}), out["methods"]["chunked"]
    if "peak_extra_gib" in ref and ref["peak_extra_gib"] == ref["peak_extra_gib"]:
        out["memory_ratio_chunked_over_reference"] = chk["peak_extra_gib"] / ref["peak_extra_gib"]
        out["time_ratio_chunked_over_reference"] = chk["seconds"] / ref["seconds"]
    return out


# -------------------------------------------------------------------------------------------------------- packing

def padded_plan(lengths: list[int], budget: int) -> list[list[int]]:
    """Right-padded micro-batches in rollout order: add samples while rows x longest stays within ``budget``."""
    plan, cur, longest = [], [], 0
    for i, n in enumerate(lengths):
        if cur and (len(cur) + 1) * max(longest, n) > budget:
            plan.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    return plan + ([cur] if cur else [])


def part_packing(args, device, shapes) -> dict:
    from rlkit.algorithms.losses import LossInputs, aggregation_weights, ppo_clip_loss
    from rlkit.kernels import attention
    from rlkit.kernels.packing import plan_micro_batches
    from rlkit.parallel.batch import collate
    from rlkit.trainers.batch import LogprobPolicy

    name, dims = next(iter(shapes.items()))
    if args.cpu_smoke:
        n, median, cap, budget = 8, 64, 256, 512
    else:
        n, median, cap, budget = args.samples, args.median, args.cap, args.budget
    model = build_model(dims, device)
    params = n_params(model)
    policy = LogprobPolicy(model)
    lengths = lognormal_lengths(n, median, 1.0, cap, args.seed)
    samples = long_output._samples(lengths, dims["vocab_size"], args.seed)
    totals = [PROMPT + x for x in lengths]
    real = sum(totals)
    plans = {"packed": plan_micro_batches(totals, budget), "padded": padded_plan(totals, budget)}
    modes = {"packed": ("packed", True, None), "packed_sdpa_loop": ("packed", True, "sdpa_loop"),
             "padded": ("padded", False, None)}
    batches = {p: [collate([samples[i] for i in mb], 0, packed=p == "packed").to(device) for mb in plan]
               for p, plan in plans.items()}
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(args.seed)).to(device)
    denominator = float(sum(lengths))  # token-mean over the whole batch

    def step(mode):
        plan_name, _, backend = modes[mode]
        before = attention.calls.copy()
        with attention.use_backend(backend):
            for idx, mb in zip(plans[plan_name], batches[plan_name]):
                lp, _ = policy(mb)
                mask = mb.completion_mask
                loss = ppo_clip_loss(LossInputs(logprobs=lp, old_logprobs=lp.detach(), advantages=advantages[idx],
                                                mask=mask,
                                                token_weights=aggregation_weights(mask, "token-mean", denominator)))
                loss.loss.backward()
        _sync(device)
        model.zero_grad(set_to_none=True)
        return dict(attention.calls - before)

    times = {m: [] for m in modes}
    backends = {}
    for rep in range(args.repeats + 1):  # repetition 0 warms every mode up and is not counted
        for mode in modes:
            _sync(device)
            t0 = time.perf_counter()
            backends[mode] = step(mode)
            if rep:
                times[mode].append(time.perf_counter() - t0)
        log(f"  packing repetition {rep}: " + ", ".join(f"{m} {t[-1]:.2f}s" for m, t in times.items() if t))
    layers, hidden = dims["num_hidden_layers"], dims["hidden_size"]
    model_flops = 6 * params * real
    attn_flops = 6 * layers * hidden * sum(x * x for x in totals)
    peak = args.peak_tflops * 1e12
    result = {"model": name, "params": params, "samples": n, "real_tokens": real, "budget_tokens": budget,
              "lengths": {"median": sorted(lengths)[n // 2], "mean": sum(lengths) / n, "max": max(lengths),
                          "min": min(lengths)},
              "peak_tflops": args.peak_tflops, "modes": {}}
    for mode, (plan_name, packed, _) in modes.items():
        best = min(times[mode])
        computed = (real if packed else
                    sum(len(mb) * max(totals[i] for i in mb) for mb in plans[plan_name]))
        result["modes"][mode] = {
            "micro_batches": len(plans[plan_name]), "tokens_computed": computed, "padding_ratio": computed / real,
            "seconds_best": best, "seconds_all": times[mode], "tokens_per_s": real / best,
            "mfu_6N": model_flops / best / peak, "mfu_with_attention": (model_flops + attn_flops) / best / peak,
            "attention_calls": backends[mode]}
    m = result["modes"]
    result["speedup_packed_over_padded"] = m["padded"]["seconds_best"] / m["packed"]["seconds_best"]
    result["speedup_varlen_over_sdpa_loop"] = m["packed_sdpa_loop"]["seconds_best"] / m["packed"]["seconds_best"]
    result["packed_backend"] = attention.packed_backend(
        device, torch.bfloat16, dims["num_attention_heads"], dims["num_key_value_heads"],
        dims["hidden_size"] // dims["num_attention_heads"])
    return result  # the model and batches go with this frame; main frees the cache


# --------------------------------------------------------------------------------------------------------- memory

def _probe(model, config: str, length: int, vocab: int, device) -> dict:
    """One forward + backward at ``length``; peak allocated GiB (CUDA), seconds, or the error."""
    _free()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    row = {"length": length}
    try:
        if config == "hf":
            long_output.hf_grpo_step(model, length, vocab)
        else:
            long_output.policy_grpo_step(model, length, vocab)
        _sync(device)
        row["ok"] = True
    except torch.cuda.OutOfMemoryError:
        row.update(ok=False, error="out of memory")
    except Exception as e:  # noqa: BLE001  (a host-memory or kernel failure is a result too)
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
    row["seconds"] = time.perf_counter() - t0
    row["peak_gib"] = _gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    model.zero_grad(set_to_none=True)
    _free()
    return row


def part_memory(args, device, shapes, results) -> dict:
    from rlkit.kernels import attention

    lengths = [64, 128, 256] if args.cpu_smoke else [4096 * 2**i for i in range(6)]  # 4k .. 128k
    out = {"budget_gib": args.budget_gib, "prompt_tokens": PROMPT, "lengths_tried_from": lengths, "models": {}}
    results["memory"] = out
    names = list(shapes)
    shares = {names[0]: 0.4, names[-1]: 0.6} if len(names) > 1 else {names[0]: 1.0}
    end = min(T0 + args.deadline_s, time.monotonic() + args.memory_budget_s)
    for name in names:
        dims = shapes[name]
        left = end - time.monotonic()
        # the first model gets its share of the time left; the last one everything that remains
        deadline = time.monotonic() + (left * shares[name] if name != names[-1] else left)
        entry = {"dims": dims, "configs": {}}
        out["models"][name] = entry
        try:
            _free()
            model = build_model(dims, device)
            entry["params"] = n_params(model)
            entry["weights_gib"] = _gib(sum(p.numel() * p.element_size() for p in model.parameters()))
            log(f"  {name}: {entry['params'] / 1e9:.2f}B parameters, {entry['weights_gib']:.1f} GiB of weights")
            for config in CONFIGS:
                if config != "hf":
                    long_output.setup_memory_savers(model, tiled=config == "tiled_offload")
                rows, last = [], None
                calls_before = attention.calls.copy()
                for length in lengths:
                    if time.monotonic() > deadline or (last and time.monotonic() + 2.5 * last > deadline):
                        rows.append({"length": length, "skipped": "time budget"})
                        log(f"  {name} {config} L={length}: skipped (time budget)")
                        break
                    row = _probe(model, config, length, dims["vocab_size"], device)
                    rows.append(row)
                    peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f} GiB"
                    log(f"  {name} {config} L={length}: {peak}, {row['seconds']:.1f}s"
                        + ("" if row["ok"] else f", {row['error']}"))
                    over = row["peak_gib"] is not None and row["peak_gib"] > args.budget_gib
                    if not row["ok"] or over:
                        break
                    last = row["seconds"]
                fit = [r["length"] for r in rows if r.get("ok") and (r["peak_gib"] or 0) <= args.budget_gib]
                final = rows[-1] if rows else {}
                if final.get("skipped"):
                    limit = "time budget"
                elif not final.get("ok", True) or (final.get("peak_gib") or 0) > args.budget_gib:
                    limit = "memory" if final.get("error", "out of memory") == "out of memory" else "error"
                else:
                    limit = "longest length tried"
                entry["configs"][config] = {"probes": rows, "longest_fit": max(fit) if fit else 0, "limited_by": limit,
                                            "attention_calls": dict(attention.calls - calls_before)}
                write_report(args, results)
            del model
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-2000:]
            log(f"  {name}: FAILED {entry['error']}")
        _free()
        write_report(args, results)
    return out


# --------------------------------------------------------------------------------------------------------- report

def environment(device) -> dict:
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    from rlkit.kernels import attention

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "packages": {p: version(p) for p in ("transformers", "accelerate", "peft", "pytest", "flash-attn",
                                                  "vllm", "deepspeed", "trl")},
           "torch_varlen_attn_params": sorted(attention._torch_varlen()[1]) if attention._torch_varlen() else None}
    if device.type == "cuda":
        env["gpu_memory_gib"] = _gib(torch.cuda.get_device_properties(device).total_memory)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


def _f(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def render(results: dict) -> str:
    lines = ["# rlkit GPU check", ""]
    env = results.get("environment", {})
    lines += [f"- device: {env.get('device')} ({_f(env.get('gpu_memory_gib'), 0)} GiB, sm {env.get('capability')}); "
              f"torch {env.get('torch')} (CUDA {env.get('cuda')}), python {env.get('python')}",
              "- packages: " + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v),
              f"- torch varlen_attn parameters: {env.get('torch_varlen_attn_params')}",
              f"- mode: {'CPU smoke (toy shapes, figures meaningless)' if results.get('cpu_smoke') else 'full'}; "
              f"total {_f(results.get('seconds_total'), 0)} s", ""]
    for part, secs in results.get("part_seconds", {}).items():
        lines.append(f"- part {part}: {secs:.0f} s")
    lines.append("")
    for part, err in results.get("errors", {}).items():
        lines += [f"**part {part} FAILED**: `{err['error']}`", "", "```", err["traceback"].rstrip(), "```", ""]

    t = results.get("tests")
    if t:
        lines += ["## pytest -m gpu tests/gpu", "",
                  f"counts {t['counts']}, return code {t['returncode']}, {t['seconds']:.0f} s"
                  + (", TIMED OUT" if t["timed_out"] else ""), "", "```", t["tail"][-2500:].rstrip(), "```", ""]
    lp = results.get("logprobs")
    if lp:
        lines += [f"## Chunked logprobs: {lp['tokens']} tokens x vocab {lp['vocab']}, hidden {lp['hidden']}, bf16, "
                  "forward + backward", "",
                  f"Full fp32 logits alone: {lp['logits_fp32_gib']:.1f} GiB. Chunk {lp['chunk']}.", "",
                  "| method | peak extra GiB | seconds |", "|---|---|---|"]
        for m, r in lp["methods"].items():
            lines.append(f"| {m} | {_f(r.get('peak_extra_gib'))} | {_f(r.get('seconds'), 3)} |"
                         if "error" not in r else f"| {m} | {r['error']} | |")
        lines += ["", "max |chunked - reference| (max |reference|): " + ", ".join(
            f"{k} {v:.3g} ({lp['max_abs_reference'][k]:.3g})" for k, v in lp.get("max_abs_diff", {}).items())
            + (f" on the first {lp['compared_on_tokens']} tokens" if "compared_on_tokens" in lp else ""), ""]
    pk = results.get("packing")
    if pk:
        lines += [f"## Packed vs padded: {pk['model']} ({pk['params'] / 1e9:.2f}B), {pk['samples']} samples, "
                  f"{pk['real_tokens']} real tokens, micro-batch budget {pk['budget_tokens']} tokens", "",
                  f"Completion lengths: median {pk['lengths']['median']}, mean {pk['lengths']['mean']:.0f}, max "
                  f"{pk['lengths']['max']}. Packed attention backend: **{pk['packed_backend']}**. MFU against "
                  f"{pk['peak_tflops']:.0f} TFLOP/s (bf16 dense).", "",
                  "| mode | micro-batches | tokens computed / real | best s | real tokens/s | MFU 6N | MFU incl. attn "
                  "| attention calls |", "|---|---|---|---|---|---|---|---|"]
        for m, r in pk["modes"].items():
            lines.append(f"| {m} | {r['micro_batches']} | {r['padding_ratio']:.2f} | {r['seconds_best']:.2f} | "
                         f"{r['tokens_per_s']:.0f} | {100 * r['mfu_6N']:.1f}% | {100 * r['mfu_with_attention']:.1f}% "
                         f"| {r['attention_calls']} |")
        lines += ["", f"Packed over padded: {pk['speedup_packed_over_padded']:.2f}x; fused varlen over the "
                  f"per-sequence SDPA loop: {pk['speedup_varlen_over_sdpa_loop']:.2f}x.", ""]
    mem = results.get("memory")
    if mem:
        lines += [f"## Long-output memory: longest completion under {mem['budget_gib']} GiB "
                  f"(torch.cuda.max_memory_allocated), {mem['prompt_tokens']}-token prompt, bf16", ""]
        for name, entry in mem["models"].items():
            lines.append(f"### {name} ({_f(entry.get('params', 0) / 1e9)}B parameters, "
                         f"{_f(entry.get('weights_gib'), 1)} GiB of weights)")
            lines.append("")
            if "error" in entry:
                lines += [f"FAILED: `{entry['error']}`", ""]
            if not entry["configs"]:
                continue
            lengths = sorted({r["length"] for c in entry["configs"].values() for r in c["probes"]})
            lines += ["| config | longest fit | limited by | " + " | ".join(f"L={x // 1024}k" if x >= 1024 else
                                                                           f"L={x}" for x in lengths) + " |",
                      "|---|---|---|" + "---|" * len(lengths)]
            for config, c in entry["configs"].items():
                cells = []
                by_len = {r["length"]: r for r in c["probes"]}
                for x in lengths:
                    r = by_len.get(x)
                    if r is None:
                        cells.append("")
                    elif r.get("skipped"):
                        cells.append("skipped")
                    elif not r["ok"]:
                        cells.append("OOM" if r["error"] == "out of memory" else "error")
                    else:
                        cells.append(f"{_f(r['peak_gib'], 1)} GiB, {r['seconds']:.1f}s")
                lines.append(f"| {config} | {c['longest_fit']} | {c['limited_by']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def write_report(args, results: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["seconds_total"] = time.monotonic() - T0
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(render(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-report")
    ap.add_argument("--parts", nargs="+", default=["tests", "logprobs", "packing", "memory"],
                    choices=["tests", "logprobs", "packing", "memory"])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the plumbing only")
    ap.add_argument("--memory-budget-s", type=float, default=210.0, help="time for the memory part (its probes are "
                    "planned to end by then)")
    ap.add_argument("--deadline-s", type=float, default=440.0, help="and in any case by this many seconds from the "
                    "start of the script")
    ap.add_argument("--pytest-timeout", type=float, default=180.0)
    ap.add_argument("--budget-gib", type=float, default=120.0)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--median", type=float, default=1024)
    ap.add_argument("--cap", type=int, default=8192)
    ap.add_argument("--budget", type=int, default=16384, help="tokens per micro-batch (packing part)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the device (H100/H200 SXM)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.cpu_smoke:
        device = torch.device("cpu")
        shapes = SMOKE_SHAPES
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check needs CUDA (use --cpu-smoke to check the plumbing on a CPU)")
        device = torch.device("cuda", 0)
        shapes = SHAPES
    results = {"cpu_smoke": args.cpu_smoke, "args": vars(args), "errors": {}, "part_seconds": {}}
    try:
        results["environment"] = environment(device)
    except Exception as e:  # noqa: BLE001
        results["errors"]["environment"] = {"error": repr(e), "traceback": traceback.format_exc()}
    log(f"gpu_check: {results.get('environment', {}).get('device')}, torch {torch.__version__}, out {args.out}")
    write_report(args, results)
    runs = {"tests": lambda: part_tests(args), "logprobs": lambda: part_logprobs(args, device),
            "packing": lambda: part_packing(args, device, shapes),
            "memory": lambda: part_memory(args, device, shapes, results)}
    for part in args.parts:
        log(f"part {part}: start")
        t = time.monotonic()
        try:
            results[part] = runs[part]()
            log(f"part {part}: done")
        except Exception as e:  # noqa: BLE001  (one part's failure must not lose the others)
            results["errors"][part] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            log(f"part {part}: FAILED {type(e).__name__}: {e}")
        results["part_seconds"][part] = time.monotonic() - t
        _free()
        write_report(args, results)
    log(f"done: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
