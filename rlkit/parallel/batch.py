"""The micro-batch record: token rows (one packed row, or right-padded rows) with the scatter indices of the scored
tokens, how samples become one (``collate``), and a rank's shard of a packed row under sequence parallelism
(``shard_micro_batch``). It lives in ``rlkit.parallel`` because sharding it is what sequence parallelism does; the
trainer's policy (rlkit.trainers.batch.LogprobPolicy) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rlkit.kernels.packing import pack_sequences
from rlkit.parallel import ulysses
from rlkit.records import Sample

_TENSORS = ("input_ids", "attention_mask", "position_ids", "cu_seqlens", "completion_mask", "score_rows",
            "score_pos", "score_sample", "score_cols", "score_targets")


@dataclass
class MicroBatch:
    """Token rows (one packed row, or right-padded rows) plus the scatter indices of the scored tokens.

    Scored token k sits in row ``score_rows[k]`` at position ``score_pos[k]``; its logprob goes to
    completion space at ``[score_sample[k], score_cols[k]]``.
    """

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor | None  # [R, L] for padded rows; None when packed
    position_ids: torch.Tensor | None  # [R, L] restarting per sequence when packed; None when padded
    cu_seqlens: torch.Tensor | None  # [n + 1] int32 sequence boundaries of the packed row
    completion_mask: torch.Tensor  # [B, C] float, 1 on real completion tokens
    score_rows: torch.Tensor  # [K]
    score_pos: torch.Tensor  # [K]
    score_sample: torch.Tensor  # [K]
    score_cols: torch.Tensor  # [K]
    score_targets: torch.Tensor  # [K]
    num_tokens: int  # real (prompt + completion) tokens
    max_seqlen: int = 0  # longest sequence (packed rows)
    sp_degree: int = 1  # > 1: this rank's shard of the row, one of sp_degree (sequence parallelism); cu_seqlens stay
    # the whole row's

    @property
    def sharded(self) -> bool:
        return self.sp_degree > 1

    def to(self, device) -> MicroBatch:
        moved = {f: (getattr(self, f).to(device) if getattr(self, f) is not None else None) for f in _TENSORS}
        return replace(self, **moved)


def shard_micro_batch(mb: MicroBatch, sp: int, rank: int) -> MicroBatch:
    """Rank's contiguous 1/sp of a packed micro-batch (the row padded to a multiple of sp, ulysses.shard_row),
    keeping only the scored tokens whose predicting position (score_pos - 1) is in the shard."""
    if mb.cu_seqlens is None:
        raise ValueError("sequence parallelism needs packed micro-batches (optim.packing: true)")
    start, end = ulysses.shard_bounds(mb.input_ids.shape[1], sp, rank)
    mine = (mb.score_pos - 1 >= start) & (mb.score_pos - 1 < end)
    return replace(mb, input_ids=ulysses.shard_row(mb.input_ids, sp, rank),
                   position_ids=ulysses.shard_row(mb.position_ids, sp, rank), score_rows=mb.score_rows[mine],
                   score_pos=mb.score_pos[mine] - start, score_sample=mb.score_sample[mine],
                   score_cols=mb.score_cols[mine], score_targets=mb.score_targets[mine], sp_degree=sp)


def collate(samples: list[Sample], pad_id: int, packed: bool = True) -> MicroBatch:
    """Samples -> one packed row (default) or right-padded rows, with the scored-token indices."""
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    cmax = max(1, max(len(s.completion_ids) for s in samples))
    cmask = torch.zeros((len(samples), cmax), dtype=torch.float32)
    rows, pos, sample_idx, cols, targets = [], [], [], [], []
    offset = 0
    for i, s in enumerate(samples):
        c, p = len(s.completion_ids), len(s.prompt_ids)
        cmask[i, :c] = 1.0
        start = offset if packed else 0
        rows += [0 if packed else i] * c
        pos += range(start + p, start + p + c)
        sample_idx += [i] * c
        cols += range(c)
        targets += s.completion_ids
        offset += p + c
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    scored = (as_long(rows), as_long(pos), as_long(sample_idx), as_long(cols), as_long(targets))
    if packed:
        ids, position_ids, cu, longest = pack_sequences(seqs)
        return MicroBatch(ids, None, position_ids, cu, cmask, *scored, num_tokens=offset, max_seqlen=longest)
    width = max(len(q) for q in seqs)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(samples), width), dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = torch.tensor(q, dtype=torch.long)
        att[i, :len(q)] = 1
    return MicroBatch(ids, att, None, None, cmask, *scored, num_tokens=offset, max_seqlen=width)
