"""The policy-update phase of a step: scoring, loss, backward and optimizer steps over one rollout batch.

Kept apart from the loop so that it can be tested on its own (the distributed test compares the
parameters after ``update_policy`` on 2 processes with those after 1 process on the whole batch).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch

from rlkit.rollout.base import Sample
from rlkit.trainers.batch import collate, micro_batches, to_completion_space
from rlkit.trainers.losses import LossInputs, aggregation_denominator, aggregation_weights, needs_whole_groups


@dataclass
class UpdateBatch:
    """One rank's share of a step. Per-token tensors are in completion space [N, C]."""

    samples: list[Sample]
    advantages: torch.Tensor  # [N]
    mask: torch.Tensor  # [N, C] tokens that count in the loss
    behaviour: torch.Tensor  # [N, C] rollout-engine logprobs
    old_logprobs: torch.Tensor | None = None  # [N, C]; None -> the ratio is taken against the current policy
    ref_logprobs: torch.Tensor | None = None  # [N, C]; None -> no KL term
    correct: torch.Tensor | None = None  # [N] verifier values, for sequence-level losses (DRPO)

    @classmethod
    def from_samples(cls, samples: list[Sample], advantages: torch.Tensor, mask_truncated: bool) -> UpdateBatch:
        cmax = max(1, max(s.num_tokens for s in samples))
        keep = torch.tensor([not (mask_truncated and s.finish_reason == "length") for s in samples],
                            dtype=torch.float32)
        mask = to_completion_space([[1.0] * s.num_tokens for s in samples], cmax) * keep[:, None]
        behaviour = to_completion_space([s.logprobs for s in samples], cmax)
        return cls(samples, advantages, mask, behaviour)


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


@torch.no_grad()
def score_all(policy, samples: list[Sample], pad_id: int, acc, *, temperature: float, micro_batch_size: int,
              width: int, disable_adapter: bool = False) -> torch.Tensor:
    """Logprobs [N, width] of every sample's completion under `policy` (no grad). With
    ``disable_adapter`` the PEFT adapters are switched off: the base model is the reference."""
    out = torch.zeros((len(samples), width), dtype=torch.float32)
    peft_model = acc.unwrap_model(policy).model
    for idx in micro_batches(list(range(len(samples))), micro_batch_size):
        mb = collate([samples[i] for i in idx], pad_id).to(acc.device)
        adapter_off = peft_model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with adapter_off, acc.autocast():
            lp, _ = policy(mb, temperature=temperature)
        out[idx, :lp.shape[1]] = lp.float().cpu()
    return out


def update_policy(prepared, optimizer, scheduler, acc, batch: UpdateBatch, *, loss_fn, algorithm, pad_id: int,
                  temperature: float, micro_batch_size: int, max_new_tokens: int, max_grad_norm: float,
                  seed: int) -> dict:
    """mu passes x minibatches; micro-batches accumulate into one optimizer step per minibatch.

    The aggregation normaliser is summed over all ranks and the weights are multiplied by the world
    size because DDP averages gradients: the result equals one process training on the whole batch.
    Returns token-sums of the loss statistics, entropy and vLLM-vs-trainer mismatch, and grad norms.
    """
    a, world = algorithm, acc.num_processes
    # units that stay together: single samples, or whole groups for sequence-level losses (DRPO)
    if needs_whole_groups(loss_fn):
        by_group: dict[int, list[int]] = {}
        for i, smp in enumerate(batch.samples):
            by_group.setdefault(smp.group_id, []).append(i)
        units = list(by_group.values())
    else:
        units = [[i] for i in range(len(batch.samples))]
    random.Random(seed).shuffle(units)
    minibatch_units = [units[i::a.minibatches] for i in range(a.minibatches)]
    group_ids = torch.tensor([smp.group_id for smp in batch.samples])
    sums = {"clip_frac": 0.0, "ratio": 0.0, "kl": 0.0, "entropy": 0.0, "tokens": 0.0, "mismatch": 0.0,
            "mismatch_tokens": 0.0}
    grad_norms = []
    prepared.train()
    for epoch in range(a.mu):
        for mb_index, mb_units in enumerate(minibatch_units):
            rows = [i for unit in mb_units for i in unit]
            denom = aggregation_denominator(batch.mask[rows], a.aggregation, max_new_tokens)
            denom = float(acc.reduce(torch.tensor(denom, device=acc.device), reduction="sum"))
            weights = aggregation_weights(batch.mask[rows], a.aggregation, denom) * world
            n_groups = float(acc.reduce(torch.tensor(float(len(set(group_ids[rows].tolist()))), device=acc.device),
                                        reduction="sum"))
            micro = unit_chunks([len(u) for u in mb_units], micro_batch_size)
            for k, mrows in enumerate(micro):
                idx = [rows[j] for j in mrows]
                mb = collate([batch.samples[i] for i in idx], pad_id).to(acc.device)
                width = mb.completion_mask.shape[1]
                sync = acc.no_sync(prepared) if k < len(micro) - 1 else contextlib.nullcontext()
                with sync, acc.autocast():
                    lp, ent = prepared(mb, temperature=temperature, with_entropy=True)
                    old = batch.old_logprobs[idx, :width].to(acc.device) if batch.old_logprobs is not None \
                        else lp.detach()
                    ref = batch.ref_logprobs[idx, :width].to(acc.device) if batch.ref_logprobs is not None else None
                    out = loss_fn(LossInputs(
                        logprobs=lp, old_logprobs=old, advantages=batch.advantages[idx].to(acc.device),
                        mask=batch.mask[idx, :width].to(acc.device),
                        token_weights=weights[mrows, :width].to(acc.device), ref_logprobs=ref,
                        group_ids=group_ids[idx].to(acc.device),
                        correct=batch.correct[idx].to(acc.device) if batch.correct is not None else None,
                        group_scale=world / max(n_groups, 1.0)))
                    acc.backward(out.loss)
                if epoch == 0:  # first pass: entropy of every sample; mismatch before any update
                    real = mb.completion_mask
                    sums["entropy"] += float((ent * real).sum())
                    sums["tokens"] += float(real.sum())
                    if mb_index == 0:
                        diff = (lp.detach().float() - batch.behaviour[idx, :width].to(acc.device)).abs()
                        sums["mismatch"] += float((diff * real).sum())
                        sums["mismatch_tokens"] += float(real.sum())
                for key, v in out.stats.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
            gn = acc.clip_grad_norm_(prepared.parameters(), max_grad_norm or float("inf"))
            grad_norms.append(float(gn))
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    sums["grad_norms"] = grad_norms
    return sums
