"""From rollout Samples to model inputs: the scoring wrapper and micro-batch collation.

``LogprobPolicy`` wraps an HF causal LM so that its forward returns per-token logprobs of the
completion tokens only: the backbone runs once, the LM head is applied only at scored positions.
It is the module handed to ``accelerator.prepare`` (so DDP / ZeRO / FSDP hooks see every forward).
Per-token tensors live in "completion space" ``[B, C]``: row i holds sample i's completion tokens
left-aligned, zero-padded to the longest completion of the micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlkit.kernels.logprobs import token_logprobs
from rlkit.rollout.base import Sample


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LogprobPolicy(nn.Module):
    """``forward(batch) -> (logprobs [B, C], entropy [B, C] or None)`` for an HF causal LM (or PEFT model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: MicroBatch, temperature: float = 1.0, with_entropy: bool = False):
        base = _base_model(self.model)
        backbone = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state
        # position p predicts token p + 1
        h = hidden[batch.score_rows, batch.score_pos - 1]
        logits = base.get_output_embeddings()(h)
        lp, ent = token_logprobs(logits, batch.score_targets, temperature, with_entropy=with_entropy)
        out = lp.new_zeros(batch.completion_mask.shape)
        out[batch.score_rows, batch.score_cols] = lp
        if ent is None:
            return out, None
        ent_out = ent.new_zeros(batch.completion_mask.shape)
        ent_out[batch.score_rows, batch.score_cols] = ent
        return out, ent_out


@dataclass
class MicroBatch:
    """Right-padded token rows plus the scatter indices of the scored (completion) tokens."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, C] float, 1 on real completion tokens
    score_rows: torch.Tensor  # [K] row of each scored token
    score_pos: torch.Tensor  # [K] its position in the row
    score_cols: torch.Tensor  # [K] its column in completion space
    score_targets: torch.Tensor  # [K] token id
    num_tokens: int  # real (prompt + completion) tokens in the micro-batch

    def to(self, device) -> MicroBatch:
        return MicroBatch(*(getattr(self, f).to(device) for f in (
            "input_ids", "attention_mask", "completion_mask", "score_rows", "score_pos", "score_cols",
            "score_targets")), self.num_tokens)


def collate(samples: list[Sample], pad_id: int) -> MicroBatch:
    lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
    width = max(lengths)
    cmax = max(1, max(len(s.completion_ids) for s in samples))
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(samples), width), dtype=torch.long)
    cmask = torch.zeros((len(samples), cmax), dtype=torch.float32)
    rows, pos, cols, targets = [], [], [], []
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.completion_ids
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        att[i, :len(seq)] = 1
        c, p = len(s.completion_ids), len(s.prompt_ids)
        cmask[i, :c] = 1.0
        rows += [i] * c
        pos += range(p, p + c)
        cols += range(c)
        targets += s.completion_ids
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return MicroBatch(ids, att, cmask, as_long(rows), as_long(pos), as_long(cols), as_long(targets), sum(lengths))


def to_completion_space(values: list[list[float]], width: int) -> torch.Tensor:
    """Per-sample lists of per-token values -> [B, width] float32, zero-padded."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, v in enumerate(values):
        if v:
            out[i, :len(v)] = torch.tensor(v[:width], dtype=torch.float32)
    return out


def micro_batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]
