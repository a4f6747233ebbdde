"""The policy-update phase of a step: scoring, loss, backward and optimizer steps over one rollout batch.

Kept apart from the loop so that it can be tested on its own (the distributed test compares the
parameters after ``update_policy`` on 2 processes with those after 1 process on the whole batch).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlkit.algorithms.losses import (
    LossInputs,
    MinibatchInputs,
    aggregation_denominator,
    aggregation_weights,
    importance_ratio,
)
from rlkit.errors import TrainingDiverged, UserError
from rlkit.kernels.packing import balance_across_ranks, sequence_cost
from rlkit.parallel import dist
from rlkit.parallel.layout import Layout, make_layout
from rlkit.parallel.micro import (
    Micro,
    MicroBatching,
    layout_of,
    micro_inputs,
    owns_results,
    plan_rank,
    sum_over_sp_group,
)
from rlkit.records import MaskInputs, Sample, StepBatch, UpdateStats, group_index, to_completion_space
from rlkit.trainers import backends


def prepare_tokens(batch: StepBatch, masks: list = ()) -> StepBatch:
    """Fill the per-token tensors [N, C] of ``batch``: the loss mask (completion tokens, then every (name, mask)
    of kind "batch", e.g. mask_truncated, whose removed share goes to ``mask/<name>/masked_frac``) and the
    engine's behaviour logprobs. A filter's padded copies (``batch.padding``) get an all-zero mask row, as DOT's
    zeroed response mask. Returns the batch."""
    samples = batch.samples
    cmax = max(1, max((s.num_tokens for s in samples), default=1))
    mask = to_completion_space([s.trainable() for s in samples], cmax)  # injected tokens never trained
    mask = mask * batch.real.to(mask.dtype)[:, None]  # padded copies: no token counts
    total = max(float(mask.sum()), 1.0)
    for name, m in masks:
        kept = mask * m.keep(MaskInputs(mask=mask, truncated=batch.truncated, correct=batch.correct))
        batch.metrics[f"mask/{name}/masked_frac"] = float((mask - kept).sum()) / total
        mask = kept
    batch.mask, batch.behaviour = mask, to_completion_space([s.logprobs for s in samples], cmax)
    return batch


def truncated_importance(old: torch.Tensor, behaviour: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
    RL training"): w_t = min(pi_old(y_t) / pi_behaviour(y_t), C), no gradient, multiplied into the token weights.
    pi_behaviour is the rollout engine's (a stale version under asynchronous rollouts, or another numeric
    implementation); pi_old the policy the PPO ratio is taken against."""
    return importance_ratio(old.detach(), behaviour).clamp(max=cap)


def _units(samples: list[Sample], whole_groups: bool, real: torch.Tensor | None = None) -> list[list[int]]:
    """Sample indices that must share a micro-batch: single samples, or whole groups. With ``real`` ([N] bool),
    the samples it marks False (a filter's padded copies) are left out: no micro-batch, minibatch or normaliser
    sees them."""
    keep = [True] * len(samples) if real is None else real.tolist()
    if not whole_groups:
        return [[i] for i in range(len(samples)) if keep[i]]
    units = [idx.tolist() for idx in group_index([smp.group_id for smp in samples])]
    return [[i for i in u if keep[i]] for u in units if any(keep[i] for i in u)]


def balance_ranks(batch: StepBatch, acc, *, whole_groups: bool, cost_b: float,
                  layout: Layout | None = None) -> StepBatch:
    """Redistribute the step's samples across data-parallel ranks so that each rank's summed cost
    a*L + b*L^2 is near-equal (Karmarkar-Karp over units). Exactness is kept: the loss weights are
    global (normaliser all-reduced), so where a sample is trained does not change the update.
    Group ids are made unique across ranks. Moves samples, advantages and correctness; per-token tensors are
    built afterwards (``prepare_tokens``). Call before old/reference logprobs are scored.
    Under sequence parallelism the shares go to the dp SP groups and every rank of a group gets its group's."""
    world = acc.num_processes
    if world == 1:
        return batch
    layout = layout or make_layout(acc, 1)
    shares = layout.dp
    real = batch.real.tolist()  # a filter's padded copies are not trained: they stay out of the shares
    payload = ([s for s, k in zip(batch.samples, real) if k], [a for a, k in zip(batch.advantages.tolist(), real) if k],
               None if batch.correct is None else [c for c, k in zip(batch.correct.tolist(), real) if k])
    gathered = dist.gather_objects(acc, payload)
    stride = 1 + max((s.group_id for smps, _, _ in gathered for s in smps), default=0)
    samples, adv, corr = [], [], []
    for r, (smps, a, c) in enumerate(gathered):
        samples += [replace(s, group_id=s.group_id + r * stride) for s in smps]
        adv += a
        corr += c if c is not None else [float("nan")] * len(smps)
    units = _units(samples, whole_groups)
    if len(units) < shares:  # not enough units to give every rank one: keep the rollout's split
        if layout.sp > 1:
            raise UserError(f"{len(units)} units (samples, or groups for a sequence-level loss) cannot fill "
                             f"the {shares} data-parallel SP groups; raise rollout.prompts_per_step")
        return batch
    costs = [sum(sequence_cost(len(samples[i].prompt_ids) + samples[i].num_tokens, 1.0, cost_b) for i in u)
             for u in units]
    mine = [i for u in balance_across_ranks(costs, shares)[layout.dp_rank] for i in units[u]]
    correct = None if batch.correct is None else torch.tensor([corr[i] for i in mine], dtype=batch.correct.dtype)
    return StepBatch([], [samples[i] for i in mine], advantages=torch.tensor([adv[i] for i in mine]),
                     correct=correct, metrics=batch.metrics)


@torch.no_grad()
def _score_plan(policy, samples: list[Sample], plan: list[Micro], pad_id: int, acc, *, temperature: float,
                mbs: MicroBatching, width: int, disable_adapter: bool = False) -> torch.Tensor:
    """Logprobs [len(samples), width] (no grad) of the samples in ``plan``'s micro-batches; an empty micro-batch
    runs and is discarded, so every rank runs the same forwards. Rows outside the plan stay 0. Under
    sequence parallelism every rank of the SP group ends with the logprobs of all the group's micro-batches."""
    out = torch.zeros((len(samples), width), dtype=torch.float32)
    lay = layout_of(mbs, acc)
    peft_model = acc.unwrap_model(policy).model
    for micro in plan:
        idx, inputs = micro_inputs(samples, micro, pad_id, mbs, acc)
        adapter_off = peft_model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with adapter_off, acc.autocast():
            lp, _ = policy(inputs, temperature=temperature)
        if owns_results(micro, lay):
            out[idx, :lp.shape[1]] = lp.float().cpu()
    if lay.sp > 1:  # each row was written by one rank of the group
        out = dist.all_reduce(acc, out, "sum", lay.sp_group)
    return out


def policy_logprobs(policy, samples: list[Sample], pad_id: int, acc, *, temperature: float, mbs: MicroBatching,
              width: int, disable_adapter: bool = False) -> torch.Tensor:
    """Logprobs [N, width] of every sample's completion under `policy` (no grad). With
    ``disable_adapter`` the PEFT adapters are switched off: the base model is the reference."""
    plan = plan_rank([[i] for i in range(len(samples))], samples, mbs, acc)
    return _score_plan(policy, samples, plan, pad_id, acc, temperature=temperature, mbs=mbs, width=width,
                       disable_adapter=disable_adapter)


@dataclass
class LossSpec:
    """The injected loss and what it declares (read once at start-up)."""

    fn: Any  # LossInputs -> LossOutputs, options bound
    whole_groups: bool = False  # keep groups inside one micro-batch (sequence-level losses)
    prepare: Any = None  # MinibatchInputs -> {name: [M, C]}, options bound (see rlkit.algorithms.losses)


def _prepare_minibatch(prepared, acc, batch: StepBatch, rows: list[int], plan: list[Micro],
                       settings: UpdateSettings) -> dict:
    """The loss's minibatch-wide inputs, [len(rows), C] each, from the current policy's logprobs (one no-grad
    forward over the minibatch's micro-batches, empty ones included so every rank runs the same forwards).
    Its sums and gathers run over one copy of each data-parallel share (the DP group under SP)."""
    loss, mbs, pad_id, temperature = settings.loss, settings.mbs, settings.pad_id, settings.temperature
    current = _score_plan(prepared, batch.samples, plan, pad_id, acc, temperature=temperature, mbs=mbs,
                          width=batch.mask.shape[1])
    lay = layout_of(mbs, acc)
    return loss.prepare(MinibatchInputs(
        logprobs=current[rows], advantages=batch.advantages[rows], mask=batch.mask[rows],
        all_reduce_sum=lambda t: dist.all_reduce(acc, t, "sum", lay.dp_group),
        all_gather=lambda t: dist.gather_var(acc, t, group=lay.dp_group), rank=lay.dp_rank))


@dataclass
class _Minibatch:
    """What every micro-batch of one minibatch shares: its rows, the aggregation weights of those rows, the loss's
    minibatch-wide inputs and the group count for group-level losses."""

    rows: list[int]
    position: dict[int, int]
    weights: torch.Tensor
    extra: dict
    group_scale: float


@dataclass
class UpdateSettings:
    """How the policy update runs, fixed for a run (built once at set-up): the injected loss, the algorithm's
    settings (mu, minibatches, aggregation, tis_cap), the micro-batching, the scoring temperature, the completion
    cap (the aggregation's constant), clipping, the forward token masks and the non-finite policy."""

    loss: LossSpec
    algorithm: Any  # rlkit.config.AlgorithmConfig
    mbs: MicroBatching
    pad_id: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 0
    max_grad_norm: float = 0.0
    forward_masks: list = field(default_factory=list)  # (name, mask) of kind "forward"
    skip_nonfinite: bool = False


@dataclass
class _Pass:
    """Where a micro-batch sits: the last of its minibatch (the accumulation boundary), in the first pass over the
    batch (entropy is counted once), in the first minibatch (the mismatch is measured before any update)."""

    last: bool
    first_pass: bool
    first_minibatch: bool


def update_policy(prepared, optimizer, scheduler, acc, batch: StepBatch, settings: UpdateSettings, *,
                  seed: int = 0, step: int = 0) -> UpdateStats:
    """mu passes x minibatches; micro-batches accumulate into one optimizer step per minibatch.

    The aggregation normaliser is summed over all ranks and the weights are multiplied by the world
    size because DDP averages gradients: the result equals one process training on the whole batch.
    ``forward_masks`` ((name, mask) of kind "forward") scale the token weights after each forward pass.
    Returns token sums of the loss statistics, entropy, the vLLM-vs-trainer mismatch and grad norms.

    A loss (any micro-batch, any rank) or gradient norm that is not finite never reaches the weights: the run
    stops with TrainingDiverged naming ``step``, or with ``skip_nonfinite`` that optimizer step is skipped and
    counted (``stats.skipped``). The finiteness check is all-reduced, so every rank decides the same.
    """
    a, loss, mbs, world = settings.algorithm, settings.loss, settings.mbs, acc.num_processes
    lay = layout_of(mbs, acc)
    # units that stay together: single samples, or whole groups for sequence-level losses (DRPO); a filter's
    # padded copies are in none (zero weight, counted in no normaliser: the update of the real groups alone)
    units = _units(batch.samples, loss.whole_groups, batch.real)
    random.Random(seed).shuffle(units)
    minibatch_units = [units[i::a.minibatches] for i in range(a.minibatches)]
    stats = UpdateStats(masked={name: 0.0 for name, _ in settings.forward_masks})
    if a.tis_cap > 0:
        stats.sums["tis_weight"] = 0.0
    # micro-batch plans depend only on the minibatch's units: plan once, reuse in every pass
    mbs.take_log()
    plans = [plan_rank(mini_units, batch.samples, mbs, acc) for mini_units in minibatch_units]
    predicted, bound = mbs.take_log()
    if mbs.calibrated:  # the plans' time model is in seconds: the metrics compare it with the measured time
        stats.predicted_s, stats.bound_s = predicted * a.mu, bound * a.mu
    prepared.train()
    for epoch in range(a.mu):
        for mini_index, mini_units in enumerate(minibatch_units):
            rows = [i for unit in mini_units for i in unit]
            # sums over ranks count each share once: the sp ranks of an SP group hold the same rows
            denom = aggregation_denominator(batch.mask[rows], a.aggregation, settings.max_new_tokens)
            denom = float(dist.all_reduce(acc, torch.tensor(denom), "sum")) / lay.sp
            n_groups = float(dist.all_reduce(acc, torch.tensor(float(len(set(batch.group_ids[rows].tolist())))),
                                         "sum")) / lay.sp
            extra = {}
            if loss.prepare is not None:  # before the first backward: the policy is the minibatch's start
                extra = _prepare_minibatch(prepared, acc, batch, rows, plans[mini_index], settings)
            mini = _Minibatch(rows, {i: j for j, i in enumerate(rows)},
                              aggregation_weights(batch.mask[rows], a.aggregation, denom) * world, extra,
                              world / max(n_groups, 1.0))
            nonfinite = None  # the first micro-batch whose loss was not finite on some rank
            for k, micro in enumerate(plans[mini_index]):
                where = _Pass(last=k == len(plans[mini_index]) - 1, first_pass=epoch == 0,
                              first_minibatch=mini_index == 0)
                bad = _micro_step(prepared, acc, batch, micro, mini, stats, settings, where)
                if nonfinite is None and bad is not None:
                    nonfinite = (k, bad)
                    if not settings.skip_nonfinite:
                        _diverged(step, f"the loss is {bad}", mini_index, k)
            norm, applied = backends.optimizer_step(acc, prepared, optimizer, settings.max_grad_norm,
                                                    skip=nonfinite is not None)
            if not applied:
                if not settings.skip_nonfinite:
                    _diverged(step, f"the gradient norm is {norm}", mini_index, None)
                stats.skipped += 1
            else:
                stats.grad_norms.append(norm)
            if scheduler is not None:
                scheduler.step()
    return sum_over_sp_group(stats, lay)


def _micro_step(prepared, acc, batch: StepBatch, micro: Micro, mini: _Minibatch, stats: UpdateStats,
                settings: UpdateSettings, where: _Pass) -> float | None:
    """One forward/backward of a micro-batch, its statistics added to ``stats`` (by the rank that owns it). An empty
    micro-batch (this rank has fewer units than another, or none in this minibatch) runs one of the rank's samples
    with zero weights, so every rank runs the same forwards. Returns the loss when it is not finite on some rank
    (checked on every rank, so all agree), else None."""
    a, mbs, pad_id, temperature = settings.algorithm, settings.mbs, settings.pad_id, settings.temperature
    loss, forward_masks, lay = settings.loss, settings.forward_masks, layout_of(mbs, acc)
    last, first_pass, first_minibatch = where.last, where.first_pass, where.first_minibatch
    idx, inputs = micro_inputs(batch.samples, micro, pad_id, mbs, acc)
    counted = owns_results(micro, lay)
    mrows = [mini.position.get(i, 0) for i in idx]
    width = inputs.completion_mask.shape[1]
    live = 1.0 if micro.idx else 0.0  # 0: a zero-weight forward of an idle rank
    sync = contextlib.nullcontext() if last else acc.no_sync(prepared)
    with sync, acc.autocast():
        lp, ent = prepared(inputs, temperature=temperature, with_entropy=True)
        if batch.old_logprobs is not None:
            old = batch.old_logprobs[idx, :width].to(acc.device)
        else:  # one optimizer step per batch (mu x minibatches = 1, the loop scores nothing): the old policy is the
            old = lp.detach()  # current one, so the ratio is 1 in value and its gradient the policy gradient
        ref = batch.ref_logprobs[idx, :width].to(acc.device) if batch.ref_logprobs is not None else None
        mask = batch.mask[idx, :width].to(acc.device) * live
        correct = batch.correct[idx].to(acc.device) if batch.correct is not None else None
        token_weights = mini.weights[mrows, :width].to(acc.device) * live if mini.rows else torch.zeros_like(mask)
        if a.tis_cap > 0:  # off-policy rollouts: weight each token by min(pi_old / pi_behaviour, C)
            tis = truncated_importance(old, batch.behaviour[idx, :width].to(acc.device), a.tis_cap)
            token_weights = token_weights * tis
            if counted:
                stats.sums["tis_weight"] += float((tis * mask).sum())
        for name, fm in forward_masks:  # normaliser unchanged: only the weights move
            keep = fm.keep(MaskInputs(mask=mask, truncated=batch.truncated[idx].to(acc.device), correct=correct,
                                      old_logprobs=old.detach(), entropy=ent))
            if counted:
                stats.masked[name] += float((mask * (1 - keep)).sum())
            token_weights = token_weights * keep
        out = loss.fn(LossInputs(
            logprobs=lp, old_logprobs=old, advantages=batch.advantages[idx].to(acc.device), mask=mask,
            token_weights=token_weights, ref_logprobs=ref, group_ids=batch.group_ids[idx].to(acc.device),
            correct=correct, group_scale=mini.group_scale, entropy=ent,
            behaviour_logprobs=batch.behaviour[idx, :width].to(acc.device) if batch.behaviour is not None else None,
            extra={key: v[mrows, :width].to(acc.device) if mini.rows else torch.zeros_like(mask, dtype=v.dtype)
                   for key, v in mini.extra.items()}))
        bad = _any_rank(acc, not bool(torch.isfinite(out.loss.detach()).all()))
        # one optimizer step per minibatch: the last micro-batch is the accumulation boundary (a non-finite loss
        # goes backward too, so every engine reaches it; the optimizer step is then skipped or the run stops)
        backends.backward(acc, prepared, out.loss, last=last)
    stats.micro_batches += int(bool(micro.idx))  # real forwards only, not zero-weight padding
    stats.sharded += int(micro.sharded and bool(micro.idx))
    if first_pass and counted:  # first pass: entropy of every sample; mismatch before any update
        real = inputs.completion_mask
        stats.entropy += float((ent * real).sum())
        stats.tokens += float(real.sum())
        if first_minibatch:
            diff = (lp.detach().float() - batch.behaviour[idx, :width].to(acc.device)).abs()
            stats.mismatch += float((diff * real).sum())
            stats.mismatch_tokens += float(real.sum())
    for key, v in out.stats.items() if counted else ():
        stats.sums[key] = stats.sums.get(key, 0.0) + float(v)
    return float(out.loss.detach().float().sum()) if bad else None


def _any_rank(acc, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
    return bool(dist.all_reduce(acc, torch.tensor(float(flag)), "max") > 0)


def _diverged(step: int, what: str, minibatch: int, micro: int | None) -> None:
    where = f"minibatch {minibatch + 1}" + (f", micro-batch {micro + 1}" if micro is not None else "")
    raise TrainingDiverged(f"step {step}: {what} ({where}); the run stopped before applying it, so the weights and "
                           "the last checkpoint are from before this step. Lower optim.lr or check the rewards and "
                           "advantages, or set optim.skip_nonfinite: true to skip such steps")
