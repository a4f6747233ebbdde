"""The policy-update phase of a step: scoring, loss, backward and optimizer steps over one rollout batch.

Kept apart from the loop so that it can be tested on its own (the distributed test compares the
parameters after ``update_policy`` on 2 processes with those after 1 process on the whole batch).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Any

import torch

from rlkit.algorithms.losses import LossInputs, MinibatchInputs, aggregation_denominator, aggregation_weights
from rlkit.errors import TrainingDiverged, UserError
from rlkit.kernels.packing import balance_across_ranks, plan_micro_batches, sequence_cost
from rlkit.kernels.sp_plan import GroupStep, plan_group_steps
from rlkit.records import MaskInputs, Sample, StepBatch, UpdateStats, to_completion_space
from rlkit.trainers import backends, dist
from rlkit.trainers.batch import MicroBatch, collate, shard_micro_batch


def prepare_tokens(batch: StepBatch, masks: list = ()) -> StepBatch:
    """Fill the per-token tensors [N, C] of ``batch``: the loss mask (completion tokens, then every (name, mask)
    of kind "batch", e.g. mask_truncated, whose removed share goes to ``mask/<name>/masked_frac``) and the
    engine's behaviour logprobs. Returns the batch."""
    samples = batch.samples
    cmax = max(1, max((s.num_tokens for s in samples), default=1))
    mask = to_completion_space([[1.0] * s.num_tokens for s in samples], cmax)
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
    return torch.exp((old.detach() - behaviour).clamp(max=20.0)).clamp(max=cap)


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
    """How a rank's samples become micro-batches (filled from OptimConfig by the trainer)."""

    packing: bool = True  # one packed row per micro-batch; False: right-padded rows
    micro_batch_tokens: int = 8192  # token budget of a packed micro-batch
    micro_batch_size: int = 8  # rows of a padded micro-batch
    cost_b: float = 0.0  # quadratic term of the cost model a*L + b*L^2 (a = 1)
    layout: dist.Layout | None = None  # sequence parallelism: this rank's SP and DP groups (None: data-parallel)
    sp_mode: str = "fixed"  # fixed: every micro-batch sharded over the SP group; adaptive: only those that need it

    @classmethod
    def from_config(cls, optim, hidden_size: int, layout: dist.Layout | None = None,
                    sp_mode: str = "fixed") -> MicroBatching:
        b = optim.attention_cost if optim.attention_cost >= 0 else 1.0 / (6.0 * hidden_size)
        return cls(optim.packing, optim.micro_batch_tokens, optim.micro_batch_size, b, layout, sp_mode)


def layout_of(mbs: MicroBatching, acc) -> dist.Layout:
    """The micro-batching's layout, or plain data parallelism over every process when it has none."""
    return mbs.layout or dist.make_layout(acc, 1)


@dataclass(frozen=True)
class Micro:
    """One forward/backward of this rank: sample indices (empty: a zero-weight forward, so every rank runs the
    same forwards) and whether the row is sharded over the SP group (every rank of it runs the same ``idx``)."""

    idx: list[int]
    sharded: bool = False


def plan_rank(units: list[list[int]], samples: list[Sample], mbs: MicroBatching, acc) -> list[Micro]:
    """This rank's micro-batches. Every rank gets the same number of micro-batches (the all-reduced maximum),
    so DDP / ZeRO-3 / FSDP run matching forwards; a rank with too few units gets empty ones. Under sequence
    parallelism the SP group plans together (rlkit.kernels.sp_plan): a sharded step runs on every rank of the
    group, a side-by-side step runs each rank's own part."""
    lengths = [sum(len(samples[i].prompt_ids) + samples[i].num_tokens for i in u) for u in units]
    lay = layout_of(mbs, acc)
    if lay.sp > 1:
        steps = plan_group_steps(lengths, lay.sp, mbs.micro_batch_tokens, mbs.sp_mode, b=mbs.cost_b)
        count = int(dist.reduce(acc, torch.tensor(len(steps)), "max"))
        steps += [GroupStep(False, ((),) * lay.sp)] * (count - len(steps))
        return [Micro([i for u in (st.parts[0] if st.sharded else st.parts[lay.sp_rank]) for i in units[u]],
                      st.sharded) for st in steps]
    if mbs.packing:
        plan = lambda k: plan_micro_batches(lengths, mbs.micro_batch_tokens, min_count=k, b=mbs.cost_b)  # noqa: E731
        count = len(plan(1))
    else:
        chunks = unit_chunks([len(u) for u in units], mbs.micro_batch_size)
        count = len(chunks)
    count = int(dist.reduce(acc, torch.tensor(count), "max"))
    if mbs.packing:
        return [Micro([i for u in part for i in units[u]]) for part in plan(count)]
    rows = [i for u in units for i in u]
    return [Micro([rows[j] for j in c]) for c in chunks] + [Micro([]) for _ in range(count - len(chunks))]


def micro_inputs(samples: list[Sample], micro: Micro, pad_id: int, mbs: MicroBatching, acc) -> tuple[list[int], MicroBatch]:
    """The sample indices a micro-batch runs (an empty one runs the rank's shortest sample, weighted zero) and
    its model inputs on the device, this rank's shard when sharded."""
    idx = micro.idx or [min(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + samples[i].num_tokens)]
    mb = collate([samples[i] for i in idx], pad_id, packed=mbs.packing)
    if micro.sharded:
        mb = shard_micro_batch(mb, mbs.layout.sp, mbs.layout.sp_rank)
    return idx, mb.to(acc.device)


def owns_results(micro: Micro, layout: dist.Layout) -> bool:
    """Whether this rank counts a micro-batch's results: a real one, and for a sharded one (every rank of the
    SP group computes the same) only the group's first rank."""
    return bool(micro.idx) and (not micro.sharded or layout.sp_rank == 0)


def _units(samples: list[Sample], whole_groups: bool) -> list[list[int]]:
    """Sample indices that must share a micro-batch: single samples, or whole groups."""
    if not whole_groups:
        return [[i] for i in range(len(samples))]
    by_group: dict[int, list[int]] = {}
    for i, smp in enumerate(samples):
        by_group.setdefault(smp.group_id, []).append(i)
    return list(by_group.values())


def balance_ranks(batch: StepBatch, acc, *, whole_groups: bool, cost_b: float,
                  layout: dist.Layout | None = None) -> StepBatch:
    """Redistribute the step's samples across data-parallel ranks so that each rank's summed cost
    a*L + b*L^2 is near-equal (Karmarkar-Karp over units). Exactness is kept: the loss weights are
    global (normaliser all-reduced), so where a sample is trained does not change the update.
    Group ids are made unique across ranks. Moves samples, advantages and correctness; per-token tensors are
    built afterwards (``prepare_tokens``). Call before old/reference logprobs are scored.
    Under sequence parallelism the shares go to the dp SP groups and every rank of a group gets its group's."""
    world = acc.num_processes
    if world == 1:
        return batch
    layout = layout or dist.make_layout(acc, 1)
    shares = layout.dp
    payload = (batch.samples, batch.advantages.tolist(), None if batch.correct is None else batch.correct.tolist())
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
        idx, mb = micro_inputs(samples, micro, pad_id, mbs, acc)
        adapter_off = peft_model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with adapter_off, acc.autocast():
            lp, _ = policy(mb, temperature=temperature)
        if owns_results(micro, lay):
            out[idx, :lp.shape[1]] = lp.float().cpu()
    if lay.sp > 1:  # each row was written by one rank of the group
        out = dist.reduce(acc, out, "sum", lay.sp_group)
    return out


def score_all(policy, samples: list[Sample], pad_id: int, acc, *, temperature: float, mbs: MicroBatching,
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


def _prepare_minibatch(loss: LossSpec, prepared, acc, batch: StepBatch, rows: list[int], micro: list[Micro],
                       pad_id: int, temperature: float, mbs: MicroBatching) -> dict:
    """The loss's minibatch-wide inputs, [len(rows), C] each, from the current policy's logprobs (one no-grad
    forward over the minibatch's micro-batches, empty ones included so every rank runs the same forwards).
    Its sums and gathers run over one copy of each data-parallel share (the DP group under SP)."""
    current = _score_plan(prepared, batch.samples, micro, pad_id, acc, temperature=temperature, mbs=mbs,
                          width=batch.mask.shape[1])
    lay = layout_of(mbs, acc)
    return loss.prepare(MinibatchInputs(
        logprobs=current[rows], advantages=batch.advantages[rows], mask=batch.mask[rows],
        all_reduce_sum=lambda t: dist.reduce(acc, t, "sum", lay.dp_group),
        all_gather=lambda t: dist.gather_var(acc, t, group=lay.dp_group), rank=lay.dp_rank))


def update_policy(prepared, optimizer, scheduler, acc, batch: StepBatch, *, loss: LossSpec, algorithm,
                  pad_id: int, temperature: float, mbs: MicroBatching, max_new_tokens: int, max_grad_norm: float,
                  seed: int, forward_masks: list = (), step: int = 0, skip_nonfinite: bool = False) -> UpdateStats:
    """mu passes x minibatches; micro-batches accumulate into one optimizer step per minibatch.

    The aggregation normaliser is summed over all ranks and the weights are multiplied by the world
    size because DDP averages gradients: the result equals one process training on the whole batch.
    ``forward_masks`` ((name, mask) of kind "forward") scale the token weights after each forward pass.
    Returns token sums of the loss statistics, entropy, the vLLM-vs-trainer mismatch and grad norms.

    A loss (any micro-batch, any rank) or gradient norm that is not finite never reaches the weights: the run
    stops with TrainingDiverged naming ``step``, or with ``skip_nonfinite`` that optimizer step is skipped and
    counted (``stats.skipped``). The finiteness check is all-reduced, so every rank decides the same.
    """
    a, world, lay = algorithm, acc.num_processes, layout_of(mbs, acc)
    # units that stay together: single samples, or whole groups for sequence-level losses (DRPO)
    units = _units(batch.samples, loss.whole_groups)
    random.Random(seed).shuffle(units)
    minibatch_units = [units[i::a.minibatches] for i in range(a.minibatches)]
    group_ids = batch.group_ids
    stats = UpdateStats(masked={name: 0.0 for name, _ in forward_masks})
    if a.tis_cap > 0:
        stats.sums["tis_weight"] = 0.0
    # micro-batch plans depend only on the minibatch's units: plan once, reuse in every pass
    plans = [plan_rank(mb_units, batch.samples, mbs, acc) for mb_units in minibatch_units]
    prepared.train()
    for epoch in range(a.mu):
        for mb_index, mb_units in enumerate(minibatch_units):
            rows = [i for unit in mb_units for i in unit]
            # sums over ranks count each share once: the sp ranks of an SP group hold the same rows
            denom = aggregation_denominator(batch.mask[rows], a.aggregation, max_new_tokens)
            denom = float(dist.reduce(acc, torch.tensor(denom), "sum")) / lay.sp
            weights = aggregation_weights(batch.mask[rows], a.aggregation, denom) * world
            n_groups = float(dist.reduce(acc, torch.tensor(float(len(set(group_ids[rows].tolist())))), "sum")) / lay.sp
            micro = plans[mb_index]
            position = {i: j for j, i in enumerate(rows)}
            extra = {}
            if loss.prepare is not None:  # before the first backward: the policy is the minibatch's start
                extra = _prepare_minibatch(loss, prepared, acc, batch, rows, micro, pad_id, temperature, mbs)
            nonfinite = None  # the first micro-batch whose loss was not finite on some rank
            for k, m_b in enumerate(micro):
                # an empty micro-batch (this rank has fewer units than another, or none in this minibatch)
                # runs one of the rank's samples with zero weights, so every rank runs the same forwards
                idx, mb = micro_inputs(batch.samples, m_b, pad_id, mbs, acc)
                counted = owns_results(m_b, lay)
                mrows = [position.get(i, 0) for i in idx]
                width = mb.completion_mask.shape[1]
                zero = 1.0 if m_b.idx else 0.0
                sync = acc.no_sync(prepared) if k < len(micro) - 1 else contextlib.nullcontext()
                with sync, acc.autocast():
                    lp, ent = prepared(mb, temperature=temperature, with_entropy=True)
                    old = batch.old_logprobs[idx, :width].to(acc.device) if batch.old_logprobs is not None \
                        else lp.detach()
                    ref = batch.ref_logprobs[idx, :width].to(acc.device) if batch.ref_logprobs is not None else None
                    mask = batch.mask[idx, :width].to(acc.device) * zero
                    correct = batch.correct[idx].to(acc.device) if batch.correct is not None else None
                    token_weights = weights[mrows, :width].to(acc.device) * zero if rows else torch.zeros_like(mask)
                    if a.tis_cap > 0:  # off-policy rollouts: weight each token by min(pi_old / pi_behaviour, C)
                        tis = truncated_importance(old, batch.behaviour[idx, :width].to(acc.device), a.tis_cap)
                        token_weights = token_weights * tis
                        if counted:
                            stats.sums["tis_weight"] += float((tis * mask).sum())
                    for name, fm in forward_masks:  # normaliser unchanged: only the weights move
                        keep = fm.keep(MaskInputs(mask=mask, truncated=batch.truncated[idx].to(acc.device),
                                                  correct=correct, old_logprobs=old.detach(), entropy=ent))
                        if counted:
                            stats.masked[name] += float((mask * (1 - keep)).sum())
                        token_weights = token_weights * keep
                    out = loss.fn(LossInputs(
                        logprobs=lp, old_logprobs=old, advantages=batch.advantages[idx].to(acc.device),
                        mask=mask, token_weights=token_weights, ref_logprobs=ref,
                        group_ids=group_ids[idx].to(acc.device), correct=correct,
                        group_scale=world / max(n_groups, 1.0),
                        extra={key: v[mrows, :width].to(acc.device) if rows else torch.zeros_like(mask, dtype=v.dtype)
                               for key, v in extra.items()}))
                    if nonfinite is None and _any_rank(acc, not bool(torch.isfinite(out.loss.detach()).all())):
                        nonfinite = (k, float(out.loss.detach().float().sum()))
                        if not skip_nonfinite:
                            _diverged(step, f"the loss is {nonfinite[1]}", mb_index, k)
                    # one optimizer step per minibatch: the last micro-batch is the accumulation boundary
                    backends.backward(acc, prepared, out.loss, last=k == len(micro) - 1)
                stats.micro_batches += int(bool(m_b.idx))  # real forwards only, not zero-weight padding
                stats.sharded += int(m_b.sharded and bool(m_b.idx))
                if epoch == 0 and counted:  # first pass: entropy of every sample; mismatch before any update
                    real = mb.completion_mask
                    stats.entropy += float((ent * real).sum())
                    stats.tokens += float(real.sum())
                    if mb_index == 0:
                        diff = (lp.detach().float() - batch.behaviour[idx, :width].to(acc.device)).abs()
                        stats.mismatch += float((diff * real).sum())
                        stats.mismatch_tokens += float(real.sum())
                for key, v in out.stats.items() if counted else ():
                    stats.sums[key] = stats.sums.get(key, 0.0) + float(v)
            norm, applied = backends.optimizer_step(acc, prepared, optimizer, max_grad_norm,
                                                    skip=nonfinite is not None)
            if not applied:
                if not skip_nonfinite:
                    _diverged(step, f"the gradient norm is {norm}", mb_index, None)
                stats.skipped += 1
            else:
                stats.grad_norms.append(norm)
            if scheduler is not None:
                scheduler.step()
    return _sum_over_sp_group(stats, acc, lay)


def _any_rank(acc, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
    return bool(dist.reduce(acc, torch.tensor(float(flag)), "max") > 0)


def _diverged(step: int, what: str, minibatch: int, micro: int | None) -> None:
    where = f"minibatch {minibatch + 1}" + (f", micro-batch {micro + 1}" if micro is not None else "")
    raise TrainingDiverged(f"step {step}: {what} ({where}); the run stopped before applying it, so the weights and "
                           "the last checkpoint are from before this step. Lower optim.lr or check the rewards and "
                           "advantages, or set optim.skip_nonfinite: true to skip such steps")


def _sum_over_sp_group(stats: UpdateStats, acc, lay: dist.Layout) -> UpdateStats:
    """Under SP each rank counted only the micro-batches it owns (owns_results): sum the group's counts, so every
    rank reports the statistics of the whole share it trained."""
    if lay.sp == 1:
        return stats
    import torch.distributed as tdist

    every: list = [None] * lay.sp
    tdist.all_gather_object(every, (stats.entropy, stats.tokens, stats.mismatch, stats.mismatch_tokens,
                                    stats.sums, stats.masked), group=lay.sp_group)
    out = UpdateStats(masked={}, grad_norms=stats.grad_norms, micro_batches=stats.micro_batches,
                      sharded=stats.sharded, skipped=stats.skipped)
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
