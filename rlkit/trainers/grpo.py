"""The GRPO-family training loop: one readable step, algorithm-blind (DESIGN rules 1 and 6).

The advantage estimator and the policy loss are resolved once from the config and called as plain
functions; GRPO, Dr.GRPO, DAPO-style clipping and RLOO differ only in those and in config values.
Runs on one process or many (``accelerate launch``: DDP, DeepSpeed ZeRO, FSDP2 through accelerate
config files); each process owns a colocated rollout engine and a disjoint slice of every prompt batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object

from rlkit.config import Config, save_config, to_dict
from rlkit.data import PromptSampler, load_prompt_sets, make_prompt
from rlkit.logging import RunLogger
from rlkit.models import load_policy, load_tokenizer, pick_dtype, resolve_model_path
from rlkit.rewards import RewardSet, RewardValues
from rlkit.rewards.curriculum import budget_at
from rlkit.rewards.dot import outlier_cuts, truncate_sample
from rlkit.rewards.length import ends_in_loop
from rlkit.rewards.shaping import ShapingBatch, build_shaper
from rlkit.rollout import SamplingSpec, make_engine
from rlkit.rollout.segments import SegmentRolloutWorker
from rlkit.rollout.weights import exported_weights
from rlkit.trainers import checkpoint as ckpt
from rlkit.trainers.advantages import resolve_advantage
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.evaluate import accuracy_reward, eval_table, evaluate, length_stats
from rlkit.trainers.losses import build_loss, needs_whole_groups
from rlkit.trainers.sampling import PredictiveOversampling, fill_quota, informative_groups
from rlkit.trainers.update import MicroBatching, UpdateBatch, balance_ranks, score_all, update_policy


@dataclass
class RunResult:
    run_dir: Path
    steps_done: int
    before: dict
    after: dict
    last_metrics: dict


def _setup_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cuda = torch.cuda.is_available()
    dtype = pick_dtype(cfg.model.dtype, torch.device("cuda" if cuda else "cpu"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    acc = Accelerator(cpu=not cuda, mixed_precision=precision)
    set_seed(cfg.train.seed + acc.process_index)
    return acc, dtype


def _optimizer_and_schedule(cfg: Config, model, total_updates: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.optim.schedule]
    sched = get_scheduler(name, opt, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=max(total_updates, 1))
    return opt, sched


def _sync_weights(engine, prepared, acc) -> float:
    t = time.perf_counter()
    with exported_weights(acc.unwrap_model(prepared).model) as named:
        engine.update_weights(named)
    return time.perf_counter() - t


@dataclass
class Run:
    """Everything the loop needs, built once by ``setup`` from the config."""

    cfg: Config
    acc: object
    run_dir: Path
    tokenizer: object
    prepared: object  # accelerate-prepared LogprobPolicy
    ref_model: object | None
    optimizer: object
    scheduler: object
    engine: object
    rewards: RewardSet
    shapers: list
    accuracy_fn: object
    advantage_fn: object
    loss_fn: object
    train_set: object
    eval_set: object
    sampler: PromptSampler
    logger: RunLogger
    start_step: int = 0
    before: dict | None = None
    oversampler: object | None = None  # PredictiveOversampling when algorithm.oversampling = predictive
    mbs: MicroBatching | None = None  # micro-batch planning (packing, token budget, cost model)
    segments: SegmentRolloutWorker | None = None  # rollout.segments > 1 (UloRL)


def setup(cfg: Config, resume: str | None = None) -> Run:
    """Accelerator, run dir, model, optimizer, engine, data, rewards, logging; restore a checkpoint."""
    acc, dtype = _setup_accelerator(cfg)
    run_dir = Path(cfg.output_dir)
    resume_path = ckpt.resolve_resume(resume, run_dir)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
        resolve_model_path(cfg.model.name_or_path)  # converts the embedded model once; other ranks find it cached
    acc.wait_for_everyone()
    model_path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model_path)
    hf_model = load_policy(model_path, torch.float32, gradient_checkpointing=cfg.model.gradient_checkpointing,
                           lora=cfg.model.lora)
    ref_model = None
    if cfg.algorithm.kl_coef > 0 and not cfg.model.lora.enabled:  # with LoRA the reference is adapters-off
        ref_model = LogprobPolicy(load_policy(model_path, dtype), cfg.optim.logprob_chunk).to(acc.device).eval()
        ref_model.requires_grad_(False)
    train_set, eval_set = load_prompt_sets(cfg.data, tokenizer)
    total_updates = cfg.train.steps * cfg.algorithm.mu * cfg.algorithm.minibatches
    optimizer, scheduler = _optimizer_and_schedule(cfg, hf_model, total_updates)
    # the scheduler is registered, not prepared: accelerate would step it once per process
    prepared, optimizer = acc.prepare(LogprobPolicy(hf_model, cfg.optim.logprob_chunk), optimizer)
    acc.register_for_checkpointing(scheduler)
    engine = make_engine(cfg, model_path, policy=hf_model, tokenizer=tokenizer, device=acc.device, dtype=dtype)
    a = cfg.algorithm
    run = Run(
        cfg=cfg, acc=acc, run_dir=run_dir, tokenizer=tokenizer, prepared=prepared, ref_model=ref_model,
        optimizer=optimizer, scheduler=scheduler, engine=engine, rewards=RewardSet.from_config(cfg.rewards),
        shapers=[(t.name.rsplit(":", 1)[-1], build_shaper(t.name, t.kwargs)) for t in cfg.shaping],
        accuracy_fn=accuracy_reward(cfg), advantage_fn=resolve_advantage(a.advantage),
        loss_fn=build_loss(a, cfg.rollout.max_new_tokens),
        train_set=train_set, eval_set=eval_set,
        sampler=PromptSampler(len(train_set.prompts), seed=cfg.train.seed, shuffle=cfg.data.shuffle),
        logger=RunLogger(run_dir, enabled=acc.is_main_process, report_to=cfg.logging.report_to,
                         project=cfg.logging.wandb_project, config=to_dict(cfg), run_name=run_dir.name))
    run.mbs = MicroBatching.from_config(cfg.optim, _hidden_size(hf_model))
    if cfg.rollout.segments > 1:
        r = cfg.rollout
        run.segments = SegmentRolloutWorker(
            engine, segment_len=math.ceil(r.max_new_tokens / r.segments), max_total_len=r.max_new_tokens,
            min_groups=r.segment_min_groups, max_wait=r.segment_max_wait,
            decode=functools.partial(tokenizer.decode, skip_special_tokens=True))
    if a.dynamic_sampling and a.oversampling == "predictive":
        run.oversampler = PredictiveOversampling(**a.oversampling_kwargs)
    if train_set.skipped_long:
        run.logger.console(f"skipped {train_set.skipped_long} training prompts over {cfg.data.max_prompt_tokens} tokens")
    if resume_path is not None:
        acc.load_state(str(resume_path / "accelerate"))
        state = ckpt.load_trainer_state(resume_path)
        run.start_step, run.before = state["step"], state.get("eval_before") or None
        run.sampler.load_state_dict(state["sampler"])
        for (_, shaper), shaper_state in zip(run.shapers, state.get("shapers", [])):
            shaper.load_state_dict(shaper_state)
        if run.oversampler is not None and state.get("oversampler"):
            run.oversampler.load_state_dict(state["oversampler"])
        if run.segments is not None and state.get("segment_pools"):
            if len(state["segment_pools"]) != acc.num_processes:
                raise ValueError(f"{resume_path}: the segment pool was saved by {len(state['segment_pools'])} "
                                 f"processes; resume with the same number (now {acc.num_processes})")
            run.segments.load_state_dict(state["segment_pools"][acc.process_index])
        _sync_weights(engine, prepared, acc)
        engine.version = state["policy_version"]
        run.logger.console(f"resumed from {resume_path} at step {run.start_step}")
    return run


def train(cfg: Config, resume: str | None = None) -> RunResult:
    """Run GRPO-family training as configured. ``resume``: None, "auto" or a checkpoint path."""
    # 0. set-up (and restore from a checkpoint), then the "before" column of the held-out table
    run = setup(cfg, resume)
    acc, engine, a = run.acc, run.engine, cfg.algorithm
    world, pad_id = acc.num_processes, run.tokenizer.pad_token_id
    eval_kw = dict(temperature=cfg.rollout.eval_temperature,
                   max_new_tokens=cfg.rollout.eval_max_new_tokens or cfg.rollout.max_new_tokens,
                   seed=cfg.train.seed)
    before = run.before or {}
    if cfg.train.eval_before and not before and run.eval_set.prompts:
        before = evaluate(engine, run.eval_set.prompts, run.accuracy_fn, **eval_kw)
        run.logger.log(run.start_step, {f"eval/{k}": v for k, v in before.items()})
    metrics: dict = {}
    bar = _progress(cfg, acc, run.start_step)
    for step in range(run.start_step, cfg.train.steps):
        t_step = time.perf_counter()
        monitor_metrics = {}
        for name, shaper in run.shapers:  # LASER-D/-DE: refresh length targets from the monitor set
            if hasattr(shaper, "update_targets") and step % shaper.monitor_every == 0:
                t0 = time.perf_counter()
                monitor_metrics.update({f"shaping/{name}/{k}": v for k, v in _monitor(run, shaper, step).items()})
                monitor_metrics["time/monitor"] = time.perf_counter() - t0
        # 1-3. prompts from the seeded sampler (this rank's slice), G completions each from the colocated
        # engine, every reward term per sample; with dynamic sampling, rounds until the groups carry signal
        local, samples, values, t_rollout, t_reward, sampling_metrics = _collect(run, step)

        # 4. group/batch shaping and advantages over the whole step (gathered from all ranks); keep this rank's slice
        shaped, shaping_metrics, offset = _shape(run, acc, values, samples, local, step)
        advantages = run.advantage_fn(shaped.rewards, shaped.group_ids, a.scale, lengths=shaped.lengths)
        advantages = advantages[offset:offset + len(samples)]
        batch = UpdateBatch.from_samples(samples, advantages, a.mask_truncated)
        if run.rewards.correctness_label:
            batch.correct = values.terms[run.rewards.correctness_label]
        if cfg.optim.balance_ranks:  # even out a*L + b*L^2 across data-parallel ranks (no-op on one process)
            batch = balance_ranks(batch, acc, whole_groups=needs_whole_groups(run.loss_fn), cost_b=run.mbs.cost_b,
                                  mask_truncated=a.mask_truncated)

        # 5. old logprobs (only when the policy moves within the step) and reference logprobs
        t0 = time.perf_counter()
        score = functools.partial(score_all, samples=batch.samples, pad_id=pad_id, acc=acc,
                                  width=batch.mask.shape[1], temperature=cfg.rollout.temperature, mbs=run.mbs)
        if run.segments is not None and cfg.rollout.segment_importance == "sais":
            batch.old_logprobs = batch.behaviour  # SAIS: each token against the version that produced it
        elif a.mu * a.minibatches > 1:  # (with segments this is POIS: the whole sequence under the current policy)
            batch.old_logprobs = score(run.prepared)
        if a.kl_coef > 0:
            batch.ref_logprobs = score(run.ref_model or run.prepared, disable_adapter=run.ref_model is None)
        t_old = time.perf_counter() - t0

        # 6. policy updates: mu passes x minibatches, exact aggregation across micro-batches and ranks
        t0 = time.perf_counter()
        sums = update_policy(run.prepared, run.optimizer, run.scheduler, acc, batch, loss_fn=run.loss_fn,
                             algorithm=a, pad_id=pad_id, temperature=cfg.rollout.temperature,
                             mbs=run.mbs, max_new_tokens=cfg.rollout.max_new_tokens,
                             max_grad_norm=cfg.optim.max_grad_norm, seed=cfg.train.seed + step)
        t_train = time.perf_counter() - t0

        # 7. weight sync: the engine generates with the updated policy from the next step on
        t_sync = _sync_weights(engine, run.prepared, acc)

        # 8. metrics, sample completions, periodic eval and checkpoint
        metrics = _step_metrics(values, samples, sums, batch.mask, run.scheduler, acc, a.mu,
                                t_rollout, t_reward, t_old, t_train, t_sync, engine.version)
        metrics.update(shaping_metrics)
        metrics.update(sampling_metrics)
        metrics.update(monitor_metrics)
        if cfg.budget.schedule != "none":
            metrics["budget/current"] = budget_at(cfg.budget, step, cfg.train.steps)
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
            t0 = time.perf_counter()
            result = evaluate(engine, run.eval_set.prompts, run.accuracy_fn, **eval_kw)
            metrics.update({f"eval/{k}": v for k, v in result.items()})
            metrics["time/eval"] = time.perf_counter() - t0
        if cfg.logging.completions_every and step % cfg.logging.completions_every == 0:
            rows = _completion_rows(samples, values, advantages, local, cfg.logging.completions_count)
            run.logger.log_completions(step + 1, rows)
        last = step + 1 == cfg.train.steps
        if (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0) or (last and cfg.checkpoint.save_final):
            t0 = time.perf_counter()
            ckpt.save_checkpoint(run.run_dir, step + 1, acc, run.prepared, run.tokenizer, {
                "step": step + 1, "policy_version": engine.version, "sampler": run.sampler.state_dict(),
                "shapers": [shaper.state_dict() for _, shaper in run.shapers],
                "oversampler": run.oversampler.state_dict() if run.oversampler is not None else None,
                "segment_pools": gather_object([run.segments.state_dict()]) if run.segments is not None else None,
                "eval_before": before, "world_size": world}, cfg.checkpoint.keep_last)
            metrics["time/checkpoint"] = time.perf_counter() - t0
        metrics["time/step"] = time.perf_counter() - t_step
        run.logger.log(step + 1, metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('accuracy', 0):.2f}",
                            len=f"{metrics['completion/mean_tokens']:.0f}")
    if bar is not None:
        bar.close()

    # 9. final held-out evaluation and the before/after table
    after = {}
    if cfg.train.eval_after and run.eval_set.prompts:
        after = evaluate(engine, run.eval_set.prompts, run.accuracy_fn, **eval_kw)
        run.logger.log(cfg.train.steps, {f"eval_after/{k}": v for k, v in after.items()})
    if (before or after) and acc.is_main_process:
        summary = {"before": before, "after": after, "steps": cfg.train.steps}
        (run.run_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run.logger.console(eval_table({"before": before, "after": after}, len(run.eval_set.prompts), cfg.data.eval))
    run.logger.finish()
    return RunResult(run.run_dir, cfg.train.steps, before, after, metrics)


def _generate_and_score(run: Run, step: int, n_prompts: int, round_idx: int):
    cfg, acc = run.cfg, run.acc
    world, rank = acc.num_processes, acc.process_index
    global_idx = run.sampler.next_batch(n_prompts * world)
    local = [run.train_set.prompts[i] for i in global_idx[rank::world]]
    budget = budget_at(cfg.budget, step, cfg.train.steps)
    if budget is not None:  # curriculum: the budget goes into the prompt text and the `budget` column
        extra = cfg.budget.template.format(budget=budget) if cfg.budget.inject else ""
        local = [make_prompt({**p.columns, "budget": budget}, run.tokenizer, cfg.data, extra) for p in local]
    t0 = time.perf_counter()
    run.engine.wake()
    spec = SamplingSpec(n=cfg.rollout.group_size, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
                        seed=cfg.train.seed * 100_003 + step * 1009 + round_idx * 101 + rank)
    segment_metrics = {}
    if run.segments is None:
        samples = run.engine.generate([p.ids for p in local], spec)
    else:  # UloRL: new groups join the pool; complete groups come out (possibly started in earlier steps)
        released, segment_metrics = run.segments.step(local, spec, step)
        local = [g.prompt for g in released]
        samples = [dataclasses.replace(m, group_id=k) for k, g in enumerate(released) for m in g.members]
    run.engine.sleep()
    t_rollout = time.perf_counter() - t0
    t0 = time.perf_counter()
    values = _score(run, local, samples, step)
    if run.segments is not None and cfg.rollout.zero_truncated:  # UloRL: no EOS by max_total_len -> reward 0
        cut = [i for i, s in enumerate(samples) if s.finish_reason == "length"]
        values.total[cut] = 0.0
        segment_metrics["segments/zeroed_truncated"] = len(cut)
    dot_metrics = dict(segment_metrics)
    if cfg.dot.enabled:  # DOT: truncate outliers of all-correct groups, re-run the rewards on them
        label = run.rewards.correctness_label
        correct = [None if math.isnan(v) else v for v in values.terms[label].tolist()]
        cuts = outlier_cuts([s.num_tokens for s in samples], correct, [s.group_id for s in samples],
                            alpha=cfg.dot.alpha, margin=cfg.dot.margin, success_threshold=cfg.dot.success_threshold)
        if cuts:
            idx = sorted(cuts)
            for i in idx:
                samples[i] = truncate_sample(samples[i], cuts[i], run.tokenizer)
            redo = _score(run, local, [samples[i] for i in idx], step)
            values.total[idx] = redo.total
            for k in values.terms:
                values.terms[k][idx] = redo.terms[k]
        dot_metrics["dot/truncated_fraction"] = len(cuts) / max(len(samples), 1)
    return local, samples, values, t_rollout, time.perf_counter() - t0, dot_metrics


def _score(run: Run, local, samples, step: int) -> RewardValues:
    columns = {k: [local[s.group_id].columns.get(k) for s in samples] for k in local[0].columns}
    return run.rewards([local[s.group_id].text for s in samples], [s.text for s in samples],
                       [s.completion_ids for s in samples], columns,
                       finish_reason=[s.finish_reason for s in samples],
                       num_tokens=[s.num_tokens for s in samples], step=step)


def _collect(run: Run, step: int):
    """Rollout + rewards for one step. With dynamic sampling, groups whose filter metric has zero variance
    are dropped and more prompts are drawn (all ranks run the same rounds: the deficit is all-reduced),
    up to max_gen_rounds; a short batch is padded by repeating informative groups."""
    cfg, acc, a = run.cfg, run.acc, run.cfg.algorithm
    quota = cfg.rollout.prompts_per_step
    if not a.dynamic_sampling:
        local, samples, values, t_rollout, t_reward, dot_metrics = _generate_and_score(run, step, quota, 0)
        return local, samples, values, t_rollout, t_reward, dot_metrics
    kept, fallback, generated, rounds, t_rollout, t_reward = [], [], 0, 0, 0.0, 0.0
    label = run.rewards.correctness_label
    max_rounds = 1 if run.oversampler is not None else a.max_gen_rounds
    while rounds < max_rounds:
        need = int(acc.reduce(torch.tensor(quota - len(kept), device=acc.device), reduction="max"))
        if need <= 0:
            break
        if run.oversampler is not None:  # the factor comes from the gathered history: equal on every rank
            need = run.oversampler.prompts_for(quota)
        local, samples, values, tr, tw, dot_metrics = _generate_and_score(run, step, need, rounds)
        t_rollout, t_reward, rounds, generated = t_rollout + tr, t_reward + tw, rounds + 1, generated + len(local)
        gids = torch.tensor([s.group_id for s in samples])
        good = set(informative_groups(values.terms[label] if a.dynamic_sampling_metric == "correct" else values.total, gids))
        for g, prompt in enumerate(local):
            idx = [i for i, s in enumerate(samples) if s.group_id == g]
            entry = (prompt, [samples[i] for i in idx], values.total[idx], {k: t[idx] for k, t in values.terms.items()})
            (kept if g in good else fallback).append(entry)
    informative = len(kept)
    chosen, padded = fill_quota(kept, quota, fallback)
    if run.oversampler is not None:
        rate = acc.reduce(torch.tensor([float(informative), float(generated)], device=acc.device), reduction="sum")
        run.oversampler.record(float(rate[0] / rate[1].clamp(min=1)))
    local = [e[0] for e in chosen]
    samples = [dataclasses.replace(s, group_id=g) for g, e in enumerate(chosen) for s in e[1]]
    values = RewardValues(total=torch.cat([e[2] for e in chosen]),
                          terms={k: torch.cat([e[3][k] for e in chosen]) for k in values.terms})
    metrics = {"sampling/rounds": rounds, "sampling/informative_fraction": informative / max(generated, 1),
               "sampling/padded_groups": padded, "sampling/prompts_generated": generated, **dot_metrics}
    if run.oversampler is not None:
        metrics["sampling/oversampling_factor"] = run.oversampler.factor()
    return local, samples, values, t_rollout, t_reward, metrics


def _rank_sizes(acc, n: int) -> list[int]:
    """Every rank's count of n, in rank order."""
    if acc.num_processes == 1:
        return [n]
    return acc.gather(torch.tensor([n], device=acc.device)).cpu().tolist()


def _gather_var(acc, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' 1-D tensors concatenated in rank order; ``sizes`` (from _rank_sizes) may differ."""
    if acc.num_processes == 1:
        return t
    padded = acc.gather(acc.pad_across_processes(t.to(acc.device), dim=0)).cpu()
    width = max(sizes)
    return torch.cat([padded[r * width:r * width + n] for r, n in enumerate(sizes)])


def _shape(run: Run, acc, values, samples, local, step: int):
    """Gather the step's rewards, correctness, lengths and groups from all ranks (counts may differ with
    segment rollouts); apply the shapers in order. Returns the shaping batch, metrics and this rank's offset."""
    sizes, group_sizes = _rank_sizes(acc, len(samples)), _rank_sizes(acc, len(local))
    offset, group_offset = sum(sizes[:acc.process_index]), sum(group_sizes[:acc.process_index])

    def gather(t):
        return _gather_var(acc, t, sizes)

    correct_label = run.rewards.correctness_label
    correct = values.terms[correct_label] if correct_label else torch.full_like(values.total, float("nan"))
    keys = [str(local[s.group_id].columns.get("source", s.group_id)) for s in samples]  # stable question ids
    looping = None
    if any(getattr(shaper, "needs_looping", False) for _, shaper in run.shapers):
        looping = gather(torch.tensor([float(ends_in_loop(s.completion_ids)) for s in samples])) > 0.5
    batch = ShapingBatch(
        rewards=gather(values.total), correct=gather(correct),
        lengths=gather(torch.tensor([float(s.num_tokens) for s in samples])),
        truncated=gather(torch.tensor([float(s.finish_reason == "length") for s in samples])) > 0.5,
        group_ids=gather(torch.tensor([group_offset + s.group_id for s in samples])), step=step,
        terms={k: gather(v) for k, v in values.terms.items()}, looping=looping,
        keys=gather_object(keys) if acc.num_processes > 1 else keys)
    metrics = {}
    for name, shaper in run.shapers:
        result = shaper(batch)
        batch.rewards = result.rewards
        metrics.update({f"shaping/{name}/{k}": v for k, v in result.metrics.items()})
    if run.shapers:
        metrics["reward/shaped_mean"] = float(batch.rewards.mean())
    return batch, metrics, offset


def _monitor(run: Run, shaper, step: int) -> dict:
    """LASER-D/-DE monitor: K rollouts per monitor prompt with the current policy, gathered from all ranks,
    turned into the shaper's length targets."""
    cfg, acc = run.cfg, run.acc
    world, rank = acc.num_processes, acc.process_index
    n = len(run.train_set.prompts)
    chosen = random.Random(cfg.train.seed + 7).sample(range(n), min(shaper.monitor_size, n))[rank::world]
    spec = SamplingSpec(n=shaper.monitor_samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens, logprobs=False,
                        seed=cfg.train.seed * 7919 + step * 31 + rank)
    local = [run.train_set.prompts[i] for i in chosen]
    samples = run.engine.generate([p.ids for p in local], spec)
    values = _score(run, local, samples, step)
    correct = values.terms[run.rewards.correctness_label]
    lengths = torch.tensor([float(s.num_tokens) for s in samples])
    groups = torch.tensor([rank + world * s.group_id for s in samples])
    gathered = [acc.gather(t.to(acc.device)).cpu() for t in (lengths, correct, groups)]
    return shaper.update_targets(*gathered)


def _progress(cfg, acc, start):
    if not (cfg.logging.progress and acc.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _step_metrics(values, samples, sums, full_mask, scheduler, acc, mu, t_rollout, t_reward, t_old, t_train,
                  t_sync, version) -> dict:
    grad_norms, n_gen_tokens = sums["grad_norms"], sum(s.num_tokens for s in samples)
    lengths = [s.num_tokens for s in samples]
    st = length_stats(lengths)
    n_tok = max(float(full_mask.sum()) * mu, 1.0)
    first_pass_tok = max(sums["tokens"], 1.0)
    m = {"reward/mean": float(values.total.mean()), "reward/std": float(values.total.std()) if len(samples) > 1 else 0.0}
    for name, t in values.terms.items():
        valid = t[~torch.isnan(t)]
        m[f"reward/{name}"] = float(valid.mean()) if valid.numel() else math.nan
    if "math_correct" in values.terms:
        m["accuracy"] = m["reward/math_correct"]
    m.update({f"completion/{k}_tokens": v for k, v in st.items()})
    m["completion/truncation_rate"] = sum(s.finish_reason == "length" for s in samples) / len(samples)
    m["completion/samples"] = float(len(samples))
    m["completion/total_tokens"] = float(n_gen_tokens)
    m["loss/clip_frac"] = sums["clip_frac"] / n_tok
    m["loss/ratio"] = sums["ratio"] / n_tok
    m["loss/kl"] = sums["kl"] / n_tok
    m["loss/entropy"] = sums["entropy"] / first_pass_tok
    if "dmmpt_masked" in sums:
        m["loss/dmmpt_masked_frac"] = sums["dmmpt_masked"] / n_tok
    m["loss/logprob_mismatch"] = sums["mismatch"] / max(sums["mismatch_tokens"], 1.0)
    m["optim/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    m["optim/lr"] = scheduler.get_last_lr()[0]
    m["throughput/rollout_tokens_per_s"] = n_gen_tokens / max(t_rollout, 1e-9)
    train_tokens = sum(len(s.prompt_ids) + s.num_tokens for s in samples) * mu
    m["throughput/train_tokens_per_s"] = train_tokens / max(t_train, 1e-9)
    m.update({"time/rollout": t_rollout, "time/reward": t_reward, "time/old_logprobs": t_old,
              "time/train": t_train, "time/weight_sync": t_sync, "policy_version": version})
    if acc.num_processes > 1:
        keys = sorted(k for k in m if not k.startswith("time/") and isinstance(m[k], float) and math.isfinite(m[k]))
        red = acc.reduce(torch.tensor([m[k] for k in keys], device=acc.device, dtype=torch.float64), reduction="mean")
        m.update(dict(zip(keys, red.cpu().tolist())))
    return m


def _hidden_size(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.config.get_text_config().hidden_size)


def _completion_rows(samples, values, advantages, local, count) -> list[dict]:
    rows = []
    for i, s in enumerate(samples[:count]):
        rows.append({"prompt": local[s.group_id].columns.get("question", "")[:300], "completion": s.text,
                     "reward": float(values.total[i]), "advantage": float(advantages[i]),
                     "tokens": s.num_tokens, "finish_reason": s.finish_reason})
    return rows


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
