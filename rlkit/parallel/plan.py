"""Which micro-batches of an SP group run at which sequence-parallel degree, in which lock-step round (issue 24).

RL rollouts are long-tailed: most completions are short, a few hit the cap. Fixed SP shards every micro-batch over
the P ranks of an SP group and pays the all-to-all on all of them. FlexSP (Wang et al., "Data-Centric and
Heterogeneity-Adaptive Sequence Parallelism", ASPLOS'25) instead gives each micro-batch its own degree: an aligned
block of d ranks of the group (d = 1: one rank alone) runs it while the other blocks run other micro-batches. Every
sample is trained once with the same weights whatever its degree, so the gradients are the same; only time moves.

Modes (``parallel.sp_mode``): ``fixed``, degree P for every micro-batch; ``adaptive``, degrees {1, P}; ``flex``,
every power of two that divides P, and P (FlexSP's heterogeneous groups).

Memory model: a rank holds the activations of at most ``budget`` tokens, so a micro-batch of degree d holds at most
d x budget tokens (a single sample longer than P x budget goes alone at degree P: the budget is a planning target,
the device's memory the real limit).

Time model (``CostModel``, fitted at start-up by rlkit.parallel.calibrate): a micro-batch of sequences L_i at degree
d takes  sum_i (a L_i + b p_d L_i^2) / d  +  c_d sum_i L_i  +  o  seconds, with p_d = ceil(H/d) d / H the padded
heads' share of attention work (``head_padding``), c_d the all-to-all time per row token at degree d (c_1 = 0;
its volume set by ``exchange_heads``) and o a fixed per-forward overhead. The ranks run in lock-step rounds (every rank runs one
micro-batch per round, an idle one a zero-weight forward), so a round lasts as long as its slowest micro-batch and a
plan as long as its rounds.

Planner (``plan_group``): every sample gets the smallest allowed degree that holds it (in flex, also the whole group
for every sample that needs SP: adaptive's choice), raised to a floor f; each
degree class is packed into bins of d x budget tokens (rlkit.kernels.packing: best-fit-decreasing count, cost
balanced), optionally (a) topping up the free room of higher-degree bins with lower-class samples and (b) rounding a
class's bin count up to a multiple of P/d so its rounds are full; the bins are dealt into rounds by first-fit
decreasing time over aligned free blocks (a shelf schedule). Every floor in the mode's degrees and each variant is
a candidate, the fixed plan among them, and the plan predicted fastest wins: never predicted slower than fixed SP.
The work is a few O(n log n) packings and an O(jobs x open rounds) schedule: no solver; the lower bound
(``bound``: every sample at its cheapest degree, perfect packing, no idle rank) says how much one could gain.
Deterministic: the same lengths and cost model give the same plan on every rank.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlkit.kernels.packing import PlanError, check_partition, plan_micro_batches, planned_count, sequence_cost

MODES = ("fixed", "adaptive", "flex")


def head_padding(heads: int, degree: int) -> float:
    """The attention work of ``heads`` query heads at ``degree`` relative to degree 1: Ulysses pads the heads to a
    multiple of the degree (rlkit.parallel.ulysses), so ceil(H / d) d / H (12 heads on 8 ranks compute 16: 4/3)."""
    return -(-heads // degree) * degree / heads if heads > 0 and degree > 1 else 1.0


def exchange_heads(heads: int, kv_heads: int, degree: int) -> tuple[int, int]:
    """Head slots of (query, key) an all-to-all of one layer exchanges at ``degree``, as rlkit.parallel.ulysses lays
    them out: KV heads split like the query heads when both divide by the degree, otherwise repeated to one per query
    head; then every tensor padded to a multiple of the degree. The output exchanged back has the query's slots; the
    value, the key's. Grouped-query attention: (28, 4) at degree 2, (32, 32) at degree 8 for Qwen2-7B's 28 / 4."""
    q = -(-heads // degree) * degree
    return q, (kv_heads if kv_heads % degree == 0 and heads % degree == 0 else q)


def attention_ratio(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                    vocab: int) -> float:
    """b / a of a decoder's shape: the FLOPs of causal attention per token^2 (QK^T and AV, 2 x 2 L^2 x heads x
    head_dim per layer, halved by the mask) over those of its matmuls per token (2 x their parameters: q, k, v, o,
    a gated MLP of three projections, the LM head), both x 3 for forward + backward: layers x heads x head_dim /
    matmul parameters. Qwen2-7B: 1.42e-5 (the 1 / (6 hidden) used before issue 35 is 4.65e-5, 3.3x more)."""
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate
    return layers * heads * head_dim / (layers * per_layer + vocab * hidden)


@dataclass(frozen=True)
class CostModel:
    """Seconds of one forward+backward (module docstring): ``a`` per token, ``b`` per token^2 of a sequence (the
    attention, scaled by ``head_padding(heads, d)`` at degree d when ``heads`` is known), ``comm`` ((degree, seconds
    per row token, seconds per forward), ...) for the exchanges at each degree > 1 (their volume and their latency),
    ``overhead`` per forward at any degree."""

    a: float = 1.0
    b: float = 0.0
    comm: tuple[tuple[int, float, float], ...] = ()
    overhead: float = 0.0
    heads: int = 0  # query heads (0: unknown, no padding)

    def comm_at(self, degree: int) -> float:
        return next((c for d, c, _ in self.comm if d == degree), 0.0) if degree > 1 else 0.0

    def latency_at(self, degree: int) -> float:
        return next((f for d, _, f in self.comm if d == degree), 0.0) if degree > 1 else 0.0

    def work(self, lengths: Sequence[int], degree: int = 1) -> float:
        """Rank-seconds of the compute of ``lengths`` at ``degree``: a L + b L^2 per sequence, the attention term
        scaled by the padded heads."""
        b = self.b * head_padding(self.heads, degree)
        return sum(sequence_cost(n, self.a, b) for n in lengths)

    def time(self, lengths: Sequence[int], degree: int) -> float:
        """Predicted seconds of one micro-batch of ``lengths`` at ``degree``."""
        return (self.work(lengths, degree) / degree + self.comm_at(degree) * sum(lengths) + self.latency_at(degree)
                + self.overhead)

    def rank_seconds(self, length: int, degree: int) -> float:
        """Rank-seconds one sequence costs at ``degree`` (its share of d ranks' time, without overhead)."""
        linear, quadratic = self.rank_coefficients(degree)
        return linear * length + quadratic * length * length

    def rank_coefficients(self, degree: int) -> tuple[float, float]:
        """(per token, per token^2) of ``rank_seconds`` at ``degree``: what the planner's bounds sum per sample."""
        return self.a + degree * self.comm_at(degree), self.b * head_padding(self.heads, degree)

    def rank_seconds_of(self, lengths: Sequence[int], degree: int) -> list[float]:
        """``rank_seconds`` of every length at ``degree``, in one pass."""
        linear, quadratic = self.rank_coefficients(degree)
        return [(linear + quadratic * n) * n for n in lengths]

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "comm": {str(d): [c, f] for d, c, f in self.comm}, "overhead": self.overhead,
                "heads": self.heads}

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        """From ``to_dict``'s form; a degree's entry may be one number (seconds per token) or [per token, per forward].
        A model saved before issue 35 has no ``heads``: no padding, as it planned."""
        comm = []
        for k, v in (d.get("comm") or {}).items():
            values = [v] if isinstance(v, (int, float)) else list(v)
            comm.append((int(k), float(values[0]), float(values[1]) if len(values) > 1 else 0.0))
        return cls(float(d.get("a", 1.0)), float(d.get("b", 0.0)), tuple(sorted(comm)), float(d.get("overhead", 0.0)),
                   int(d.get("heads", 0)))


@dataclass(frozen=True)
class Job:
    """One micro-batch: ``degree`` ranks of the group, sub-ranks ``first`` .. ``first + degree - 1``, run ``units``
    (indices into the planned lengths) together, each a 1/degree shard of the packed row."""

    degree: int
    first: int
    units: tuple[int, ...]
    seconds: float


@dataclass(frozen=True)
class GroupPlan:
    """Lock-step rounds of jobs on disjoint aligned blocks (a sub-rank in no job of a round idles through it)."""

    rounds: tuple[tuple[Job, ...], ...]
    predicted: float  # seconds, the sum of the rounds' slowest jobs
    bound: float  # seconds, the lower bound (module docstring)
    candidate: str  # which candidate won (floor degree and variant), for the metrics and tests


def degrees_for(sp: int, mode: str) -> tuple[int, ...]:
    """The degrees a mode may give a micro-batch in an SP group of ``sp`` ranks."""
    if mode not in MODES:
        raise ValueError(f"sp_mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "fixed" or sp == 1:
        return (sp,)
    if mode == "adaptive":
        return (1, sp)
    return tuple(sorted({d for d in (2 ** i for i in range(sp.bit_length())) if sp % d == 0} | {sp}))


def _schedule(jobs: list[tuple[int, tuple[int, ...], float]], sp: int) -> list[list[Job]]:
    """Deal (degree, units, seconds) jobs into rounds: slowest first, each into the first round with a free aligned
    block of its degree, else a new round (first-fit decreasing shelves: a round lasts as long as its first job)."""
    rounds: list[list[Job]] = []
    free: list[int] = []  # bitmask of the free sub-ranks of each round
    open_rounds: list[int] = []  # rounds with a free sub-rank, in creation order
    full = (1 << sp) - 1
    for degree, units, seconds in sorted(jobs, key=lambda j: (-j[2], -j[0], j[1])):
        block = (1 << degree) - 1
        home = None
        for r in open_rounds:
            if degree == 1:  # the lowest free sub-rank, in one step
                home = (r, (free[r] & -free[r]).bit_length() - 1)
                break
            for first in range(0, sp - degree + 1, degree):
                if free[r] >> first & block == block:
                    home = (r, first)
                    break
            if home:
                break
        if home is None:
            rounds.append([])
            free.append(full)
            open_rounds.append(len(rounds) - 1)
            home = (len(rounds) - 1, 0)
        r, first = home
        rounds[r].append(Job(degree, first, units, seconds))
        free[r] &= ~(block << first)
        if free[r] == 0:
            open_rounds.remove(r)
    return rounds


def _top_up(bins: list[list[int]], rooms: list[int], items: list[int], lengths: Sequence[int]) -> list[int]:
    """Best-fit the longest ``items`` into the free ``rooms`` of ``bins`` (in place); returns the items left."""
    order = sorted(range(len(bins)), key=lambda j: (rooms[j], j))
    free = [(rooms[j], j) for j in order]
    left = []
    for i in sorted(sorted(items), key=lengths.__getitem__, reverse=True):  # ties by index
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            left.append(i)
            continue
        room, j = free.pop(k)
        bins[j].append(i)
        if room - lengths[i] > 0:
            bisect.insort(free, (room - lengths[i], j))
    return left


def _cost_timer(lengths: Sequence[int], cost: CostModel):
    """The default job timer: ``cost.time`` of the units' lengths at a degree."""
    return lambda units, d: cost.time([lengths[i] for i in units], d)


def _jobs(lengths: Sequence[int], degree_of: list[int], sp: int, budget: int, cost: CostModel, *, top_up: bool,
          rounded: bool, timer=None) -> list[tuple[int, tuple[int, ...], float]]:
    """Pack each degree class (highest first) into bins of degree x budget tokens; see the module docstring.
    ``timer(units, degree)``: a job's seconds (default ``cost.time`` of its lengths)."""
    timer = timer or _cost_timer(lengths, cost)
    bins: list[tuple[int, list[int]]] = []
    for degree in sorted(set(degree_of), reverse=True):
        items = [i for i, d in enumerate(degree_of) if d == degree]
        if top_up and bins:
            rooms = [d * budget - sum(map(lengths.__getitem__, b)) for d, b in bins]
            items = _top_up([b for _, b in bins], rooms, items, lengths)
        if not items:
            continue
        sizes = [lengths[i] for i in items]
        count, per_round, want = planned_count(sizes, degree * budget), sp // degree, 1
        if rounded and per_round > 1 and count % per_round and len(items) > count:  # round the count up
            want = min(len(items), -(-count // per_round) * per_round)
        parts = plan_micro_batches(sizes, degree * budget, min_count=want, a=cost.a, b=cost.b)
        bins += [(degree, [items[j] for j in p]) for p in parts if p]
    return [(d, tuple(sorted(b)), timer(b, d)) for d, b in bins]


def dynamic_cp_rounds(lengths: Sequence[int], ranks: int, budget: int) -> list[list[tuple[int, list[int]]]]:
    """Rounds of (CP size, unit indices) by the rule of Megatron-Core's Dynamic CP scheduler (issue 35 item 5;
    ``DefaultDynamicCPScheduler`` of Megatron-LM dev d48bd6be, megatron/core/datasets/data_schedule.py, which verl's
    Megatron backend schedules with since its PRs #5057 / #6555; the rule read and restated here, no code taken).

    Every round spans all ``ranks`` (a power of two). Units longest first; the longest left seeds the round with a
    group of its minimum CP size (the smallest power of two c with L / c <= budget, at most ``ranks``); each later
    unit takes, among joining an existing group of size c (its tokens per rank staying within the budget) and
    opening one on free ranks, for c = its minimum, 2x, ... up to ``ranks``, the option with the least round
    makespan under the rule's cost L^2 / c per rank (compute only: no linear term, no exchange), ties to the smaller
    c, the older group, joining; a unit with no option waits for a later round. Then the first of the smallest groups
    doubles until no rank is free. Its 5% workload cap never binds (a group's load is at most the seed's length x
    the budget) and is left out; with ``ranks`` a power of two its full-width fallback never runs. A unit longer than
    ``ranks`` x budget gets a round of its own (Megatron refuses it)."""
    def smallest(n: int) -> int:
        c = 1
        while n > c * budget and c < ranks:
            c *= 2
        return c

    left = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable: ties by index
    rounds = []
    while left:
        groups: list[list] = []  # [size, load per rank, tokens per rank, units, index], in creation order
        of_size: dict[int, list[list]] = {}  # the same groups by size
        free, makespan, wait = ranks, 0.0, []
        rooms: list[tuple[float, int]] = []  # once no rank is free: a heap of (-room in tokens, group), stale kept
        down = [-lengths[i] for i in left]  # ascending: where the units that fit a room start (bisect)
        p = 0
        while p < len(left):
            i = left[p]
            n = lengths[i]
            p += 1
            if not free:  # no free rank and no group with this many tokens of room: a later round
                if not rooms:
                    rooms = [(-(budget - h[2]) * h[0], k) for k, h in enumerate(groups)]
                    heapq.heapify(rooms)
                while -rooms[0][0] != (budget - groups[rooms[0][1]][2]) * groups[rooms[0][1]][0]:
                    heapq.heappop(rooms)  # a group that has taken a unit since
                room = -rooms[0][0]
                if n > room:  # nor any unit up to the next that fits the room (units longest first)
                    q = bisect.bisect_left(down, -room, p)
                    wait += left[p - 1:q]
                    p = q
                    continue
            best = None  # (makespan after, group or None to open one, size)
            c = smallest(n)
            # options in the rule's order (sizes up, groups by age, then opening one); none ends below the round's
            # makespan, so the first that keeps it wins every tie and the search stops there (issue 35: planning)
            while c <= ranks and (groups or best is None):  # the seed takes its minimum size
                w, share = n * n / c, n / c
                for g in of_size.get(c, ()):
                    if g[2] + share <= budget:
                        v = g[1] + w
                        if v < makespan:
                            v = makespan
                        if best is None or v < best[0]:
                            best = (v, g, c)
                            if v <= makespan:
                                break
                if best is not None and best[0] <= makespan:
                    break
                if free >= c and (best is None or max(makespan, w) < best[0]):
                    best = (max(makespan, w), None, c)
                    if best[0] <= makespan:
                        break
                c *= 2
            if best is None:
                wait.append(i)
                continue
            _, g, c = best
            if g is None:
                g = [c, 0.0, 0.0, [], len(groups)]
                groups.append(g)
                of_size.setdefault(c, []).append(g)
                free -= c
            g[1], g[2] = g[1] + n * n / c, g[2] + n / c
            g[3].append(i)
            if rooms:
                heapq.heappush(rooms, (-(budget - g[2]) * g[0], g[4]))
            if g[1] > makespan:
                makespan = g[1]
        while free:  # fill the round: the first of the smallest groups doubles
            size = min(g[0] for g in groups)
            g = next(g for g in groups if g[0] == size)
            free -= min(2 * size, ranks) - size
            g[0] = min(2 * size, ranks)
        rounds.append([(g[0], g[3]) for g in groups])
        left = wait
    return rounds


def _dynamic_candidate(lengths: Sequence[int], sp: int, budget: int, cost: CostModel, timer=None) -> list[list[Job]]:
    """The Dynamic CP rule's rounds as jobs on aligned blocks (groups largest first, left to right: powers of two in
    non-increasing order start at multiples of their size), timed by ``cost`` (or ``timer(units, degree)``)."""
    timer = timer or _cost_timer(lengths, cost)
    out = []
    for groups in dynamic_cp_rounds(lengths, sp, budget):
        first, jobs = 0, []
        for size, units in sorted(groups, key=lambda g: -g[0]):
            jobs.append(Job(size, first, tuple(sorted(units)), timer(units, size)))
            first += size
        out.append(jobs)
    return out


class _Table:
    """What every candidate of one group's planning reads, computed once (issue 35 item 4: planning 8,192 samples in
    one group of 64 spent most of its time re-timing jobs sample by sample and re-summing the same bounds): each
    sample's rank-seconds at each degree (``CostModel.rank_seconds_of``, a numpy row per degree), the smallest
    degree that holds each sample, and a job's seconds as the sum of its samples' rank-seconds / degree plus the
    degree's latency and the overhead (``CostModel.time`` regrouped: a L / d + b p_d L^2 / d + c_d L = (a + d c_d) L /
    d + b p_d L^2 / d)."""

    def __init__(self, lengths: list[int], sp: int, budget: int, mode: str, cost: CostModel):
        self.lengths, self.sp, self.cost = lengths, sp, cost
        self.degrees = degrees_for(sp, mode)
        n = np.asarray(lengths, dtype=np.float64)
        self.rank = np.stack([(lin + quad * n) * n for lin, quad in map(cost.rank_coefficients, self.degrees)])
        self.rows = {d: self.rank[k].tolist() for k, d in enumerate(self.degrees)}
        self.fixed = {d: cost.latency_at(d) + cost.overhead for d in self.degrees}
        holds = np.searchsorted(np.asarray(self.degrees) * budget, np.asarray(lengths, dtype=np.int64), side="left")
        self.smallest = np.asarray(self.degrees)[np.minimum(holds, len(self.degrees) - 1)]
        self.rounds_overhead = math.ceil(sum(min(x, sp * budget) for x in lengths) / (sp * budget)) * cost.overhead

    def time(self, units, degree: int) -> float:
        return sum(map(self.rows[degree].__getitem__, units)) / degree + self.fixed[degree]

    def bound(self, degree_of: np.ndarray) -> float:
        """Rank-seconds of every sample at its degree in ``degree_of``, over sp, plus the fewest rounds' overhead."""
        at = np.searchsorted(np.asarray(self.degrees), degree_of)
        return float(self.rank[at, np.arange(len(degree_of))].sum()) / self.sp + self.rounds_overhead

    def lower_bound(self) -> float:
        """Every sample at its cheapest degree of those that hold it (the smallest and up), no rank idle."""
        cheapest = np.where(np.asarray(self.degrees)[:, None] >= self.smallest[None, :], self.rank, np.inf).min(axis=0)
        return float(cheapest.sum()) / self.sp + self.rounds_overhead


def lower_bound(lengths: Sequence[int], sp: int, budget: int, mode: str, cost: CostModel) -> float:
    """Every sample at its cheapest feasible degree, perfectly packed, no rank idle: the rank-seconds / sp, plus the
    per-forward overhead of the fewest rounds that can hold the tokens (ceil(tokens / (sp x budget)), a sample over
    sp x budget counted as sp x budget: it fills a round alone)."""
    return _Table([int(n) for n in lengths], sp, budget, mode, cost).lower_bound()


def candidates(lengths: Sequence[int], sp: int, budget: int, mode: str = "fixed",
               cost: CostModel | None = None) -> list[tuple[str, tuple[tuple[Job, ...], ...] | None]]:
    """(name, rounds) of every candidate plan (module docstring), the fixed plan first; rounds slowest first. The
    list has the same length and names for any lengths of the same ``sp`` and ``mode``: groups can be compared.
    Pruned (rounds None): a candidate whose own lower bound (its degrees, perfect packing) is above the predicted
    time of a plan already made; they are made in the order of their bounds, the fixed plan first (issue 35:
    planning 8,192 samples over 64 degrees-worth of floors and lifts took 5% of the step it planned)."""
    planner = group_planner(lengths, sp, budget, mode, cost)
    planner.second(planner.first())
    raise_failures([planner.error])
    return planner.candidates()


def raise_failures(errors) -> None:
    """A PlanError naming the first failure among members' ``errors`` (None: no failure)."""
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        raise PlanError(f"SP planning failed on a rank of the group: {failed}")


class GroupPlanner:
    """One SP group's planning of its share, in two waves its ranks can share (issue 35 item 4: one group of 64
    ranks planning 8,192 samples alone took 2-3% of a 1.5B model's step, each rank repeating the same work).

    The candidates (``candidates``) are made in the order of their lower bounds, the fixed plan first, each skipped
    when its bound is above the best plan made (pruning); a candidate that repeats another's plan reuses it. With
    ``members`` > 1 the group's ranks split them: ``first`` makes the fixed plan (every member) and, of the
    ``WIDTH`` lowest-bound others, the j-th on member j % members; the group's best of that wave (an all-reduce in
    the trainer) prunes the rest, which ``second`` deals out the same way. One member alone (``members`` = 1)
    makes exactly what the sequential planner makes. Members make only their own share; ``merge_times`` joins
    their times and the winner's rounds go from its maker to the others (rlkit.parallel.micro)."""

    WIDTH = 3

    def __init__(self, table: _Table, budget: int, mode: str):
        self.table, self.budget = table, budget
        sp, degrees = table.sp, table.degrees
        # flex also lifts every sample that needs SP to the whole group, as adaptive does (issue 35: a sample just
        # over the budget at degree 2 can be slower than at degree sp, whose rounds hold no other job)
        lifts = [False, True] if len(degrees) > 2 else [False]
        self.specs = []  # (name, key of the samples' degrees, top-up, rounded)
        self.classes: dict = {None: None}  # key -> the samples' degrees (numpy); None: the dynamic rule's own
        self.bounds: dict = {None: 0.0}  # the dynamic rule has no bound of its own: always made
        self.mixed: dict = {None: False}  # top-up needs two classes
        for floor in sorted(degrees, reverse=True):
            for lift in lifts if floor < sp else [False]:
                degree_of = np.maximum(floor, np.where(table.smallest > 1, sp, table.smallest) if lift
                                       else table.smallest)
                key = degree_of.tobytes()
                if key not in self.classes:
                    self.classes[key], self.bounds[key] = degree_of, table.bound(degree_of)
                    self.mixed[key] = bool((degree_of != degree_of[:1]).any())
                variants = [(False, False)] if floor == sp else [(False, False), (True, False), (False, True),
                                                                  (True, True)]
                for top_up, rounded in variants:
                    self.specs.append(((f"floor {floor}" + (f" lift {sp}" if lift else "")
                                        + (" top-up" if top_up else "") + (" rounded" if rounded else "")),
                                       key, top_up, rounded))
        if mode == "flex" and sp > 1 and sp & (sp - 1) == 0:  # powers of two: Megatron's Dynamic CP rule as well
            self.specs.append(("dynamic", None, False, False))
        order = sorted(range(len(self.specs)), key=lambda k: (k > 0, self.bounds[self.specs[k][1]], k))
        self.plans = list(dict.fromkeys(self._plan_of(k) for k in order))  # distinct plans, fixed first
        self.made: dict = {}  # plan -> rounds
        self.best = math.inf
        self.error: str | None = None

    def _plan_of(self, k: int) -> tuple:
        _, key, top_up, rounded = self.specs[k]
        return key, top_up and self.mixed[key], rounded  # a top-up of one class is the plan without it

    def _make(self, plans: Sequence[tuple], member: int, members: int) -> None:
        """Make this member's share of ``plans``. A failure (a plan that breaks its post-condition: a bug) is kept
        in ``error``, not raised: a member that raised here would leave the rest of its group waiting in the next
        collective; every rank raises it once the times are exchanged (``pick_plans``, rlkit.parallel.micro)."""
        if self.error is not None:
            return
        collecting = gc.isenabled()
        gc.disable()  # the plans are acyclic tuples, freed by reference counts; the collector's passes over the
        try:  # process's objects took up to a third of the planning time (issue 35 item 4)
            self._make_each(plans, member, members)
        except Exception as e:  # noqa: BLE001 - carried to every rank of the group, then raised
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if collecting:
                gc.enable()

    def _make_each(self, plans: Sequence[tuple], member: int, members: int) -> None:
        for n, plan in enumerate(plans):
            key, top_up, rounded = plan
            if n % members != member or plan in self.made or self.bounds[key] > self.best * (1 + 1e-9):
                continue
            t = self.table
            rounds = _dynamic_candidate(t.lengths, t.sp, self.budget, t.cost, t.time) if key is None else \
                _schedule(_jobs(t.lengths, self.classes[key].tolist(), t.sp, self.budget, t.cost, top_up=top_up,
                                rounded=rounded, timer=t.time), t.sp)
            rounds.sort(key=lambda r: -max(j.seconds for j in r))
            check_rounds(rounds, t.lengths, t.sp, self.budget)
            self.made[plan] = tuple(tuple(r) for r in rounds)
            self.best = min(self.best, sum(round_times(rounds)))

    def first(self, member: int = 0, members: int = 1) -> float:
        """The first wave: the fixed plan and this member's share of the ``WIDTH`` lowest-bound others; the
        predicted seconds of the best plan made."""
        if not 0 <= member < members:
            raise ValueError(f"GroupPlanner: member must be in [0, {members}), got {member}")
        self._make(self.plans[:1], 0, 1)
        self._make(self.plans[1:1 + self.WIDTH], member, members)
        return self.best

    def second(self, best: float, member: int = 0, members: int = 1) -> None:
        """The rest: the plans whose bound is within ``best`` (the group's best of the first wave), this member's
        share of them, each pruned against the best so far."""
        self.best = min(self.best, best)
        left = [p for p in self.plans[1 + self.WIDTH:] if self.bounds[p[0]] <= self.best * (1 + 1e-9)]
        self._make(left, member, members)

    def candidates(self) -> list[tuple[str, tuple[tuple[Job, ...], ...] | None]]:
        """(name, rounds or None: not made here) of every candidate, in the order of ``candidates``."""
        return [(spec[0], self.made.get(self._plan_of(k))) for k, spec in enumerate(self.specs)]


def check_rounds(rounds: Sequence[Sequence[Job]], lengths: Sequence[int], sp: int, budget: int) -> None:
    """A plan's post-condition, O(n): every unit in exactly one job, no job without units, every job of two or more
    units within degree x budget tokens, and in each round the jobs on disjoint aligned blocks of the group."""
    jobs = [j for r in rounds for j in r]
    check_partition([j.units for j in jobs], len(lengths), "SP plan")
    for j in jobs:
        if len(j.units) > 1 and sum(map(lengths.__getitem__, j.units)) > j.degree * budget:
            raise PlanError(f"SP plan: a job of degree {j.degree} holds {sum(lengths[u] for u in j.units)} tokens "
                            f"> {j.degree} x {budget}")
    for k, r in enumerate(rounds):
        taken = bytearray(sp)
        for j in r:
            if j.first % j.degree or j.first + j.degree > sp or any(taken[j.first:j.first + j.degree]):
                raise PlanError(f"SP plan: round {k} puts a job of degree {j.degree} at sub-rank {j.first}, not a "
                                "free aligned block")
            taken[j.first:j.first + j.degree] = b"\x01" * j.degree


def round_times(rounds: Sequence[Sequence[Job]]) -> list[float]:
    return [max(j.seconds for j in r) for r in rounds]


def lockstep_time(groups: Sequence[Sequence[float]]) -> float:
    """Seconds of SP groups' rounds run in lock-step (round r of every group together): sum over r of the max."""
    return sum(max((g[r] for g in groups if r < len(g)), default=0.0) for r in range(max(map(len, groups), default=0)))


def choose(options: Sequence[Sequence[Sequence[float]]]) -> list[int]:
    """Which candidate each SP group runs, ``options[g][c]`` being group g's candidate c's round times: the common
    candidate with the least lock-step time (candidate 0, the fixed plan, wins ties), then one pass in which each
    group moves to the candidate that lowers the lock-step time most. Never predicted slower than fixed SP."""
    count = len(options[0])
    joint = [lockstep_time([opts[c] for opts in options]) for c in range(count)]
    pick = [min(range(count), key=lambda c: (joint[c] * (1 + 1e-9) if c else joint[c], c))] * len(options)
    best = joint[pick[0]]
    for g in range(len(options)):
        for c in range(count):
            trial = pick[:g] + [c] + pick[g + 1:]
            t = lockstep_time([options[h][trial[h]] for h in range(len(options))])
            if t < best * (1 - 1e-9):
                pick, best = trial, t
    return pick


@dataclass(frozen=True)
class GroupOptions:
    """What one SP group (or one member of it: ``group_options(member=, members=)``) plans on its own share: every
    candidate, their round times (what the groups exchange to choose together; [inf]: not made here) and the lower
    bound. ``plan(k)`` is candidate k as a GroupPlan."""

    candidates: list
    times: list[list[float]]
    bound: float
    error: str | None = None  # a member's failure (GroupPlanner._make), raised by every rank after the exchange

    def plan(self, k: int) -> GroupPlan:
        name, rounds = self.candidates[k]
        return GroupPlan(rounds, sum(self.times[k]), self.bound, name)


def group_options(lengths: Sequence[int], sp: int, budget: int, mode: str = "fixed", cost: CostModel | None = None,
                  *, member: int = 0, members: int = 1, exchange=None) -> GroupOptions:
    """One group's candidates (each checked: check_rounds), their round times and the lower bound; with ``members``
    > 1, member ``member``'s share of them (GroupPlanner), ``exchange(best)`` giving the group's best of the
    first wave (the minimum over its members; None: this member's own)."""
    planner = group_planner(lengths, sp, budget, mode, cost)
    best = planner.first(member, members)
    planner.second(exchange(best) if exchange is not None else best, member, members)
    return options_of(planner)


def options_of(planner: GroupPlanner) -> GroupOptions:
    """A planner's GroupOptions after its waves."""
    cands = planner.candidates()
    return GroupOptions(cands, [round_times(r) if r is not None else [math.inf] for _, r in cands],
                        planner.table.lower_bound(), planner.error)


def group_planner(lengths: Sequence[int], sp: int, budget: int, mode: str = "fixed",
                  cost: CostModel | None = None) -> GroupPlanner:
    """A GroupPlanner of one group's share (``first`` and ``second`` to run it, ``options_of`` to read it)."""
    if sp < 1 or budget < 1:
        raise ValueError(f"plan_group: sp and budget must be >= 1, got {sp} and {budget}")
    return GroupPlanner(_Table([int(n) for n in lengths], sp, budget, mode, cost or CostModel()), budget, mode)


def merge_times(parts: Sequence[Sequence[Sequence[float]]]) -> tuple[list[list[float]], list[int]]:
    """A group's round times from its members' (``group_options(member=m, members=len(parts))``, in member order):
    each candidate's from the first member that made it ([inf] where none did: pruned), and that member (0 where
    none did)."""
    times, makers = [], []
    for k in range(len(parts[0])):
        m = next((m for m, p in enumerate(parts) if list(p[k]) != [math.inf]), 0)
        times.append(list(parts[m][k]))
        makers.append(m)
    return times, makers


def pick_plans(options: Sequence[Sequence[GroupOptions]]) -> list[GroupPlan]:
    """The plans of SP groups that run in lock-step, chosen together (``choose``); ``options[g]`` holds group g's
    members' options (one when a single rank planned for the group). A member's failure is raised here."""
    raise_failures(o.error for members in options for o in members)
    merged = [merge_times([o.times for o in members]) for members in options]
    pick = choose([times for times, _ in merged])
    return [members[makers[k]].plan(k) for members, (_, makers), k in zip(options, merged, pick)]


def plan_groups(shares: Sequence[Sequence[int]], sp: int, budget: int, mode: str = "fixed",
                cost: CostModel | None = None, *, members: int = 1) -> list[GroupPlan]:
    """Plans for SP groups that run in lock-step, one per share of lengths, chosen together (``choose``): what the
    trainer runs (rlkit.parallel.micro: each group's ``sp`` ranks share its planning, ``members`` here, the
    group's best of the first wave exchanged, and the groups exchange the times). Per group, shared planning picks
    a plan as fast as one planner's; with several groups its members may also make plans one planner would have
    pruned, so the joint choice can differ (never predicted slower than fixed SP either way)."""
    options = []
    for share in shares:
        planners = [group_planner(share, sp, budget, mode, cost) for _ in range(members)]
        best = min(p.first(m, members) for m, p in enumerate(planners))
        for m, p in enumerate(planners):
            p.second(best, m, members)
        options.append([options_of(p) for p in planners])
    return pick_plans(options)


def plan_group(lengths: Sequence[int], sp: int, budget: int, mode: str = "fixed",
               cost: CostModel | None = None) -> GroupPlan:
    """The lock-step rounds that train every unit of ``lengths`` (tokens) once in an SP group of ``sp`` ranks with
    ``budget`` tokens per rank, predicted fastest under ``cost`` among the candidates (module docstring)."""
    return plan_groups([lengths], sp, budget, mode, cost)[0]


__all__ = ["MODES", "CostModel", "GroupOptions", "GroupPlan", "GroupPlanner", "Job", "attention_ratio", "candidates",
           "check_rounds", "choose", "degrees_for", "dynamic_cp_rounds", "exchange_heads", "group_options",
           "group_planner", "head_padding", "lockstep_time", "lower_bound", "merge_times", "options_of",
           "pick_plans", "plan_group", "plan_groups", "raise_failures", "round_times"]
