"""Ulysses sequence parallelism over packed rows (issue 12, first slice: the attention exchange and sharding).

A packed row (rlkit.kernels.packing) of T tokens is padded to a multiple of the SP degree P and cut into P
contiguous shards; rank r of the SP group runs the whole model on shard r. Everything but attention is
per-token (embeddings, norms, MLP, rotary with the global ``position_ids``, the LM head), so only attention
needs the other shards: it exchanges heads for sequence with an all-to-all (each rank then holds the full
row for H/P heads), runs rlkit's exact per-sequence attention with the row's global ``cu_seqlens``, and
exchanges back (DeepSpeed-Ulysses, Jacobs et al. 2023; ALST, arXiv 2506.13996). The backward of each
all-to-all is the opposite all-to-all, so gradients are exact; parameter gradients are summed over the SP
group like a data-parallel all-reduce.

Grouped KV heads: when the KV head count divides by P, KV heads are split like query heads (query head block
r uses KV head block r); otherwise KV heads are repeated up to the query head count first.

Any degree P, whatever the head count (issue 24): when P does not divide the query heads H (the 12 heads of
Qwen2.5-1.5B or the 28 of the 7B over 8 ranks), the heads are padded with zero heads up to the next multiple of P
(KV heads repeated to one per query head first), exchanged and attended like real ones, and dropped after the
exchange back: rank r holds ceil(H/P) head slots, some of them empty. A zero head attends uniformly over zero
values, so it outputs zeros and takes no gradient: the result is exact. Why this and not ring attention over the
remainder (USP's 2-D scheme): the group runs in lock step, so its time is its busiest rank's, ceil(H/P) heads,
under an uneven split as under padding; padding keeps one exchange and one kernel call per layer, where a ring
adds P-step exchanges inside attention and a second attention kernel path. The cost is the exchange volume and
attention work of the empty slots: (ceil(H/P) P - H) / H more, e.g. 33% for 12 heads on 8 ranks, 14% for 28.

Why our own and not DeepSpeed's ``UlyssesSPAttentionHF``: it needs DeepSpeed installed and initialised (not
installable on the GPU machines this project is lent), and it shards a batch of equal-length rows, while RL
trains packed rows whose sequence boundaries (``cu_seqlens``) must reach the attention kernel; here the
exchange is ~60 lines around the existing varlen kernel.

Switched on at set-up (architecture rule 8): the trainer's ``LogprobPolicy`` is given a ``RowSharding`` with its
process groups once (one per degree, rlkit.parallel.layout) and, for a micro-batch that is a shard of a row at degree d
(rlkit.parallel.batch.shard_micro_batch), passes the block of d as ``sp_group`` with the
attention keyword arguments (``cu_seq_lens_q`` etc.) that transformers already hands to every attention
layer, so activation checkpointing's recomputation sees it too. Without ``sp_group`` the attention is plain
varlen attention: under adaptive or flex plans (rlkit.parallel.plan) unsharded micro-batches run on the same model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlkit.kernels import attention as varlen

NAME = "rlkit_ulysses"
_registered = False


def shard_bounds(total: int, sp: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's shard of a row of ``total`` tokens padded to a multiple of ``sp``."""
    size = -(-total // sp)
    return rank * size, (rank + 1) * size


def shard_row(row: torch.Tensor, sp: int, rank: int, pad: int = 0) -> torch.Tensor:
    """Rank's shard of a ``[1, T]`` row (input ids, position ids, labels), padded at the end with ``pad``."""
    start, end = shard_bounds(row.shape[1], sp, rank)
    padded = F.pad(row, (0, sp * (end - start) - row.shape[1]), value=pad)
    return padded[:, start:end]


class _Exchange(torch.autograd.Function):
    """One all-to-all with the opposite one as its backward. ``to_heads``: [S, H, D] (this rank's sequence
    shard, all heads) -> [P*S, H/P, D] (the whole row, this rank's heads); otherwise the inverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, to_heads: bool) -> torch.Tensor:
        ctx.group, ctx.to_heads = group, to_heads
        return (_seq_to_heads if to_heads else _heads_to_seq)(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (_heads_to_seq if ctx.to_heads else _seq_to_heads)(grad.contiguous(), ctx.group), None, None


def _seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    sp = dist.get_world_size(group)
    s, h, d = x.shape
    send = x.reshape(s, sp, h // sp, d).transpose(0, 1).contiguous()  # chunk j: my shard, head block j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # chunk i: shard i, my head block
    return recv.reshape(sp * s, h // sp, d)


def _heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    sp = dist.get_world_size(group)
    t, hp, d = x.shape
    send = x.reshape(sp, t // sp, hp, d).contiguous()  # chunk i: shard i, my head block
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # chunk j: my shard, head block j
    return recv.transpose(0, 1).reshape(t // sp, sp * hp, d)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce (sum) of per-rank partial results whose backward is the identity: every rank of the group then
    computes the same loss from the same sum, and each sends the loss's gradient only into its own part, so
    the group's gradients together count every element once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_group(x: torch.Tensor, group) -> torch.Tensor:
    """Sum of every rank's ``x`` (each element owned by one rank, zero elsewhere), differentiable as above."""
    return _SumOverGroup.apply(x, group)


def ulysses_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                      sp_group=None, **kwargs):
    """transformers attention-interface signature. With ``sp_group``: query ``[1, H, S, D]`` and key/value
    ``[1, Hkv, S, D]`` are this rank's shard and ``cu_seq_lens_q`` are the boundaries of the whole (unpadded)
    row. Returns ``([1, S, H, D], None)``."""
    if sp_group is None or cu_seq_lens_q is None:
        return varlen.varlen_attention(module, query, key, value, attention_mask, dropout, scaling,
                                       cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, **kwargs)
    sp = dist.get_world_size(sp_group)
    h, hkv = query.shape[1], key.shape[1]
    if hkv % sp or h % sp:  # too few KV heads to split: give every query head its own copy
        key, value = (x.repeat_interleave(h // hkv, dim=1) for x in (key, value))
    pad = -h % sp
    if pad:  # zero heads up to a multiple of sp (module docstring), dropped after the exchange back
        query, key, value = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (query, key, value))
    q, k, v = (_Exchange.apply(x[0].transpose(0, 1).contiguous(), sp_group, True) for x in (query, key, value))
    total = int(cu_seq_lens_q[-1])
    q, k, v = (x[:total].transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, H/P, T, D], padding dropped
    out, _ = varlen.varlen_attention(module, q, k, v, None, dropout, scaling, cu_seq_lens_q, cu_seq_lens_k,
                                     max_length_q, max_length_k)
    out = F.pad(out[0], (0, 0, 0, 0, 0, sp * query.shape[2] - total))  # [P*S, H/P, D]: padding back
    out = _Exchange.apply(out.contiguous(), sp_group, False)  # [S, H + pad, D]
    return out[:, :h].unsqueeze(0), None


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """The forward all-to-all of one attention input (sequence shard -> head shard), for the time model's probe
    (rlkit.parallel.calibrate)."""
    return _seq_to_heads(x, group)


class RowSharding:
    """What sequence parallelism adds to a scoring forward (rlkit.trainers.batch.LogprobPolicy), in one place and
    switched on at set-up: the policy is given one with its process groups (degree -> this rank's block) and calls
    every step below unconditionally; with no groups (or an unsharded micro-batch) each step is the identity.

    For a micro-batch that is a shard at degree d: the backbone gets the block as ``sp_group`` (Ulysses attention);
    the LM head is tied in with weight 0 even when the shard scores nothing, so its backward runs every exchange the
    other ranks' backwards wait for and every parameter gets a gradient; the [B, C] logprobs are summed over the
    block (``sum_over_group``) and so are the entropies, so every rank of it returns the whole micro-batch's."""

    def __init__(self, groups: dict | None = None):
        self.groups = dict(groups or {})

    def attention(self) -> str:
        """The attention implementation the model must use: Ulysses with groups, plain varlen without."""
        return register() if self.groups else varlen.register()

    def group(self, batch):
        """The block a micro-batch runs on (None: this rank alone)."""
        if not batch.sharded:
            return None
        group = self.groups.get(batch.sp_degree)
        if group is None:
            raise ValueError(f"a micro-batch sharded {batch.sp_degree} ways needs a policy built with a "
                             f"process group of that degree (it has {sorted(self.groups)})")
        return group

    @staticmethod
    def backbone_kwargs(group) -> dict:
        return {} if group is None else {"sp_group": group}

    @staticmethod
    def head_rows(h: torch.Tensor, hidden: torch.Tensor, group) -> torch.Tensor:
        """The rows a module head is called on: with a block, one extra row of the shard to tie in (the head is
        called once per forward at any degree: ZeRO-3 gathers its weights over every rank at each call)."""
        return h if group is None else torch.cat([h, hidden[0, :1]])

    @staticmethod
    def split_tie(logits: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (logits, None) if group is None else (logits[:-1], logits[-1:].sum() * 0.0)

    @staticmethod
    def plain_tie(head, hidden: torch.Tensor, group) -> torch.Tensor | None:
        """For a local Linear head read by the chunked kernel: call it on one row (no collective) to tie it in."""
        return None if group is None else head(hidden[:, :1]).sum() * 0.0

    @staticmethod
    def sum_logprobs(out: torch.Tensor, tie: torch.Tensor | None, group) -> torch.Tensor:
        return out if group is None else sum_over_group(out + tie, group)

    @staticmethod
    def sum_entropy(ent: torch.Tensor, group) -> torch.Tensor:
        if group is not None:
            dist.all_reduce(ent, group=group)
        return ent


def register() -> str:
    """Register ``rlkit_ulysses`` with transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, ulysses_attention)
        AttentionMaskInterface.register(NAME, varlen._mask)
        _registered = True
    return NAME
