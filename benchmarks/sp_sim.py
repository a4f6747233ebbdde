"""Step-time simulation of sequence-parallel plans at the recipes' sizes (issue 24 items 2-4), with rlkit's planner.

    .venv/bin/python benchmarks/sp_sim.py [--gpus 16,64] [--minibatches 1] [--seed 0] [--shapes ...] [--kinds ...]
        [--alone]

Nothing runs on a GPU: every plan is rlkit.parallel.plan's, every time its cost model with these constants:

- model (``--shapes``): Qwen2-7B's shape (28 layers, hidden 3,584, 28 query / 4 KV heads of 128, 7.6e9 parameters)
  or Qwen2.5-1.5B's (28 layers, hidden 1,536, 12 / 2 heads of 128, 1.54e9), bf16, activation checkpointing (every
  exchange runs 3 times: forward, recomputed forward, backward);
- compute: H100 at 40% of 989 TFLOP/s: a = 6 x parameters / (0.4 x 989e12) s per token, b = 6 x layers x heads x
  head size / (0.4 x 989e12) s per token^2 (causal attention, forward + backward), the attention of the heads padded
  to a multiple of the degree counted (12 heads on 8 ranks compute 16);
- exchanges (Ulysses, rlkit.parallel.ulysses): per layer q, k, v and the output, heads padded to a multiple of the
  degree (KV heads repeated when they do not split), each rank sending (d-1)/d of its T/d tokens' data, at 450 GB/s
  per GPU inside a node of 8 (NVLink) and 50 GB/s per GPU across nodes (InfiniBand, 400 Gb/s); 10 us (NVLink) /
  20 us (IB) latency per all-to-all;
- 20 ms fixed cost per micro-batch forward+backward (launches, parameter gathers);
- a rank holds the activations of 16,384 tokens (the budget); samples are prompt (256) + completion;
- batch: 512 prompts x 16 = 8,192 samples a step, in ``--minibatches`` optimizer steps; lock-step over all GPUs
  (ZeRO-3 / FSDP gather parameters in every forward: a round lasts as long as the slowest rank's micro-batch).

Length distributions (``--kinds``): log-normal completions with median 3,000 (sigma 1) capped at 16k and at 32k
(long-tail RL rollouts before length training), a heavier tail (sigma 1.2, capped at 32k), and a DLER-like one (median 2,400, sigma 0.5, truncated at L_T = 4,000: the
lengths after length-penalty training, a pile-up at the cap).

Plans: no SP (every rank alone: infeasible when a sample exceeds the budget, shown for reference), fixed SP 8,
adaptive SP 8 ({1, 8}), flex SP 8 ({1, 2, 4, 8} inside a node), flex over all GPUs ({1, ..., G}, degree 16+
across nodes; since issue 35 flex also weighs the Dynamic CP rule's plan), Megatron-Core's Dynamic CP rule over all
GPUs (rlkit.parallel.plan.dynamic_cp_rounds: verl's Megatron backend
since its PRs #5057 / #6555; timed by the same cost model, exchanges included), with the lower bound (every sample at its cheapest degree, perfect packing, no idle rank).

Planning seconds: one core's CPU time of an SP group's planning as the trainer shares it over the group's ranks
(``step_time``: the slowest member of each of the two waves, plus pickling the winner's rounds for the broadcast).
"""

from __future__ import annotations

import argparse
import gc
import math
import pickle
import platform
import random
import time

from rlkit.kernels import packing
from rlkit.kernels.packing import balance_across_ranks
from rlkit.parallel.plan import (
    CostModel,
    dynamic_cp_rounds,
    exchange_heads,
    group_planner,
    lockstep_time,
    lower_bound,
    options_of,
    pick_plans,
    round_times,
)

SHAPES = {  # layers, hidden, query heads, KV heads, head size, parameters
    "qwen2-7b": (28, 3584, 28, 4, 128, 7.6e9),
    "qwen2.5-1.5b": (28, 1536, 12, 2, 128, 1.54e9),
}
FLOPS = 0.4 * 989e12
NODE, NVLINK, IB, LAT_NV, LAT_IB = 8, 450e9, 50e9, 10e-6, 20e-6
OVERHEAD, BUDGET, PROMPT = 0.020, 16384, 256
SAMPLES = 512 * 16


def cost_model(max_degree: int, shape: str = "qwen2-7b") -> CostModel:
    """The constants of the module docstring as rlkit's CostModel, degrees 2 .. max_degree (powers of two): the
    exchange sizes of rlkit's Ulysses layout (rlkit.parallel.plan.exchange_heads), the padded heads' attention
    (CostModel.heads)."""
    layers, hidden, heads, kv_heads, head_dim, params = SHAPES[shape]
    comm = []
    d = 2
    while d <= max_degree:
        q, kv = exchange_heads(heads, kv_heads, d)
        per_token = (2 * q + 2 * kv) * head_dim * 2 * layers * 3  # bytes of one token's exchanges, fwd + recompute + bwd
        bw, lat = (NVLINK, LAT_NV) if d <= NODE else (IB, LAT_IB)
        # each rank holds T/d tokens and sends (d-1)/d of their data: (T/d) (d-1)/d bytes-per-token / bandwidth
        comm.append((d, per_token * (d - 1) / (d * d) / bw, 4 * layers * 3 * lat))
        d *= 2
    return CostModel(a=6 * params / FLOPS, b=6 * layers * heads * head_dim / FLOPS, comm=tuple(comm),
                     overhead=OVERHEAD, heads=heads)


def lengths_of(kind: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    if kind == "dler":
        return [PROMPT + min(4000, max(16, int(rng.lognormvariate(math.log(2400), 0.5)))) for _ in range(SAMPLES)]
    cap, sigma = {"cap16k": (16384, 1.0), "cap32k": (32768, 1.0), "tail32k": (32768, 1.2)}[kind]
    return [PROMPT + min(cap, max(16, int(rng.lognormvariate(math.log(3000), sigma)))) for _ in range(SAMPLES)]


def dynamic_cp_time(lengths: list[int], gpus: int, cost: CostModel, minibatches: int):
    """(seconds, 0, planning seconds) of one step under Megatron's Dynamic CP rule over all ``gpus``
    (rlkit.parallel.plan.dynamic_cp_rounds), timed by ``cost``."""
    total = planning = 0.0
    for m in range(minibatches):
        mine = lengths[m::minibatches]
        t = time.process_time()
        rounds = dynamic_cp_rounds(mine, gpus, BUDGET)
        planning = max(planning, time.process_time() - t)
        total += sum(max(cost.time([mine[i] for i in units], size) for size, units in r) for r in rounds)
    return total, 0.0, planning


def step_time(lengths: list[int], gpus: int, sp: int, mode: str, cost: CostModel, minibatches: int,
              members: int | None = None):
    """(seconds, the mode's lower bound, planning seconds) of one step: per minibatch, the samples balanced over the
    gpus/sp SP groups by cost, each group's planning shared by its sp ranks as the trainer does
    (rlkit.parallel.micro: every member runs plan.GroupPlanner's first wave, the group's best is exchanged, then
    its second wave; the winner's rounds are broadcast from its maker), rounds in lock-step over all groups.
    Planning seconds (one core's CPU time, so a busy machine does not inflate it): the slowest member of the
    slowest group in each wave, plus pickling and unpickling the winner's rounds (the broadcast's work on the CPU;
    the collectives' transfers not counted). ``members=1``: one rank plans the group alone (every rank repeating
    it), as before issue 35's shared planning."""
    members = members or sp
    total = bound = planning = 0.0
    for m in range(minibatches):
        mine = lengths[m::minibatches]
        shares = [[mine[i] for i in s] for s in balance_across_ranks([cost.work([n]) for n in mine], gpus // sp)]
        options, waves = [], [0.0, 0.0]
        for share in shares:
            # the group's best of the first wave (what the trainer's all-reduce gives every member), untimed
            best = min(group_planner(share, sp, BUDGET, mode, cost).first(member, members)
                       for member in range(members))
            planners = []
            for member in range(members):  # then each member's two waves as its own process runs them
                packing._plan.cache_clear()  # nothing cached from another member,
                packing._packed.cache_clear()
                gc.freeze()  # and no other member's objects for the collector to walk
                t = time.process_time()
                planners.append(group_planner(share, sp, BUDGET, mode, cost))
                planners[-1].first(member, members)
                waves[0] = max(waves[0], time.process_time() - t)
                t = time.process_time()
                planners[-1].second(best, member, members)
                waves[1] = max(waves[1], time.process_time() - t)
            options.append([options_of(p) for p in planners])
        gc.unfreeze()
        plans = pick_plans(options)
        t = time.process_time()
        pickle.loads(pickle.dumps(max(plans, key=lambda p: len(p.rounds)).rounds))
        planning = max(planning, sum(waves) + time.process_time() - t)
        total += lockstep_time([round_times(p.rounds) for p in plans])
        bound += max(lower_bound(share, sp, BUDGET, mode, cost) for share in shares)
    return total, bound, planning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", default="16,64")
    ap.add_argument("--minibatches", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", default="qwen2-7b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--kinds", default="cap16k,cap32k,dler", help="length distributions: cap16k, cap32k, dler, "
                    "tail32k (sigma 1.2)")
    ap.add_argument("--alone", action="store_true", help="also flex over all GPUs planned by one rank alone (no "
                    "shared planning), for its planning time")
    args = ap.parse_args()
    step_time(lengths_of("dler", 0)[:512], 16, 8, "flex", cost_model(16), 1)  # warm up: first calls, imports
    print(f"# sp_sim: {platform.node()} {time.strftime('%Y-%m-%d')}, {SAMPLES} samples a step in {args.minibatches} "
          f"minibatch(es), budget {BUDGET} tokens/rank")
    print("| shape | lengths | GPUs | plan | step s | vs fixed SP 8 | vs fixed SP G | vs the bound | planning s "
          "| planning % of step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, kind in ((s, k) for s in args.shapes.split(",") for k in args.kinds.split(",")):
        lengths = lengths_of(kind, args.seed)
        for gpus in (int(g) for g in args.gpus.split(",")):
            cost = cost_model(gpus, shape)
            # the bound over all GPUs, summed over the minibatches (each a lock-step phase of its own)
            glob = sum(lower_bound(lengths[m::args.minibatches], gpus, BUDGET, "flex", cost)
                       for m in range(args.minibatches))
            rows = {}
            for name, sp, mode in (("no SP", 1, "fixed"), ("fixed SP 8", 8, "fixed"), ("adaptive SP 8", 8, "adaptive"),
                                   ("flex SP 8", 8, "flex"), (f"fixed SP {gpus}", gpus, "fixed"),
                                   (f"adaptive SP {gpus}", gpus, "adaptive"), (f"flex SP {gpus}", gpus, "flex")):
                rows[name] = step_time(lengths, gpus, sp, mode, cost, args.minibatches)
            if args.alone:  # the same plan, planned by one rank of the group alone
                rows[f"flex SP {gpus}, one rank plans alone"] = step_time(lengths, gpus, gpus, "flex", cost,
                                                                          args.minibatches, members=1)
            rows[f"dynamic CP (Megatron's rule), all {gpus}"] = dynamic_cp_time(lengths, gpus, cost, args.minibatches)
            base, wide = rows["fixed SP 8"][0], rows[f"fixed SP {gpus}"][0]
            for name, (t, _, planning) in rows.items():
                note = " (over budget: infeasible)" if name == "no SP" and max(lengths) > BUDGET else ""
                print(f"| {shape} | {kind} | {gpus} | {name}{note} | {t:.2f} | {t / base:.3f}x | {t / wide:.3f}x "
                      f"| +{100 * (t / glob - 1):.1f}% | {planning:.2f} | {100 * planning / t:.2f}% |")
            print(f"| {shape} | {kind} | {gpus} | lower bound | {glob:.2f} | {glob / base:.3f}x | {glob / wide:.3f}x | | | |")


if __name__ == "__main__":
    main()
