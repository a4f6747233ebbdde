"""Packing and balancing of variable-length samples: pure functions, no torch.distributed, no model.

Vocabulary. A *unit* is what must stay together: one sample, or a whole group when the loss is
sequence-level over groups (DRPO, ``needs_whole_groups``). A *micro-batch* is a list of unit indices
that goes through one forward/backward. A *packed row* concatenates the micro-batch's sequences with
no padding between them; ``position_ids`` restart at 0 for each sequence and ``cu_seqlens`` marks the
boundaries, so the attention kernel (rlkit.kernels.attention) never lets one sample see another.

Balancing uses a cost model ``cost(L) = a*L + b*L^2`` per sequence (linear layers ~ L, attention ~ L^2)
and the Karmarkar-Karp largest-differencing method for k-way partitions (verl balances the same way,
in its seqlen_balancing module; this is our own implementation).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch


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
        spread = max(p[0] for p in merged) - min(p[0] for p in merged)
        heapq.heappush(heap, (-spread, counter, merged))
        counter += 1
    parts = heap[0][2]
    return sorted((sorted(p[1]) for p in parts), key=lambda p: (not p, p[0] if p else 0))


def plan_micro_batches(unit_lengths: Sequence[int], max_tokens: int, *, min_count: int = 1,
                       a: float = 1.0, b: float = 0.0) -> list[list[int]]:
    """Split units into micro-batches of at most ``max_tokens`` tokens each, balanced by cost.

    Starts from ``max(ceil(total / max_tokens), min_count)`` micro-batches, partitions with
    Karmarkar-Karp, and adds one micro-batch at a time until every micro-batch fits (a single unit longer
    than the budget goes alone). ``min_count`` lets all data-parallel ranks run the same number of
    forwards (ZeRO-3 / FSDP gather parameters in every forward). Empty micro-batches are returned only
    when ``min_count`` exceeds the number of units. Each micro-batch lists unit indices in ascending order.
    """
    if max_tokens < 1:
        raise ValueError(f"plan_micro_batches: max_tokens must be >= 1, got {max_tokens}")
    n = len(unit_lengths)
    if n == 0:
        return [[] for _ in range(min_count)]
    total = sum(unit_lengths)
    k = max(math.ceil(total / max_tokens), min_count, 1)
    costs = [sequence_cost(length, a, b) for length in unit_lengths]
    while True:
        parts = karmarkar_karp(costs, min(k, n))
        over = [p for p in parts if len(p) > 1 and sum(unit_lengths[i] for i in p) > max_tokens]
        if not over or k >= n:
            break
        k += 1
    parts = [p for p in parts if p]
    # order micro-batches by their first unit, so a plan of already-sorted units reads naturally
    parts.sort(key=lambda p: p[0])
    return parts + [[] for _ in range(max(0, min_count - len(parts)))]


def balance_across_ranks(unit_costs: Sequence[float], world: int) -> list[list[int]]:
    """Unit indices for each of ``world`` data-parallel ranks, cost sums balanced (Karmarkar-Karp)."""
    return karmarkar_karp(unit_costs, world)


def restore_order(chunks: Sequence[Sequence[int]], values: Sequence) -> list:
    """Inverse of a partition: ``values[j]`` belongs to the j-th item of the concatenated ``chunks``;
    return the values in the original item order (every item must appear exactly once)."""
    flat = [i for chunk in chunks for i in chunk]
    if sorted(flat) != list(range(len(flat))):
        raise ValueError("restore_order: the chunks are not a partition of 0..n-1")
    out = [None] * len(flat)
    for j, i in enumerate(flat):
        out[i] = values[j]
    return out


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
