"""Start-up calibration of the SP time model (rlkit.parallel.plan.CostModel) on the devices the run trains on.

Two measurements, each the fastest of a few repeats after a warm-up, then the maximum over all ranks (every rank
plans with the same numbers, so the SP groups' plans agree):

- compute: no-grad forwards of packed rows of a short and a long length through the prepared policy; a forward
  plus its backward is taken as 3 forwards (the backward does twice the forward's matmuls), so with
  t(L) = 3 forward(L) = overhead + a (L + r L^2), r = b / a the balancing ratio
  (``parallel.cost_model.attention``), the two lengths give ``a`` and ``overhead``;
- exchange: for every degree d > 1 the mode uses, an all-to-all of this rank's shard of a row of d x budget tokens
  in Ulysses' layout ([tokens, heads padded to a multiple of d, head_dim]) over this rank's block of d, and of a
  one-token shard (the latency). A layer exchanges q, k, v and the output forward and again backward, and once more
  in the recomputed forward under activation checkpointing: 8 or 12 exchanges per layer, so
  comm_d = (t_d(row) - t_d(1)) x exchanges / tokens per row, with t_d(1) x exchanges as the per-forward latency.

``parallel.cost_model`` values replace what would be measured (all of a, b, overhead and comm given: nothing runs).
"""

from __future__ import annotations

import functools
import time

import torch

from rlkit.kernels.packing import sequence_cost
from rlkit.parallel import dist
from rlkit.parallel.batch import collate
from rlkit.parallel.layout import Layout
from rlkit.parallel.plan import CostModel
from rlkit.records import Sample

REPEATS = 3


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


def _exchange_seconds(group, degree: int, tokens: int, heads: int, head_dim: int, device, dtype) -> float:
    from rlkit.parallel.ulysses import seq_to_heads

    x = torch.randn(tokens, -(-heads // degree) * degree, head_dim, device=device, dtype=dtype)

    def run():
        seq_to_heads(x, group)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _best(run)


def calibrate(policy, acc, layout: Layout, *, budget: int, ratio: float, layers: int, heads: int, head_dim: int,
              vocab: int, checkpointing: bool, dtype=torch.float32, given: dict | None = None) -> CostModel:
    """The CostModel of this run (module docstring); ``ratio`` = b / a, ``given`` = parallel.cost_model."""
    given = dict(given or {})
    wanted = [d for d in layout.degrees if d > 1]
    comm_given = {d: (c, f) for d, c, f in CostModel.from_dict({"comm": given.get("comm")}).comm}
    values = torch.zeros(2 + 2 * len(wanted), dtype=torch.float64)
    if not {"a", "overhead"} <= set(given):
        short, long = 16, max(64, min(budget, 4096))
        t_short = 3 * _forward_seconds(policy, acc, short, vocab)
        t_long = 3 * _forward_seconds(policy, acc, long, vocab)
        work = functools.partial(sequence_cost, a=1.0, b=ratio)
        a = float(given["a"]) if "a" in given else (t_long - t_short) / (work(long) - work(short))
        if a <= 0:  # timing noise (the long forward no slower than the short): no fixed cost, all per token
            a = t_long / work(long)
        values[0], values[1] = a, max(t_short - a * work(short), 0.0)
    exchanges = layers * (12 if checkpointing else 8)
    for j, degree in enumerate(wanted):
        if degree in comm_given:
            continue
        group = layout.groups[degree]
        row = _exchange_seconds(group, degree, budget, heads, head_dim, acc.device, dtype)
        one = _exchange_seconds(group, degree, 1, heads, head_dim, acc.device, dtype)
        values[2 + 2 * j] = max(row - one, 0.0) * exchanges / (degree * budget)
        values[3 + 2 * j] = one * exchanges
    values = dist.all_reduce(acc, values, "max")  # every rank plans with the same model
    a = float(given.get("a", values[0]))
    comm = []
    for j, degree in enumerate(wanted):
        per_token, per_forward = comm_given.get(degree, (float(values[2 + 2 * j]), float(values[3 + 2 * j])))
        comm.append((degree, per_token, per_forward))
    return CostModel(a=a, b=float(given.get("b", a * ratio)), comm=tuple(comm),
                     overhead=float(given.get("overhead", values[1])))


def describe(cost: CostModel) -> str:
    """One console line: the fitted constants."""
    comm = ", ".join(f"d={d}: {c * 1e6:.2f} us/token + {f * 1e3:.1f} ms" for d, c, f in cost.comm)
    return (f"SP time model: {cost.a * 1e6:.2f} us/token, b {cost.b:.3g} s/token^2, {cost.overhead * 1e3:.1f} ms per "
            f"forward; exchanges {comm or 'none'}")
