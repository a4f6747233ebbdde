"""Start-up calibration of the SP time model (rlkit.parallel.plan.CostModel) on the devices the run trains on.

Three measurements, each the fastest of a few repeats after a warm-up, then the maximum over all ranks (every rank
plans with the same numbers, so the SP groups' plans agree):

- compute: no-grad forwards of packed rows of a short and a long length through the prepared policy. A
  forward+backward is counted as (1 + beta) forwards, plus one more under activation checkpointing (the recomputed
  forward), with beta the backward/forward ratio fitted on this device (a forward and a forward+backward of a
  matmul of the model's width; ``parallel.cost_model.backward`` replaces it). With t(L) = passes x forward(L) =
  overhead + a (L + r L^2), r = b / a the balancing ratio (``parallel.cost_model.attention``, by default from the
  model's shape), the two lengths give ``a`` and ``overhead``; ``heads`` lets the model scale the attention term by
  the padded heads at each degree (rlkit.parallel.plan.head_padding);
- exchange: for every degree d > 1 the mode uses, all-to-alls of this rank's shard of a row of d x budget tokens in
  Ulysses' layout, one of the query's size and one of the key's (rlkit.parallel.plan.exchange_heads: grouped KV heads
  exchange fewer slots while they divide by d), and of a one-token shard (the latency). A layer exchanges q, k, v
  and the output in each pass: forward and backward, and the recomputed forward under activation checkpointing, so
  comm_d = (e_d(row) - e_d(1)) x layers x passes / tokens per row with e_d = 2 t_q + 2 t_kv, and
  e_d(1) x layers x passes the per-forward latency.

``parallel.cost_model`` values replace what would be measured (all of a, b, overhead and comm given: nothing runs).
Not modelled: offloaded checkpoints' copies (parallel.offload_checkpoints) and tiled MLPs' extra recompute.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from rlkit.kernels.packing import sequence_cost
from rlkit.parallel import dist
from rlkit.parallel.batch import collate
from rlkit.parallel.layout import Layout
from rlkit.parallel.plan import CostModel, exchange_heads
from rlkit.records import Sample

REPEATS = 3
RATIO_REPEATS = 9


def _best(fn) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _forward_seconds(policy, acc, length: int, vocab: int) -> float:
    ids = [(7 * i) % max(vocab - 1, 1) + 1 for i in range(length)]
    sample = Sample(prompt_ids=ids[:1], completion_ids=ids[1:] or ids[:1], logprobs=[], finish_reason="stop", text="",
                    group_id=0)
    mb = collate([sample], 0).to(acc.device)

    def run():
        with torch.no_grad(), acc.autocast():
            policy(mb)
        if acc.device.type == "cuda":
            torch.cuda.synchronize()

    return _best(run)


def _probe(*shape: int, device, dtype) -> torch.Tensor:
    """A tensor of random values from a generator of its own: the calibration leaves the run's random state as it
    was (the rollouts that follow sample the same tokens with or without it)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _exchange_seconds(group, tokens: int, slots: int, head_dim: int, device, dtype) -> float:
    from rlkit.parallel.ulysses import seq_to_heads

    x = _probe(tokens, slots, head_dim, device=device, dtype=dtype)

    def run():
        seq_to_heads(x, group)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _best(run)


def backward_ratio(width: int, tokens: int, device, dtype) -> float:
    """Seconds of a backward per second of its forward, on this device: a [tokens, width] x [width, 4 width] matmul
    (an MLP's up projection) forward, then forward and backward (input and weight gradients), alternating, the ratio
    of the medians (a CPU shared with other processes gave 0.2-6 from best-of-3 timings)."""
    x = _probe(tokens, width, device=device, dtype=dtype).requires_grad_()
    w = _probe(width, 4 * width, device=device, dtype=dtype).requires_grad_()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            x @ w
        sync()

    def both():
        (x @ w).sum().backward()
        x.grad = w.grad = None
        sync()

    forward(), both()  # warm-up
    fs, bs = [], []
    for _ in range(RATIO_REPEATS):  # alternating, so a busy spell of the machine falls on both
        for fn, out in ((forward, fs), (both, bs)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return max(statistics.median(bs) / statistics.median(fs) - 1.0, 0.0)


def calibrate(policy, acc, layout: Layout, *, budget: int, ratio: float, layers: int, heads: int, kv_heads: int,
              head_dim: int, vocab: int, checkpointing: bool, dtype=torch.float32,
              given: dict | None = None) -> CostModel:
    """The CostModel of this run (module docstring); ``ratio`` = b / a, ``given`` = parallel.cost_model."""
    given = dict(given or {})
    wanted = [d for d in layout.degrees if d > 1]
    comm_given = {d: (c, f) for d, c, f in CostModel.from_dict({"comm": given.get("comm")}).comm}
    values = torch.zeros(2 + 2 * len(wanted), dtype=torch.float64)
    if not {"a", "overhead"} <= set(given):
        beta = float(given["backward"]) if "backward" in given else \
            backward_ratio(heads * head_dim, max(64, min(budget, 1024)), acc.device, dtype)
        passes = 1.0 + beta + (1.0 if checkpointing else 0.0)
        short, long = 16, max(64, min(budget, 4096))
        t_short = passes * _forward_seconds(policy, acc, short, vocab)
        t_long = passes * _forward_seconds(policy, acc, long, vocab)
        work = functools.partial(sequence_cost, a=1.0, b=ratio)
        a = float(given["a"]) if "a" in given else (t_long - t_short) / (work(long) - work(short))
        if a <= 0:  # timing noise (the long forward no slower than the short): no fixed cost, all per token
            a = t_long / work(long)
        values[0], values[1] = a, max(t_short - a * work(short), 0.0)
    exchanges = layers * (3 if checkpointing else 2)  # passes of a layer's four exchanges
    for j, degree in enumerate(wanted):
        if degree in comm_given:
            continue
        group, slots = layout.groups[degree], exchange_heads(heads, kv_heads, degree)
        # q and the output at the query's slots, k and v at the key's
        row, one = (2 * sum(_exchange_seconds(group, tokens, n, head_dim, acc.device, dtype) for n in slots)
                    for tokens in (budget, 1))
        values[2 + 2 * j] = max(row - one, 0.0) * exchanges / (degree * budget)
        values[3 + 2 * j] = one * exchanges
    values = dist.all_reduce(acc, values, "max")  # every rank plans with the same model
    a = float(given.get("a", values[0]))
    comm = []
    for j, degree in enumerate(wanted):
        per_token, per_forward = comm_given.get(degree, (float(values[2 + 2 * j]), float(values[3 + 2 * j])))
        comm.append((degree, per_token, per_forward))
    return CostModel(a=a, b=float(given.get("b", a * ratio)), comm=tuple(comm),
                     overhead=float(given.get("overhead", values[1])), heads=heads)


def describe(cost: CostModel) -> str:
    """One console line: the fitted constants."""
    comm = ", ".join(f"d={d}: {c * 1e6:.2f} us/token + {f * 1e3:.1f} ms" for d, c, f in cost.comm)
    return (f"SP time model: {cost.a * 1e6:.2f} us/token, b {cost.b:.3g} s/token^2, {cost.overhead * 1e3:.1f} ms per "
            f"forward; exchanges {comm or 'none'}")
