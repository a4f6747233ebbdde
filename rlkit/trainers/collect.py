"""The data stages of a step, method-blind: prompts -> rollout -> rewards -> sample transforms -> (filter
rounds) -> shaping -> advantages, and the monitor rollouts of shapers that declare a monitor set.

Each function takes the run and a StepBatch; what a method does lives in the stages it registered
(rlkit.trainers.stages), which these functions call in order.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time

import torch

from rlkit import registry
from rlkit.data import make_prompt
from rlkit.parallel import dist
from rlkit.records import ShapingBatch, StageContext, StepBatch, sample_column
from rlkit.rewards.combine import RewardError, reward_inputs
from rlkit.rewards.length import ends_in_loop
from rlkit.rollout.base import SamplingSpec


@contextlib.contextmanager
def timed(timers: dict, key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers[key] = timers.get(key, 0.0) + time.perf_counter() - t0


def prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def context(run, step: int) -> StageContext:
    return StageContext(step=step, total_steps=run.cfg.train.steps,
                        rescore=functools.partial(score, run, step=step),
                        render=lambda columns, extra: make_prompt(columns, run.tokenizer, run.cfg.data, extra),
                        decode=functools.partial(run.tokenizer.decode, skip_special_tokens=True))


def sampling_spec(cfg, n: int, seed: int, logprobs: bool = True) -> SamplingSpec:
    r = cfg.rollout
    return SamplingSpec(n=n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                        logprobs=logprobs, seed=seed)


def score(run, batch: StepBatch, idx: list[int] | None = None, *, step: int) -> None:
    """Every reward term on the batch's samples (or only on ``idx``, e.g. after a transform changed them):
    fills rewards, terms and correct (NaN without a correctness term), and adds the failed samples of each
    term with ``on_error: none`` to ``batch.metrics["reward/<term>/errors"]`` (0 included; re-scored samples
    count again)."""
    samples = batch.samples if idx is None else [batch.samples[i] for i in idx]
    prompts = batch.prompts
    label = run.rewards.correctness_label
    for term in run.rewards.terms:  # every rank reports the series, so the sum over ranks lines up
        if term.on_error == "none":
            batch.metrics.setdefault(f"reward/{term.label}/errors", 0)
    values = None
    if samples:
        texts, completions, ids, columns, context = reward_inputs(prompts, samples, batch.length_count)
        values = run.rewards(texts, completions, ids, columns, **context, step=step)
    if values is None:  # a rank with no share (e.g. fewer monitor prompts than ranks)
        if idx is None:
            batch.rewards, batch.terms = torch.zeros(0), {k: torch.zeros(0) for k in run.rewards.labels}
            batch.correct = batch.terms[label] if label else torch.zeros(0)
            batch.token_rewards = [] if run.rewards.token_shaped else None
        return
    for term_label, failed in values.errors.items():
        batch.metrics[f"reward/{term_label}/errors"] += failed
    if idx is None:
        batch.rewards, batch.terms, batch.token_rewards = values.total, values.terms, values.tokens
    else:
        batch.rewards[idx] = values.total
        for k in batch.terms:
            batch.terms[k][idx] = values.terms[k]
        if values.tokens is not None:
            for i, row in zip(idx, values.tokens):
                batch.token_rewards[i] = row
    batch.correct = batch.terms[label] if label else torch.full_like(batch.rewards, float("nan"))


@contextlib.contextmanager
def rewards_together(acc):
    """Around work that every process does at the same point (scoring a round with its sample transforms, a
    monitor's scoring): a reward error on one process stops every process with its message, instead of the
    others waiting in the step's next collective until the backend's timeout."""
    error = None
    try:
        yield
    except RewardError as e:
        error = e
    if acc.num_processes > 1:
        failed = [(rank, m) for rank, m in enumerate(dist.gather_objects(acc, error and str(error))) if m]
        if failed and error is None:
            rank, message = failed[0]
            raise RewardError(f"{message} (on process {rank})")
    if error is not None:
        raise error


def annotate_lengths(run, batch: StepBatch) -> None:
    """The thinking split of a generation's samples (``rollout.thinking``: ``Sample.think_tokens``, computed once
    here, where the trainer collects what the rollout generated, forced phrases included), and the count the batch's
    length decisions read (``StepBatch.length_count``, ``Sample.length``)."""
    thinking = run.cfg.rollout.thinking
    if thinking.end:
        run.thinking.annotate(batch.samples)
    batch.length_count = thinking.count


def draw(run, step: int, *, n_prompts: int, round_idx: int) -> tuple[list, SamplingSpec, dict]:
    """The prompts of one generation round on this rank (its slice of n_prompts x world from the seeded sampler,
    after the prompt transforms), the round's sampling spec and the transforms' metrics."""
    cfg, acc = run.cfg, run.acc
    world, rank = acc.num_processes, acc.process_index
    ctx = context(run, step)
    prompts = [run.train_set.prompts[i] for i in run.sampler.next_batch(n_prompts * world)[rank::world]]
    metrics: dict = {}
    for name, transform in run.stages.prompt_transforms:
        prompts, m = transform(prompts, ctx)
        metrics.update(prefixed(f"transforms/{name}", m))
    seed = cfg.train.seed * 100_003 + step * 1009 + round_idx * 101 + rank
    return prompts, sampling_spec(cfg, cfg.rollout.group_size, seed), metrics


def produce(run, step: int, n_prompts: int, round_idx: int) -> StepBatch:
    """One generation round on this rank: its slice of n_prompts x world prompts from the seeded sampler,
    the prompt transforms, the rollout, every reward term, the sample transforms (and the shapers when the
    filter decides on shaped rewards)."""
    acc, stages = run.acc, run.stages
    ctx = context(run, step)
    with timed(run.timers, "rollout"):  # asynchronous rollouts: the wait for a batch generated ahead
        batch = run.rollout.produce(step, functools.partial(draw, run, n_prompts=n_prompts, round_idx=round_idx),
                                    first_round=round_idx == 0)
    annotate_lengths(run, batch)
    metrics = batch.metrics
    with timed(run.timers, "reward"), rewards_together(acc):
        score(run, batch, step=step)
        for name, transform in stages.sample_transforms:
            metrics.update(prefixed(f"transforms/{name}", transform(batch, ctx)))
    if stages.needs_shaped_rounds:
        shape(run, batch, step)
    return batch


def collect(run, step: int) -> StepBatch:
    """This rank's batch of the step (prompts_per_step / world groups): one round, or the rounds the filter
    asks for; shaped over the whole step."""
    quota = run.cfg.rollout.prompts_per_step // run.acc.num_processes
    if run.stages.filter is None:
        batch = produce(run, step, quota, 0)
    else:
        batch = run.stages.filter.collect(quota, functools.partial(produce, run, step),
                                          lambda t, op: dist.all_reduce(run.acc, t, op))
    if batch.shaped is None:
        shape(run, batch, step)
    return batch


def _offsets(acc, batch: StepBatch, n: int | None = None) -> tuple[list[int], int, int]:
    """(every rank's sample count, this rank's sample offset, this rank's group offset); ``n``: this rank's count
    when not every sample takes part (the real ones, without a filter's padded copies)."""
    n = len(batch.samples) if n is None else n
    sizes, group_sizes = dist.rank_sizes(acc, n), dist.rank_sizes(acc, len(batch.prompts))
    return sizes, sum(sizes[:acc.process_index]), sum(group_sizes[:acc.process_index])


def shape(run, batch: StepBatch, step: int) -> None:
    """The shapers in order over the whole step, gathered from all ranks (counts may differ); sets
    ``batch.shaped`` to this rank's slice. A filter's padded copies (``batch.padding``) are not shown to the
    shapers (a batch statistic, a top fraction of groups or a per-question budget must not count a group twice);
    they keep their combined reward, which nothing trains on."""
    acc, shapers = run.acc, run.stages.shapers
    if not shapers:
        batch.shaped = batch.rewards.clone()
        return
    real = batch.real
    rows = torch.nonzero(real).flatten()
    sizes, offset, group_offset = _offsets(acc, batch, len(rows))

    def gather(t):
        return dist.gather_var(acc, t[rows], sizes)

    looping = None
    if run.stages.needs_looping:
        looping = gather(torch.tensor([float(ends_in_loop(s.completion_ids)) for s in batch.samples])) > 0.5
    keys = [str(batch.prompts[batch.samples[i].group_id].columns.get("source", batch.samples[i].group_id))
            for i in rows.tolist()]
    columns = None  # the prompt columns the shapers declare (NeMo-RL's per-prompt profiles)
    wanted = sorted({c for _, s in shapers for c in registry.capabilities(s, kind="shaper").needs_columns})
    if wanted:
        mine = [{c: sample_column(batch.prompts, batch.samples[i], c) for c in wanted} for i in rows.tolist()]
        columns = [c for rank_columns in dist.gather_objects(acc, mine) for c in rank_columns]
    sb = ShapingBatch(rewards=gather(batch.rewards), correct=gather(batch.correct), lengths=gather(batch.lengths),
                      truncated=gather(batch.truncated.float()) > 0.5, group_ids=gather(batch.group_ids + group_offset),
                      step=step, terms={k: gather(v) for k, v in batch.terms.items()}, looping=looping,
                      keys=[k for rank_keys in dist.gather_objects(acc, keys) for k in rank_keys], columns=columns)
    for name, shaper in shapers:
        result = shaper(sb)
        sb.rewards = result.rewards
        batch.metrics.update(prefixed(f"shaping/{name}", result.metrics))
    batch.metrics["reward/shaped_mean"] = float(sb.rewards.mean())
    shaped = batch.rewards.clone()
    shaped[rows] = sb.rewards[offset:offset + len(rows)].to(shaped.dtype)
    batch.shaped = shaped


def advantages(run, batch: StepBatch) -> torch.Tensor:
    """The estimator over the whole step's final rewards (gathered from all ranks); this rank's slice [N]. A
    filter's padded copies are left out of the estimator's statistics (group and batch means and stds) and get
    advantage 0: they carry no loss (DOT's padded groups, rlkit.algorithms.filters.fill_quota). The estimator's
    ``lengths`` weigh its statistics by the tokens that take the advantage in the loss: every completion token
    (``StepBatch.num_tokens``), whatever rollout.thinking.count says.
    An estimator that declares ``tokens`` also gets the step's per-token rewards (zeros where no term gave any) and
    returns per-token advantages: this rank's rows go to ``batch.token_advantages`` and the returned [N] is each
    sample's mean token advantage (what the signal metrics read). An estimator that declares ``needs_columns`` gets
    them per sample (``columns``: a sample's tag, else its prompt's column)."""
    acc, caps = run.acc, run.stages.advantage_caps
    rows = torch.nonzero(batch.real).flatten()
    sizes, offset, group_offset = _offsets(acc, batch, len(rows))
    args = (dist.gather_var(acc, batch.final_rewards()[rows], sizes),
            dist.gather_var(acc, (batch.group_ids + group_offset)[rows], sizes),
            dist.gather_var(acc, batch.num_tokens[rows], sizes))
    extra = {}
    if caps.needs_columns:  # per-sample columns the estimator declares (HBPO's budget, a rollout hook's tag)
        mine = [[sample_column(batch.prompts, batch.samples[i], c) for c in caps.needs_columns] for i in rows.tolist()]
        every = [row for rank_rows in dist.gather_objects(acc, mine) for row in rank_rows]
        extra["columns"] = {c: [row[k] for row in every] for k, c in enumerate(caps.needs_columns)}
    if not caps.tokens:
        adv = run.stages.advantage(*args, **extra)
        out = torch.zeros(len(batch.samples), dtype=adv.dtype)
        out[rows] = adv[offset:offset + len(rows)]
        return out
    mine = [batch.token_rewards[i] if batch.token_rewards is not None else torch.zeros(batch.samples[i].num_tokens)
            for i in rows.tolist()]
    every = [row for rank_rows in dist.gather_objects(acc, mine) for row in rank_rows]
    per_token = run.stages.advantage(*args, token_rewards=every, **extra)[offset:offset + len(rows)]
    tokens = [torch.zeros(s.num_tokens) for s in batch.samples]
    out = torch.zeros(len(batch.samples), dtype=torch.float32)
    for i, row in zip(rows.tolist(), per_token):
        tokens[i] = row.float()
        out[i] = row.float().mean() if row.numel() else 0.0
    batch.token_advantages = tokens
    return out


def refresh_monitors(run, step: int) -> dict:
    """For each shaper that declares a monitor set (every, size, samples): when due, K rollouts per monitor
    prompt with the current policy, scored, gathered from all ranks (uneven shares), handed to the shaper."""
    cfg, acc = run.cfg, run.acc
    world, rank = acc.num_processes, acc.process_index
    metrics: dict = {}
    for name, shaper in run.stages.monitored:
        every, size, k = shaper.monitor
        if step % every:
            continue
        with timed(run.timers, "monitor"):
            n = len(run.train_set.prompts)
            chosen = random.Random(cfg.train.seed + 7).sample(range(n), min(size, n))[rank::world]
            prompts = [run.train_set.prompts[i] for i in chosen]
            samples = run.engine.generate([p.ids for p in prompts],
                                          sampling_spec(cfg, k, cfg.train.seed * 7919 + step * 31 + rank, False))
            batch = StepBatch(prompts, samples)
            annotate_lengths(run, batch)
            with rewards_together(acc):
                score(run, batch, step=step)
            sizes, _, group_offset = _offsets(acc, batch)
            gathered = [dist.gather_var(acc, t, sizes)
                        for t in (batch.lengths, batch.correct, batch.group_ids + group_offset)]
            metrics.update(prefixed(f"shaping/{name}", shaper.update_from_monitor(*gathered)))
    return metrics
