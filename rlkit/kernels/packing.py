"""Packing and balancing of variable-length samples: pure functions, no torch.distributed, no model.

Vocabulary. A *unit* is what must stay together: one sample, or a whole group when the loss is
sequence-level over groups (DRPO, a loss declaring ``whole_groups``). A *micro-batch* is a list of unit indices
that goes through one forward/backward. A *packed row* concatenates the micro-batch's sequences with
no padding between them; ``position_ids`` restart at 0 for each sequence and ``cu_seqlens`` marks the
boundaries, so the attention kernel (rlkit.kernels.attention) never lets one sample see another.

Balancing uses a cost model ``cost(L) = a*L + b*L^2`` per sequence (linear layers ~ L, attention ~ L^2).
Two partitioners, chosen by the size of the problem (``n`` items into ``k`` parts):

- Karmarkar-Karp's largest-differencing method (verl balances the same way, in its seqlen_balancing module; this
  is our own implementation): the better balance, but O(n k log k) Python work per call. Used while
  ``n * k <= KK_LIMIT`` (a few thousand samples per rank at 16k-token budgets stay under it only for small k).
- Greedy LPT (longest processing time first, Graham 1969: a 4/3 - 1/(3k) approximation of the heaviest part):
  items by cost, each to the lightest part that has room for its tokens (a heap), a new part opened when none
  of the lightest few has room. O(n log n + n log k): 8,192 samples plan in well under 0.2 s.

``plan_micro_batches`` takes its micro-batch count from best-fit-decreasing bin packing (O(n log n); within a
micro-batch of the lower bound ceil(total / budget) on RL length distributions), then balances the cost over that
many micro-batches with one partition; it never re-partitions once per extra micro-batch.
``STATS`` counts partition calls and item placements (the planner tests check work, not seconds).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections.abc import Sequence

import numpy as np
import torch

KK_LIMIT = 20_000  # n * k up to which Karmarkar-Karp partitions; above it the greedy
GREEDY_PROBES = 32  # lightest parts the greedy tries for an item before it opens a new part
REBALANCE_PROBES = 16  # lightest parts a rebalancing step tries
STATS = {"kk_calls": 0, "kk_merges": 0, "greedy_calls": 0, "greedy_probes": 0, "rebalance_calls": 0,
         "rebalance_steps": 0}  # work counters (tests)


def sequence_cost(length: int, a: float = 1.0, b: float = 0.0) -> float:
    """Cost model of one sequence: a*L + b*L^2."""
    return a * length + b * length * length


def karmarkar_karp(costs: Sequence[float], k: int) -> list[list[int]]:
    """Partition item indices into k lists with near-equal cost sums (largest differencing method).

    Each item starts as a k-tuple of subsets (itself in one, the rest empty). Repeatedly take the two
    tuples with the largest spread (max sum - min sum) and merge them, pairing the heaviest subset of one
    with the lightest of the other. Deterministic: ties break on insertion order. Returns k lists
    (some may be empty when there are fewer than k items), each sorted ascending.
    """
    if k < 1:
        raise ValueError(f"karmarkar_karp: k must be >= 1, got {k}")
    STATS["kk_calls"] += 1
    heap: list = []
    for n, (i, c) in enumerate(sorted(enumerate(costs), key=lambda x: -x[1])):
        parts = [(float(c), [i])] + [(0.0, []) for _ in range(k - 1)]
        heapq.heappush(heap, (-float(c), n, parts))
    if not heap:
        return [[] for _ in range(k)]
    counter = len(heap)
    while len(heap) > 1:
        _, _, first = heapq.heappop(heap)
        _, _, second = heapq.heappop(heap)
        first = sorted(first, key=lambda p: -p[0])  # heaviest first
        second = sorted(second, key=lambda p: p[0])  # lightest first
        merged = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(first, second)]
        STATS["kk_merges"] += 1
        spread = max(p[0] for p in merged) - min(p[0] for p in merged)
        heapq.heappush(heap, (-spread, counter, merged))
        counter += 1
    parts = heap[0][2]
    return sorted((sorted(p[1]) for p in parts), key=lambda p: (not p, p[0] if p else 0))


def greedy_partition(costs: Sequence[float], k: int, sizes: Sequence[float] | None = None,
                     cap: float | None = None) -> list[list[int]]:
    """LPT: items by cost (heaviest first, ties by index), each to the lightest of the ``k`` parts. With ``cap``,
    an item goes to the lightest part whose ``sizes`` sum stays within ``cap`` (of the ``GREEDY_PROBES`` lightest),
    else to a new part; an item larger than ``cap`` gets a part of its own. Deterministic. Returns the parts
    (at least ``k``; some empty when there are fewer items), each sorted ascending."""
    if k < 1:
        raise ValueError(f"greedy_partition: k must be >= 1, got {k}")
    STATS["greedy_calls"] += 1
    parts: list[list[int]] = [[] for _ in range(k)]
    used = [0.0] * k
    heap = [(0.0, p) for p in range(k)]  # (cost so far, part)
    probes = 0
    for i in sorted(range(len(costs)), key=costs.__getitem__, reverse=True):  # stable: ties by index
        size = sizes[i] if sizes is not None else 0.0
        if heap:  # the lightest part has room: one sift instead of a pop and a push
            load, p = heap[0]
            if cap is None or used[p] + size <= cap or not parts[p] and size > cap:
                probes += 1
                heapq.heapreplace(heap, (load + costs[i], p))
                parts[p].append(i)
                used[p] += size
                continue
        tried, home = [], None
        while heap and len(tried) < GREEDY_PROBES:
            load, p = heapq.heappop(heap)
            probes += 1
            if cap is None or used[p] + size <= cap or not parts[p] and size > cap:
                home = (load, p)
                break
            tried.append((load, p))
        for item in tried:
            heapq.heappush(heap, item)
        if home is None:  # nothing light enough has room: a new part
            parts.append([])
            used.append(0.0)
            home = (0.0, len(parts) - 1)
        load, p = home
        parts[p].append(i)
        used[p] += size
        heapq.heappush(heap, (load + costs[i], p))
    STATS["greedy_probes"] += probes
    return [sorted(p) for p in parts]


def best_fit_decreasing(sizes: Sequence[float], cap: float) -> list[list[int]]:
    """Bin packing by tokens: items longest first, each into the fullest part it still fits (a part of its own when
    it is larger than ``cap``). Few parts (at most 11/9 of the optimum + 1), no balance. O(n log n)."""
    STATS["greedy_calls"] += 1
    parts: list[list[int]] = []
    free: list[tuple[float, int]] = []  # (room left, part), ascending
    STATS["greedy_probes"] += len(sizes)
    for i in sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True):  # stable: ties by index
        j = bisect.bisect_left(free, (sizes[i], -1))
        if j < len(free):
            room, p = free.pop(j)
            parts[p].append(i)
            bisect.insort(free, (room - sizes[i], p))
        else:
            parts.append([i])
            if sizes[i] < cap:
                bisect.insort(free, (cap - sizes[i], len(parts) - 1))
    return [sorted(p) for p in parts]


def rebalance(parts: Sequence[Sequence[int]], costs: Sequence[float], sizes: Sequence[float], cap: float, k: int,
              *, tol: float = 2e-3) -> list[list[int]]:
    """Local search on a partition within ``cap``: ``k`` parts, none empty while a part holds two items, and the
    heaviest movable part (two or more items: a single item is as light as its part gets) made lighter by moving
    one of its items to, or swapping one with, one of the ``REBALANCE_PROBES`` lightest parts with room, as long
    as a move lowers it. Each step moves cost d (0 < d < the two parts' gap) from the heavier to the lighter part, so
    the sum of squared loads falls and the search ends; it also stops when the heaviest movable part is within
    ``tol`` of the mean load, or after ``2 k`` steps. Every part of two or more items stays within
    ``cap``. Deterministic. Why (issue 35): under a tight budget the capped greedy runs out of parts with room and
    the bin packing it falls back to is unbalanced (max/mean cost 1.14 at DLER-like lengths) and may hold fewer
    parts than were asked for."""
    STATS["rebalance_calls"] += 1
    parts = [list(p) for p in parts if p]
    parts += [[] for _ in range(k - len(parts))]
    load = [sum(map(costs.__getitem__, p)) for p in parts]
    used = [sum(map(sizes.__getitem__, p)) for p in parts]
    order = sorted((load[p], p) for p in range(len(parts)))  # ascending load

    def shift(p: int, out: int | None, into: int | None) -> None:
        del order[bisect.bisect_left(order, (load[p], p))]
        if out is not None:
            parts[p].remove(out)
            load[p] -= costs[out]
            used[p] -= sizes[out]
        if into is not None:
            parts[p].append(into)
            load[p] += costs[into]
            used[p] += sizes[into]
        bisect.insort(order, (load[p], p))

    while order[0][0] == 0.0 and not parts[order[0][1]]:  # an empty part: the costliest item of the heaviest part
        donor = next((p for _, p in reversed(order) if len(parts[p]) > 1), None)  # that has two
        if donor is None:
            break
        item = max(parts[donor], key=lambda i: (costs[i], -i))
        empty = order[0][1]
        shift(donor, item, None)
        shift(empty, None, item)
    mean = sum(load) / max(len(parts), 1)
    for _ in range(2 * k):
        STATS["rebalance_steps"] += 1
        heavy, h = next(((w, p) for w, p in reversed(order) if len(parts[p]) > 1), (0.0, -1))
        if h < 0 or heavy <= (1 + tol) * mean:
            break
        probes = []
        for light, q in order[:REBALANCE_PROBES]:
            if q == h or light >= heavy:
                break
            probes.append((light, q))
        if len(parts[h]) * sum(len(parts[q]) for _, q in probes) > 4096:  # big parts: the same search in numpy
            best = _best_exchange(parts, probes, h, heavy, costs, sizes, used, cap)
        else:
            best = None  # (the heavier of the two new loads, light part, item out of h, item out of the light part
            for light, q in probes:  # or -1)
                gap, room = heavy - light, cap - used[q]
                for i in parts[h]:
                    if 0 < costs[i] < gap and sizes[i] <= room:
                        cand = (max(heavy - costs[i], light + costs[i]), q, i, -1)
                        best = min(best or cand, cand)
                    for j in parts[q]:
                        d = costs[i] - costs[j]
                        if 0 < d < gap and sizes[i] - sizes[j] <= room and used[h] - sizes[i] + sizes[j] <= cap:
                            cand = (max(heavy - d, light + d), q, i, j)
                            best = min(best or cand, cand)
        if best is None:
            break
        _, q, i, j = best
        shift(h, i, j if j >= 0 else None)
        shift(q, j if j >= 0 else None, i)
    return [sorted(p) for p in parts]


def _best_exchange(parts, probes, h, heavy, costs, sizes, used, cap):
    """``rebalance``'s search of one step over every move and swap between part ``h`` and the ``probes`` ((load,
    part), lightest first), as arrays: the same candidates, the same arithmetic and the same least (heavier new load,
    part, item of h, item of the light part or -1), so the same choice as the loop (issue 35 item 4: parts of
    hundreds of samples made the loop quadratic). None when no exchange lowers the heavier part."""
    mine = np.asarray(parts[h], dtype=np.int64)
    ci, si = np.asarray([costs[i] for i in mine], dtype=np.float64), np.asarray([sizes[i] for i in mine], dtype=np.float64)
    best = None
    for light, q in probes:
        gap, room = heavy - light, cap - used[q]
        ok = (ci > 0) & (ci < gap) & (si <= room)  # moves
        if ok.any():
            value = np.maximum(heavy - ci, light + ci)
            low = value[ok].min()
            i = int(mine[ok & (value == low)].min())
            best = min(best or (float(low), q, i, -1), (float(low), q, i, -1))
        if parts[q]:
            theirs = np.asarray(parts[q], dtype=np.int64)
            cj = np.asarray([costs[j] for j in theirs], dtype=np.float64)
            sj = np.asarray([sizes[j] for j in theirs], dtype=np.float64)
            d = ci[:, None] - cj[None, :]
            ok = (d > 0) & (d < gap) & (si[:, None] - sj[None, :] <= room) & (used[h] - si[:, None] + sj[None, :] <= cap)
            if ok.any():
                value = np.maximum(heavy - d, light + d)
                low = value[ok].min()
                rows, cols = np.nonzero(ok & (value == low))
                pairs = sorted(zip(mine[rows].tolist(), theirs[cols].tolist()))
                cand = (float(low), q, pairs[0][0], pairs[0][1])
                best = min(best or cand, cand)
    return best


def _fits(parts: list[list[int]], lengths: Sequence[int], max_tokens: int) -> bool:
    return all(len(p) <= 1 or sum(map(lengths.__getitem__, p)) <= max_tokens for p in parts)


class PlanError(RuntimeError):
    """A planner or balancer broke its post-condition (a bug in rlkit, never the user's input)."""


def check_partition(parts: Sequence[Sequence[int]], n: int, what: str, *, sizes: Sequence[float] | None = None,
                    cap: float | None = None, empty_ok: bool = False) -> None:
    """The post-condition every planner and balancer checks, in O(n): each of the ``n`` indices in exactly one
    part, no empty part (unless ``empty_ok``: more parts were asked for than there are items), and with ``cap``
    every part of two or more items within it (a single item over the cap goes alone)."""
    seen = bytearray(n)
    for k, part in enumerate(parts):
        if not part and not empty_ok:
            raise PlanError(f"{what}: part {k} of {len(parts)} is empty")
        for i in part:
            if not 0 <= i < n or seen[i]:
                raise PlanError(f"{what}: item {i} is {'out of range' if not 0 <= i < n else 'in two parts'}")
            seen[i] = 1
        if cap is not None and len(part) > 1 and sum(map(sizes.__getitem__, part)) > cap:
            raise PlanError(f"{what}: part {k} holds {sum(sizes[i] for i in part)} > {cap}")
    if sum(seen) != n:
        raise PlanError(f"{what}: {n - sum(seen)} of {n} items are in no part")


def plan_micro_batches(unit_lengths: Sequence[int], max_tokens: int, *, min_count: int = 1,
                       a: float = 1.0, b: float = 0.0) -> list[list[int]]:
    """Split units into micro-batches of at most ``max_tokens`` tokens each, balanced by cost.

    The count is the larger of ``min_count`` and what best-fit-decreasing needs; the units are then balanced by
    cost over that many micro-batches (Karmarkar-Karp for small problems, the capped greedy for large ones; the
    bin packing itself when neither fits). A single unit longer than the budget goes alone.
    ``min_count`` lets all data-parallel ranks run the same number of forwards (ZeRO-3 / FSDP gather parameters
    in every forward). Empty micro-batches are returned only when ``min_count`` exceeds the count the plan needs.
    Each micro-batch lists unit indices in ascending order; the plan is a pure function of its arguments (the
    same on every rank) and cached, so the scoring passes and the update of a step plan once."""
    if max_tokens < 1:
        raise ValueError(f"plan_micro_batches: max_tokens must be >= 1, got {max_tokens}")
    return [list(p) for p in _plan(tuple(int(n) for n in unit_lengths), int(max_tokens), int(min_count),
                                   float(a), float(b))]


@functools.lru_cache(maxsize=64)
def _plan(lengths: tuple[int, ...], max_tokens: int, min_count: int, a: float, b: float) -> tuple[tuple[int, ...], ...]:
    n = len(lengths)
    if n == 0:
        return tuple(() for _ in range(min_count))
    # the count: what bin packing reaches (near the lower bound ceil(total / budget)), or min_count
    packed = [list(p) for p in _packed(lengths, max_tokens)]
    k = min(max(planned_count(lengths, max_tokens), min_count), n)
    costs = [sequence_cost(length, a, b) for length in lengths]
    # then balance the cost over that many micro-batches: Karmarkar-Karp when small, else the capped greedy;
    # when neither fits them all in k, the bin packing itself (fewest forwards first, balance second)
    parts = karmarkar_karp(costs, k) if n * k <= KK_LIMIT else None
    if parts is None or not _fits(parts, lengths, max_tokens):
        parts = greedy_partition(costs, k, lengths, max_tokens)
        if sum(1 for p in parts if p) > k:
            parts = packed
        # the capped greedy (and the bin packing) can leave parts unbalanced or, under a tight budget, fewer than k
        # of them: local search fills and balances them (issue 35)
        parts = rebalance(parts, costs, lengths, max_tokens, k)
    parts = [p for p in parts if p]
    # order micro-batches by their first unit, so a plan of already-sorted units reads naturally
    parts.sort(key=lambda p: p[0])
    parts += [[] for _ in range(max(0, min_count - len(parts)))]
    # empty micro-batches only where min_count asks for more than there are units
    check_partition(parts, n, "plan_micro_batches", sizes=lengths, cap=max_tokens, empty_ok=min_count > n)
    return tuple(tuple(p) for p in parts)


@functools.lru_cache(maxsize=64)
def _packed(lengths: tuple[int, ...], max_tokens: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p) for p in best_fit_decreasing(lengths, max_tokens))


def planned_count(unit_lengths: Sequence[int], max_tokens: int) -> int:
    """How many micro-batches ``plan_micro_batches`` plans for (before ``min_count``): what best-fit-decreasing
    needs, at least ceil(tokens / max_tokens), at most one per unit (1 for none), without balancing them."""
    lengths = tuple(int(n) for n in unit_lengths)
    if not lengths:
        return 1
    return min(max(math.ceil(sum(lengths) / max_tokens), len(_packed(lengths, int(max_tokens))), 1), len(lengths))


def balance_across_ranks(unit_costs: Sequence[float], world: int) -> list[list[int]]:
    """Unit indices for each of ``world`` data-parallel ranks, cost sums balanced (Karmarkar-Karp for small
    problems, the greedy for large ones)."""
    parts = karmarkar_karp(unit_costs, world) if len(unit_costs) * world <= KK_LIMIT else \
        greedy_partition(unit_costs, world)
    check_partition(parts, len(unit_costs), "balance_across_ranks", empty_ok=len(unit_costs) < world)
    return parts


def pack_sequences(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Concatenate token lists into one row.

    Returns ``input_ids [1, T]``, ``position_ids [1, T]`` (restarting at 0 for each sequence),
    ``cu_seqlens [n + 1]`` int32 (start offsets plus the total) and the longest sequence length.
    """
    lengths = [len(s) for s in seqs]
    if any(n == 0 for n in lengths):
        raise ValueError(f"pack_sequences: sequence {lengths.index(0)} is empty")
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long).unsqueeze(0)
    pos = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]).unsqueeze(0)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return ids, pos, cu, max(lengths)
