"""A rank's micro-batches: the plan (rlkit.parallel.plan) turned into what this rank runs, its model inputs (its
shard of a row at degree d > 1), which rank counts a micro-batch's results, and the SP group's sums of them.

Every rank runs the same number of forwards (the all-reduced maximum; an idle rank runs one of its samples with
zero weight), so DDP's gradient all-reduce, ZeRO-3's and FSDP's parameter gathers and the per-micro-batch checks
meet on every rank. Under sequence parallelism the micro-batches are rounds of the SP group's plan: in each round
this rank runs the job whose aligned block holds its sub-rank, with the other ranks of that block.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from rlkit.kernels.packing import plan_micro_batches
from rlkit.parallel import dist
from rlkit.parallel import plan as P
from rlkit.parallel.batch import MicroBatch, collate, shard_micro_batch
from rlkit.parallel.layout import Layout, make_layout
from rlkit.records import Sample, UpdateStats


def unit_chunks(unit_sizes: list[int], max_rows: int) -> list[list[int]]:
    """Consecutive units packed into micro-batches of at most `max_rows` rows (a larger unit goes alone).
    Returns row positions (into the concatenated units)."""
    chunks, current, pos = [], [], 0
    for size in unit_sizes:
        rows = list(range(pos, pos + size))
        pos += size
        if current and len(current) + size > max_rows:
            chunks.append(current)
            current = []
        current = current + rows
    if current:
        chunks.append(current)
    return chunks


@dataclass
class MicroBatching:
    """How a rank's samples become micro-batches (filled from the config by the trainer). ``cost``: the SP plan's
    time model (rlkit.parallel.calibrate fits it in seconds at start-up; uncalibrated it is a = 1, b = cost_b)."""

    packing: bool = True  # one packed row per micro-batch; False: right-padded rows
    micro_batch_tokens: int = 8192  # token budget of a packed micro-batch (per rank under SP)
    micro_batch_size: int = 8  # rows of a padded micro-batch
    cost_b: float = 0.0  # quadratic term of the balancing cost a*L + b*L^2 (a = 1)
    layout: Layout | None = None  # sequence parallelism: this rank's SP group, blocks and DP group (None: DP only)
    cost: P.CostModel | None = None
    calibrated: bool = False  # cost in seconds: the update logs predicted vs measured time
    log: list = field(default_factory=list)  # (predicted s, bound s) of each plan made since the last take_log

    @classmethod
    def from_config(cls, optim, cost_model, shape_ratio: float, layout: Layout | None = None) -> MicroBatching:
        """From the config's optim and parallel.cost_model sections: b = cost_model.attention, or the model's
        ``shape_ratio`` (rlkit.parallel.plan.attention_ratio) when it is not given."""
        b = cost_model.attention if cost_model.attention >= 0 else shape_ratio
        return cls(optim.packing, optim.micro_batch_tokens, optim.micro_batch_size, b, layout, P.CostModel(1.0, b))

    @property
    def sp_mode(self) -> str:
        return self.layout.mode if self.layout is not None else "fixed"

    def take_log(self) -> tuple[float, float]:
        """Summed (predicted, bound) seconds of the plans made since the last call."""
        out = (sum(p for p, _ in self.log), sum(b for _, b in self.log))
        self.log.clear()
        return out


def layout_of(mbs: MicroBatching, acc) -> Layout:
    """The micro-batching's layout, or plain data parallelism over every process when it has none."""
    return mbs.layout or make_layout(acc, 1)


@dataclass(frozen=True)
class Micro:
    """One forward/backward of this rank: sample indices (empty: a zero-weight forward, so every rank runs the
    same forwards) and the degree: how many ranks of the SP group run the row together (every rank of the block
    runs the same ``idx``; 1: this rank alone)."""

    idx: list[int]
    degree: int = 1

    @property
    def sharded(self) -> bool:
        return self.degree > 1


def _sp_plan(lengths: list[int], units: list[list[int]], mbs: MicroBatching, lay: Layout, acc) -> list[Micro]:
    """This rank's rounds of its SP group's plan, as plan.plan_groups makes them with ``members=sp``: the ranks of
    each group share its planning (plan.group_options with member = the sub-rank; the group's best of the first
    wave by an all-reduce over the SP group), every rank's times are gathered,
    each group's merged (plan.merge_times) and the groups' candidates chosen together (plan.choose, lock-step); the
    winner's rounds go from the rank that made them to the rest of its group (one object broadcast)."""
    cost = mbs.cost or P.CostModel(1.0, mbs.cost_b)
    mine = P.group_options(lengths, lay.sp, mbs.micro_batch_tokens, lay.mode, cost, member=lay.sp_rank,
                           members=lay.sp, exchange=lambda best: _group_min(best, lay, acc))
    every = dist.gather_objects(acc, (mine.times, mine.bound, mine.error))
    P.raise_failures(e for _, _, e in every)  # on every rank alike, after the collectives
    merged = [P.merge_times([every[g * lay.sp + m][0] for m in range(lay.sp)]) for g in range(lay.dp)]
    pick = P.choose([times for times, _ in merged])
    chosen = [merged[g][0][pick[g]] for g in range(lay.dp)]
    # the groups run in lock-step: their time is the rounds' maxima, bounded below by the slowest group's bound
    mbs.log.append((P.lockstep_time(chosen), max(every[g * lay.sp][1] for g in range(lay.dp))))
    k, maker = pick[lay.dp_rank], merged[lay.dp_rank][1][pick[lay.dp_rank]]
    rounds = _from_member(mine.candidates[k][1], lay, maker)
    micros = []
    for job_round in rounds:
        job = next((j for j in job_round if j.first <= lay.sp_rank < j.first + j.degree), None)
        micros.append(Micro([i for u in job.units for i in units[u]], job.degree) if job else Micro([]))
    return micros + [Micro([]) for _ in range(max(map(len, chosen)) - len(micros))]


def _group_min(value: float, lay: Layout, acc) -> float:
    """The least ``value`` over the SP group's ranks."""
    import torch.distributed as tdist

    box = torch.tensor([value], dtype=torch.float64, device=acc.device)
    tdist.all_reduce(box, op=tdist.ReduceOp.MIN, group=lay.sp_group)
    return float(box.item())


def _from_member(rounds, lay: Layout, maker: int):
    """``rounds`` of sub-rank ``maker`` on every rank of the SP group (this rank's own ``rounds``, None where it
    did not make that plan, are replaced by the maker's)."""
    import torch.distributed as tdist

    box = [rounds]
    tdist.broadcast_object_list(box, src=lay.dp_rank * lay.sp + maker, group=lay.sp_group)
    return box[0]


def plan_rank(units: list[list[int]], samples: list[Sample], mbs: MicroBatching, acc) -> list[Micro]:
    """This rank's micro-batches. Every rank gets the same number of micro-batches (the all-reduced maximum),
    so DDP / ZeRO-3 / FSDP run matching forwards; a rank with too few units gets empty ones. Under sequence
    parallelism the SP group plans together (rlkit.parallel.plan): in each round this rank runs its block's job."""
    lengths = [sum(len(samples[i].prompt_ids) + samples[i].num_tokens for i in u) for u in units]
    lay = layout_of(mbs, acc)
    if lay.sp > 1:
        return _sp_plan(lengths, units, mbs, lay, acc)
    if mbs.packing:
        plan = lambda k: plan_micro_batches(lengths, mbs.micro_batch_tokens, min_count=k, b=mbs.cost_b)  # noqa: E731
        count = len(plan(1))
    else:
        chunks = unit_chunks([len(u) for u in units], mbs.micro_batch_size)
        count = len(chunks)
    count = int(dist.all_reduce(acc, torch.tensor(count), "max"))
    if mbs.packing:
        return [Micro([i for u in part for i in units[u]]) for part in plan(count)]
    rows = [i for u in units for i in u]
    return [Micro([rows[j] for j in c]) for c in chunks] + [Micro([]) for _ in range(count - len(chunks))]


def micro_inputs(samples: list[Sample], micro: Micro, pad_id: int, mbs: MicroBatching, acc) -> tuple[list[int], MicroBatch]:
    """The sample indices a micro-batch runs and its model inputs on the device: this rank's shard of the row when
    the degree is > 1 (blocks are aligned, so the rank's position in its block is its sub-rank modulo the degree).
    An empty micro-batch runs the first token of the rank's shortest sample's prompt and completion, weighted zero:
    every parameter still takes part, at the cost of two tokens (an idle rank of a round must not hold a long row)."""
    if micro.idx:
        idx, rows = micro.idx, [samples[i] for i in micro.idx]
    else:
        short = min(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + samples[i].num_tokens)
        s = samples[short]
        idx, rows = [short], [replace(s, prompt_ids=s.prompt_ids[:1], completion_ids=s.completion_ids[:1],
                                      logprobs=s.logprobs[:1])]
    mb = collate(rows, pad_id, packed=mbs.packing)
    if micro.sharded:
        mb = shard_micro_batch(mb, micro.degree, mbs.layout.sp_rank % micro.degree)
    return idx, mb.to(acc.device)


def owns_results(micro: Micro, layout: Layout) -> bool:
    """Whether this rank counts a micro-batch's results: a real one, and for one run by a block of ranks (every
    rank of it computes the same) only the block's first rank."""
    return bool(micro.idx) and layout.sp_rank % micro.degree == 0


def sum_over_sp_group(stats: UpdateStats, lay: Layout) -> UpdateStats:
    """Under SP each rank counted only the micro-batches it owns (owns_results): sum the group's counts, so every
    rank reports the statistics of the whole share it trained."""
    if lay.sp == 1:
        return stats
    import torch.distributed as tdist

    every: list = [None] * lay.sp
    tdist.all_gather_object(every, (stats.entropy, stats.tokens, stats.mismatch, stats.mismatch_tokens,
                                    stats.sums, stats.masked), group=lay.sp_group)
    out = UpdateStats(masked={}, grad_norms=stats.grad_norms, micro_batches=stats.micro_batches,
                      sharded=stats.sharded, skipped=stats.skipped, predicted_s=stats.predicted_s,
                      bound_s=stats.bound_s)
    for entropy, tokens, mismatch, mismatch_tokens, sums, masked in every:
        out.entropy += entropy
        out.tokens += tokens
        out.mismatch += mismatch
        out.mismatch_tokens += mismatch_tokens
        for key, v in sums.items():
            out.sums[key] = out.sums.get(key, 0.0) + v
        for key, v in masked.items():
            out.masked[key] = out.masked.get(key, 0.0) + v
    return out


__all__ = ["Micro", "MicroBatching", "layout_of", "micro_inputs", "owns_results", "plan_rank", "sum_over_sp_group",
           "unit_chunks"]
