"""The scoring wrapper: a causal LM that returns per-token logprobs of the scored tokens of a micro-batch
(rlkit.parallel.batch.MicroBatch).

``LogprobPolicy`` wraps an HF causal LM so that its forward returns per-token logprobs of the
completion tokens only: the backbone runs once, the LM head is applied only at scored positions.
It is the module handed to ``accelerator.prepare`` (so DDP / ZeRO / FSDP hooks see every forward).
Per-token tensors live in "completion space" ``[B, C]``: row i holds sample i's completion tokens
left-aligned, zero-padded to the longest completion of the micro-batch.
"""

from __future__ import annotations

from torch import nn

from rlkit.kernels import memory
from rlkit.kernels.logprobs import chunked_logprobs, logprobs_from_logits
from rlkit.parallel import ulysses
from rlkit.parallel.batch import MicroBatch


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_linear(head: nn.Module) -> bool:
    """The chunked kernel reads ``head.weight`` directly. That is only safe for a plain Linear whose weight is
    a whole local tensor: not a ZeRO-3 partitioned parameter (``ds_id``) nor a sharded DTensor."""
    weight = getattr(head, "weight", None)
    return (type(head) is nn.Linear and weight is not None and not hasattr(weight, "ds_id")
            and type(weight).__name__ != "DTensor" and type(weight.data).__name__ != "DTensor")


class LogprobPolicy(nn.Module):
    """``forward(batch) -> (logprobs [B, C], entropy [B, C] or None)`` for an HF causal LM (or PEFT model).

    The backbone runs on the micro-batch's rows (packed or right-padded); the LM head and the log-softmax
    run only on the scored positions, in chunks of ``logprob_chunk`` rows (rlkit.kernels.logprobs), so
    logits for all positions are never materialised.

    With ``sp_groups`` (sequence parallelism, set once at start-up: degree -> this rank's block of that many ranks,
    rlkit.parallel.layout) the forward runs through ``rlkit.parallel.ulysses.RowSharding``: a micro-batch made by
    ``shard_micro_batch`` at degree d runs Ulysses attention over the block of d, this rank scores the tokens whose
    predicting position lies in its shard, and the [B, C] results are summed over the block, so every rank of it
    returns the whole micro-batch's logprobs. The forward itself has no SP branch.
    """

    def __init__(self, model: nn.Module, logprob_chunk: int = 512, sp_groups: dict | None = None):
        super().__init__()
        self.model = model
        self.logprob_chunk = logprob_chunk
        self.sp = ulysses.RowSharding(sp_groups)  # sequence parallelism, switched on here (identity without groups)
        base = _base_model(model)
        attention = self.sp.attention()
        if base.config._attn_implementation != attention:
            base.set_attn_implementation(attention)

    def forward(self, batch: MicroBatch, temperature: float = 1.0, with_entropy: bool = False):
        base, sp = _base_model(self.model), self.sp
        backbone = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        extra = {}
        if batch.cu_seqlens is not None:  # packed row: the attention kernel reads the boundaries
            extra = dict(cu_seq_lens_q=batch.cu_seqlens, cu_seq_lens_k=batch.cu_seqlens,
                         max_length_q=batch.max_seqlen, max_length_k=batch.max_seqlen)
        group = sp.group(batch)
        with memory.offload_context(base):
            hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids, use_cache=False, **extra,
                              **sp.backbone_kwargs(group)).last_hidden_state
        # position p predicts token p + 1
        h = hidden[batch.score_rows, batch.score_pos - 1]
        head = base.get_output_embeddings()
        if _plain_linear(head):
            lp, ent = chunked_logprobs(h, head.weight, head.bias, batch.score_targets, temperature,
                                       self.logprob_chunk)
            tie = sp.plain_tie(head, hidden, group)
        else:  # an adapted, custom or sharded head: call the module (its hooks gather weights), then plain torch
            logits, tie = sp.split_tie(head(sp.head_rows(h, hidden, group)), group)
            lp, ent = logprobs_from_logits(logits, batch.score_targets, temperature)
        shape = batch.completion_mask.shape
        out = sp.sum_logprobs(lp.new_zeros(shape).index_put((batch.score_sample, batch.score_cols), lp), tie, group)
        if not with_entropy:
            return out, None
        ent = ent.detach().new_zeros(shape).index_put((batch.score_sample, batch.score_cols), ent.detach())
        return out, sp.sum_entropy(ent, group)
