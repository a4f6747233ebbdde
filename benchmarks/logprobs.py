"""Peak extra memory and time of naive vs chunked logprob+entropy, forward + backward (issue 4).

naive   = rlkit.kernels.logprobs.reference_logprobs: full logits [T, V] in fp32, autograd backward.
chunked = rlkit.kernels.logprobs.chunked_logprobs: custom backward, ``--chunk`` rows at a time.
Both compute the logprobs of T target tokens and the entropies from hidden states [T, H] and an LM head
[V, H] (fp32), then backpropagate sum(logprob) + sum(entropy) into hidden and weight.

Each (method, T, V) runs in a fresh subprocess. Peak extra memory = the process's peak after the call
minus its peak once the inputs exist (CPU: ru_maxrss; CUDA: torch.cuda.max_memory_allocated). A naive
case whose logits alone would not fit under ``--max-naive-gib`` is not run; its logits size is reported
as a lower bound of what it would need. Target: chunked peak extra <= 1/8 of naive at T = 32k; chunked no
slower than naive where naive fits.

    .venv/bin/python benchmarks/logprobs.py [--hidden 128] [--chunk 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

TS = (4096, 16384, 32768)
VS = (49152, 151936)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(method: str, t: int, v: int, hidden: int, chunk: int, device: str) -> dict:
    from rlkit.kernels.logprobs import chunked_logprobs, reference_logprobs

    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(t, hidden, device=device, generator=g).requires_grad_()
    w = (torch.randn(v, hidden, device=device, generator=g) * 0.05).requires_grad_()
    targets = torch.randint(0, v, (t,), device=device, generator=g)
    fn = reference_logprobs if method == "naive" else (lambda *a: chunked_logprobs(*a, chunk=chunk))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = _rss_bytes()
    t0 = time.perf_counter()
    lp, ent = fn(h, w, None, targets, 1.0)
    (lp.sum() + ent.sum()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_bytes()
    return {"method": method, "T": t, "V": v, "seconds": time.perf_counter() - t0, "peak_extra_gib": (peak - base) / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-naive-gib", type=float, default=4.0, help="skip naive cases whose logits exceed this")
    ap.add_argument("--ts", default=",".join(map(str, TS)))
    ap.add_argument("--vs", default=",".join(map(str, VS)))
    ap.add_argument("--case", nargs=3, metavar=("METHOD", "T", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        m, t, v = args.case
        print(json.dumps(run_case(m, int(t), int(v), args.hidden, args.chunk, args.device)))
        return
    rows = []
    for t in map(int, args.ts.split(",")):
        for v in map(int, args.vs.split(",")):
            logits_gib = t * v * 4 / 2**30
            for method in ("naive", "chunked"):
                if method == "naive" and logits_gib > args.max_naive_gib:
                    rows.append({"method": "naive", "T": t, "V": v, "seconds": None, "peak_extra_gib": None,
                                 "skipped": f"logits alone need {logits_gib:.1f} GiB", "logits_gib": logits_gib})
                    continue
                proc = subprocess.run([sys.executable, __file__, "--hidden", str(args.hidden), "--chunk", str(args.chunk),
                                       "--device", args.device, "--case", method, str(t), str(v)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    rows.append({"method": method, "T": t, "V": v, "error": proc.stderr.strip()[-300:]})
                else:
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                rows[-1]["logits_gib"] = logits_gib
                print(json.dumps(rows[-1]), flush=True)
    print("\n| T | V | naive peak extra GiB | naive s | chunked peak extra GiB | chunked s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for t in map(int, args.ts.split(",")):
        for v in map(int, args.vs.split(",")):
            n = next(r for r in rows if r["method"] == "naive" and r["T"] == t and r["V"] == v)
            c = next(r for r in rows if r["method"] == "chunked" and r["T"] == t and r["V"] == v)
            naive_mem = n.get("peak_extra_gib") or n["logits_gib"]
            bound = "" if n.get("peak_extra_gib") else ">= "
            ratio = (c.get("peak_extra_gib") or float("nan")) / naive_mem
            print(f"| {t} | {v} | {bound}{naive_mem:.2f} | {n.get('seconds') or '-'} | {c.get('peak_extra_gib', float('nan')):.2f} "
                  f"| {c.get('seconds', float('nan')):.1f} | {'<= ' if bound else ''}{ratio:.3f} |")


if __name__ == "__main__":
    main()
