"""What the policy update of a step is built from; the update loop itself (passes x minibatches x micro-batches,
the loss call, backward and optimizer steps) is ``update_policy`` in rlkit.trainers.grpo, which reads top to bottom.

Here: the per-token tensors of a batch (``prepare_tokens``), the balance of work across ranks (``balance_ranks``),
scoring without gradient (``policy_logprobs``), the minibatches and their micro-batch plans (``plan_minibatches``),
the minibatch normaliser and the loss's minibatch-wide inputs, one micro-batch's rows of the batch
(``cut_micro_batch``), its token weights (truncated importance sampling, forward token masks), the bookkeeping
of its statistics and the divergence checks. The loop's settings, fixed for a run, are ``UpdateSettings``.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlkit.algorithms.losses import (
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
)
from rlkit.records import MaskInputs, Sample, StepBatch, UpdateStats, group_index, to_completion_space


def prepare_tokens(batch: StepBatch, masks: list = ()) -> StepBatch:
    """Fill the per-token tensors [N, C] of ``batch``: the loss mask (completion tokens, then every (name, mask)
    of kind "batch", e.g. mask_truncated, whose removed share goes to ``mask/<name>/masked_frac``), the engine's
    behaviour logprobs, the tokens the policy generated (``generated``: all but a rollout hook's injected ones; the
    entropy's and the mismatch's tokens) and the per-token advantages, when the estimator made them. A filter's
    padded copies (``batch.padding``) get an all-zero mask row, as DOT's zeroed response mask. Returns the batch."""
    samples = batch.samples
    cmax = max(1, max((s.num_tokens for s in samples), default=1))
    batch.generated = to_completion_space([s.trainable() for s in samples], cmax)  # injected tokens: 0
    mask = batch.generated * batch.real.to(batch.generated.dtype)[:, None]  # never trained; padded copies: no token
    total = max(float(mask.sum()), 1.0)
    for name, m in masks:
        kept = mask * m.keep(MaskInputs(mask=mask, truncated=batch.truncated, correct=batch.correct))
        batch.metrics[f"mask/{name}/masked_frac"] = float((mask - kept).sum()) / total
        mask = kept
    batch.mask, batch.behaviour = mask, to_completion_space([s.logprobs for s in samples], cmax)
    if batch.token_advantages is not None:  # the estimator's per-token advantages (AdvantageCaps.tokens)
        batch.token_adv = to_completion_space([row.tolist() for row in batch.token_advantages], cmax)
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


def split_minibatches(batch: StepBatch, whole_groups: bool, count: int, seed: int) -> list[list[list[int]]]:
    """The units of each of ``count`` minibatches: the batch's units (single samples, or whole groups for a
    sequence-level loss, DRPO; a filter's padded copies are in none: zero weight, counted in no normaliser, so the
    update is that of the real groups alone) shuffled with ``seed`` and dealt out in turn."""
    units = _units(batch.samples, whole_groups, batch.real)
    random.Random(seed).shuffle(units)
    return [units[i::count] for i in range(count)]


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
               None if batch.correct is None else [c for c, k in zip(batch.correct.tolist(), real) if k],
               None if batch.token_advantages is None else [t for t, k in zip(batch.token_advantages, real) if k])
    gathered = dist.gather_objects(acc, payload)
    stride = 1 + max((s.group_id for smps, _, _, _ in gathered for s in smps), default=0)
    samples, adv, corr, tok = [], [], [], []
    for r, (smps, a, c, t) in enumerate(gathered):
        samples += [replace(s, group_id=s.group_id + r * stride) for s in smps]
        adv += a
        corr += c if c is not None else [float("nan")] * len(smps)
        tok += t if t is not None else [None] * len(smps)
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
    token_advantages = None if batch.token_advantages is None else [tok[i] for i in mine]
    return StepBatch([], [samples[i] for i in mine], advantages=torch.tensor([adv[i] for i in mine]),
                     correct=correct, metrics=batch.metrics, token_advantages=token_advantages)


@dataclass
class Scoring:
    """How no-grad scoring forwards run: the pad id, the temperature, the micro-batching, the width of the logprobs
    (the batch's completion width) and whether the PEFT adapters are switched off (the base model as reference)."""

    pad_id: int
    temperature: float
    batching: MicroBatching
    width: int
    disable_adapter: bool = False


@torch.no_grad()
def _score_plan(policy, samples: list[Sample], plan: list[Micro], acc, scoring: Scoring) -> torch.Tensor:
    """Logprobs [len(samples), width] (no grad) of the samples in ``plan``'s micro-batches; an empty micro-batch
    runs and is discarded, so every rank runs the same forwards. Rows outside the plan stay 0. Under
    sequence parallelism every rank of the SP group ends with the logprobs of all the group's micro-batches."""
    out = torch.zeros((len(samples), scoring.width), dtype=torch.float32)
    layout = layout_of(scoring.batching, acc)
    peft_model = acc.unwrap_model(policy).model
    for micro in plan:
        idx, inputs = micro_inputs(samples, micro, scoring.pad_id, scoring.batching, acc)
        adapter_off = peft_model.disable_adapter() if scoring.disable_adapter else contextlib.nullcontext()
        with adapter_off, acc.autocast():
            lp, _ = policy(inputs, temperature=scoring.temperature)
        if owns_results(micro, layout):
            out[idx, :lp.shape[1]] = lp.float().cpu()
    if layout.sp > 1:  # each row was written by one rank of the group
        out = dist.all_reduce(acc, out, "sum", layout.sp_group)
    return out


def policy_logprobs(policy, samples: list[Sample], pad_id: int, acc, *, temperature: float,
                    batching: MicroBatching, width: int, disable_adapter: bool = False) -> torch.Tensor:
    """Logprobs [N, width] of every sample's completion under `policy` (no grad). With
    ``disable_adapter`` the PEFT adapters are switched off: the base model is the reference."""
    plan = plan_rank([[i] for i in range(len(samples))], samples, batching, acc)
    return _score_plan(policy, samples, plan, acc, Scoring(pad_id, temperature, batching, width, disable_adapter))


@dataclass
class LossSpec:
    """The injected loss and what it declares (read once at start-up)."""

    fn: Any  # LossInputs -> LossOutputs, options bound
    whole_groups: bool = False  # keep groups inside one micro-batch (sequence-level losses)
    prepare: Any = None  # MinibatchInputs -> {name: [M, C]}, options bound (see rlkit.algorithms.losses)
    reference: float = 0.0  # weight of its KL penalty to the reference policy: > 0 scores the reference model


@dataclass
class UpdateSettings:
    """How the policy update runs, fixed for a run (built once at set-up): the injected loss, the algorithm's
    settings (mu, minibatches, aggregation, tis_cap), the micro-batching, the scoring temperature, the completion
    cap (the aggregation's constant), clipping, the forward token masks and the non-finite policy."""

    loss: LossSpec
    algorithm: Any  # rlkit.config.AlgorithmConfig
    batching: MicroBatching
    pad_id: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 0
    max_grad_norm: float = 0.0
    forward_masks: list = field(default_factory=list)  # (name, mask) of kind "forward"
    skip_nonfinite: bool = False


def empty_update_stats(settings: UpdateSettings) -> UpdateStats:
    """The update's statistics before any micro-batch: a count per forward token mask, and the truncated importance
    weights' sum when they are on."""
    stats = UpdateStats(masked={name: 0.0 for name, _ in settings.forward_masks})
    if settings.algorithm.tis_cap > 0:
        stats.sums["tis_weight"] = 0.0
    return stats


@dataclass
class MinibatchPlan:
    """One minibatch of the update: its rows of the batch (whole units) and this rank's micro-batches over them."""

    rows: list[int]
    micro_batches: list[Micro]


def plan_minibatches(batch: StepBatch, settings: UpdateSettings, acc, stats: UpdateStats,
                     seed: int) -> list[MinibatchPlan]:
    """The update's minibatches (``split_minibatches``) and their micro-batch plans. A plan depends only on the
    minibatch's units: planned once, it is reused in every pass. With a calibrated time model (seconds) the plans'
    predicted time and its bound over every pass go to ``stats``, for the metrics to compare with the measured."""
    algo, batching = settings.algorithm, settings.batching
    minibatch_units = split_minibatches(batch, settings.loss.whole_groups, algo.minibatches, seed)
    batching.take_log()
    micro_plans = [plan_rank(units, batch.samples, batching, acc) for units in minibatch_units]
    predicted, bound = batching.take_log()
    if batching.calibrated:
        stats.predicted_s, stats.bound_s = predicted * algo.mu, bound * algo.mu
    return [MinibatchPlan([i for unit in units for i in unit], plan)
            for units, plan in zip(minibatch_units, micro_plans)]


@dataclass
class Minibatch:
    """What every micro-batch of one minibatch shares: its rows, the aggregation weights of those rows, the group
    scale of group-level losses and the loss's minibatch-wide inputs."""

    rows: list[int]
    weights: torch.Tensor  # [len(rows), C]
    group_scale: float
    extra: dict
    position: dict[int, int] = field(init=False)  # a batch row -> its row in ``weights`` and ``extra``

    def __post_init__(self) -> None:
        self.position = {i: j for j, i in enumerate(self.rows)}


def minibatch_normaliser(acc, batch: StepBatch, rows: list[int], settings: UpdateSettings) -> tuple[torch.Tensor, float]:
    """The aggregation weights [len(rows), C] of a minibatch's rows and the group scale of group-level losses.

    The aggregation normaliser and the group count are summed over every rank (two all-reduces, in that order;
    each data-parallel share counted once: the SP ranks of a group hold the same rows), and the weights and the
    scale are multiplied by the world size because DDP averages gradients: the result equals one process training
    on the whole batch."""
    algo, layout, world = settings.algorithm, layout_of(settings.batching, acc), acc.num_processes
    denominator = aggregation_denominator(batch.mask[rows], algo.aggregation, settings.max_new_tokens)
    denominator = float(dist.all_reduce(acc, torch.tensor(denominator), "sum")) / layout.sp
    groups = float(dist.all_reduce(acc, torch.tensor(float(len(set(batch.group_ids[rows].tolist())))),
                                   "sum")) / layout.sp
    weights = aggregation_weights(batch.mask[rows], algo.aggregation, denominator) * world
    return weights, world / max(groups, 1.0)


def minibatch_loss_inputs(prepared, acc, batch: StepBatch, minibatch: MinibatchPlan,
                          settings: UpdateSettings) -> dict:
    """The loss's minibatch-wide inputs (its ``prepare``; {} for a loss that declares none), [len(rows), C] each,
    from the current policy's logprobs: one no-grad forward over the minibatch's micro-batches, empty ones
    included so every rank runs the same forwards. Its sums and gathers run over one copy of each data-parallel
    share (the DP group under SP). Call before the minibatch's first backward: the policy is its start."""
    loss = settings.loss
    if loss.prepare is None:
        return {}
    rows = minibatch.rows
    scoring = Scoring(settings.pad_id, settings.temperature, settings.batching, width=batch.mask.shape[1])
    current = _score_plan(prepared, batch.samples, minibatch.micro_batches, acc, scoring)
    layout = layout_of(settings.batching, acc)
    return loss.prepare(MinibatchInputs(
        logprobs=current[rows], advantages=batch.advantages[rows], mask=batch.mask[rows],
        token_advantages=None if batch.token_adv is None else batch.token_adv[rows],
        all_reduce_sum=lambda t: dist.all_reduce(acc, t, "sum", layout.dp_group),
        all_gather=lambda t: dist.gather_var(acc, t, group=layout.dp_group), rank=layout.dp_rank))


@dataclass
class MicroRows:
    """One micro-batch's rows of the step batch, cut to its completion width and on the device (``cut_micro_batch``).
    An empty micro-batch (this rank has fewer units than another, or none in this minibatch) runs one of the rank's
    samples: its mask, weights and loss inputs are zero, so every rank runs the same forwards."""

    index: list[int]  # the rows of the batch it runs
    live: bool  # False: the zero-weight forward of an empty micro-batch
    sharded: bool  # run by a block of ranks of the SP group
    counted: bool  # this rank adds its statistics (rlkit.parallel.micro.owns_results)
    tokens: torch.Tensor  # [B, W] its inputs' completion tokens the policy generated (not injected by a rollout
    # hook): the entropy's and the mismatch's tokens
    mask: torch.Tensor  # [B, W] the loss mask
    weights: torch.Tensor  # [B, W] the minibatch's aggregation weights of these rows
    advantages: torch.Tensor  # [B]
    token_advantages: torch.Tensor | None  # [B, W] per-token advantages (a token-level estimator), else None
    group_ids: torch.Tensor  # [B]
    correct: torch.Tensor | None  # [B]
    old_logprobs: torch.Tensor | None  # [B, W]; None: the batch holds none (the old policy is the current one)
    ref_logprobs: torch.Tensor | None  # [B, W]
    behaviour: torch.Tensor | None  # [B, W] the engine's logprobs
    extra: dict  # the loss's minibatch-wide inputs of these rows, [B, W] each


def cut_micro_batch(batch: StepBatch, micro: Micro, index: list[int], inputs, minibatch: Minibatch, layout: Layout,
                    acc) -> MicroRows:
    """The rows ``index`` of ``micro`` (as ``micro_inputs`` gave them, with its model ``inputs``): the batch's
    tensors cut to the inputs' completion width and moved to the device, the minibatch's weights and
    loss inputs at those rows."""
    device, width = acc.device, inputs.completion_mask.shape[1]
    live = 1.0 if micro.idx else 0.0  # 0: a zero-weight forward of an idle rank
    in_minibatch = [minibatch.position.get(i, 0) for i in index]
    mask = batch.mask[index, :width].to(device) * live
    weights = minibatch.weights[in_minibatch, :width].to(device) * live if minibatch.rows else torch.zeros_like(mask)
    return MicroRows(
        index=index, live=bool(micro.idx), sharded=micro.sharded, counted=owns_results(micro, layout),
        tokens=inputs.completion_mask * batch.generated[index, :width].to(inputs.completion_mask),
        mask=mask, weights=weights, advantages=batch.advantages[index].to(device),
        token_advantages=batch.token_adv[index, :width].to(device) if batch.token_adv is not None else None,
        group_ids=batch.group_ids[index].to(device),
        correct=batch.correct[index].to(device) if batch.correct is not None else None,
        old_logprobs=batch.old_logprobs[index, :width].to(device) if batch.old_logprobs is not None else None,
        ref_logprobs=batch.ref_logprobs[index, :width].to(device) if batch.ref_logprobs is not None else None,
        behaviour=batch.behaviour[index, :width].to(device) if batch.behaviour is not None else None,
        extra={key: v[in_minibatch, :width].to(device) if minibatch.rows else torch.zeros_like(mask, dtype=v.dtype)
               for key, v in minibatch.extra.items()})


def token_weights(batch: StepBatch, rows: MicroRows, old_logprobs: torch.Tensor, entropy: torch.Tensor,
                  settings: UpdateSettings, stats: UpdateStats) -> torch.Tensor:
    """The loss's token weights [B, W] for one micro-batch: the minibatch's aggregation weights, times the truncated
    importance weights (algorithm.tis_cap > 0: off-policy rollouts, each token weighted by min(pi_old /
    pi_behaviour, C)), times each forward token mask, which sees this forward's entropy (the normaliser is
    unchanged: only the weights move). The rank that counts the micro-batch adds the importance weights' sum and
    the tokens each mask removes to ``stats``."""
    weights, mask, tis_cap = rows.weights, rows.mask, settings.algorithm.tis_cap
    if tis_cap > 0:
        tis = truncated_importance(old_logprobs, rows.behaviour, tis_cap)
        weights = weights * tis
        if rows.counted:
            stats.sums["tis_weight"] += float((tis * mask).sum())
    for name, forward_mask in settings.forward_masks:
        keep = forward_mask.keep(MaskInputs(mask=mask, truncated=batch.truncated[rows.index].to(mask.device),
                                            correct=rows.correct, old_logprobs=old_logprobs.detach(), entropy=entropy,
                                            behaviour_logprobs=rows.behaviour))
        if rows.counted:
            stats.masked[name] += float((mask * (1 - keep)).sum())
        weights = weights * keep
    return weights


def record_micro_batch(stats: UpdateStats, rows: MicroRows, logprobs: torch.Tensor, entropy: torch.Tensor,
                       loss_stats: dict, *, first_pass: bool, first_minibatch: bool) -> None:
    """Add one micro-batch's statistics to ``stats``: the forwards run (real ones only, not zero-weight padding) and
    those sharded; for the rank that counts it, the loss's statistics, and in the first pass over the batch the
    entropy of every sample, and in the first minibatch the trainer-vs-engine logprob mismatch (before any
    update)."""
    stats.micro_batches += int(rows.live)
    stats.sharded += int(rows.sharded and rows.live)
    if first_pass and rows.counted:
        real = rows.tokens
        stats.entropy += float((entropy * real).sum())
        stats.tokens += float(real.sum())
        if first_minibatch:
            diff = (logprobs.detach().float() - rows.behaviour).abs()
            stats.mismatch += float((diff * real).sum())
            stats.mismatch_tokens += float(real.sum())
    for key, v in loss_stats.items() if rows.counted else ():
        stats.sums[key] = stats.sums.get(key, 0.0) + float(v)


def any_rank(acc, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (one all-reduce: every rank gets the same answer)."""
    return bool(dist.all_reduce(acc, torch.tensor(float(flag)), "max") > 0)


def not_finite(acc, loss: torch.Tensor) -> float | None:
    """The loss's value when it is not finite on some rank (checked on every rank, so all agree), else None."""
    bad = any_rank(acc, not bool(torch.isfinite(loss.detach()).all()))
    return float(loss.detach().float().sum()) if bad else None


def diverged(step: int, what: str, minibatch: int, micro: int | None) -> TrainingDiverged:
    """The error that stops a run whose loss or gradient norm is not finite (``step`` 1-based, ``minibatch`` and
    ``micro`` 0-based); nothing has been applied to the weights."""
    where = f"minibatch {minibatch + 1}" + (f", micro-batch {micro + 1}" if micro is not None else "")
    return TrainingDiverged(f"step {step}: {what} ({where}); the run stopped before applying it, so the weights and "
                            "the last checkpoint are from before this step. Lower optim.lr or check the rewards and "
                            "advantages, or set optim.skip_nonfinite: true to skip such steps")
