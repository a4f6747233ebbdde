"""The GRPO-family training loop: one readable step that names no method (architecture rules 1 and 6).

How this loop departs from textbook GRPO (Shao et al. 2024), all by configuration:
- every method-specific piece is a stage resolved once at start-up (rlkit.trainers.stages): prompt
  transforms, sample transforms, a group filter that owns the generation rounds, group/batch shapers (some
  refreshed from a monitor set), the advantage estimator, token masks and the loss;
- the batch sizes are global: each of the W processes generates prompts_per_step / W prompts, and shaping and
  advantages see the whole step gathered from every rank;
- samples are redistributed across ranks by cost (a*L + b*L^2) before the update; the loss weights are
  global, so the update equals one process training on the whole batch;
- the old policy's logprobs are recomputed only when the policy moves within the step (mu x minibatches > 1),
  or taken from the engine when the rollout says so; the ratio is otherwise against the current policy.
The policy update (``update_policy``, below the step) is written out here too: passes x minibatches x micro-batches,
the forward, the token weights, the loss call, backward and the optimizer step; rlkit.trainers.update holds the
pieces it calls (plans, the minibatch normaliser, a micro-batch's rows and token weights, statistics, checks).
Runs on one process or many (``accelerate launch``: DDP, DeepSpeed ZeRO, FSDP2 through accelerate config
files); each process owns a colocated rollout engine (vllm, hf) or a client of a remote one (vllm_server: shared servers).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rlkit import failpoints, progress
from rlkit.algorithms.losses import LossInputs
from rlkit.config import Config
from rlkit.evals.verifier import accuracy_reward
from rlkit.files import atomic_write_text
from rlkit.parallel import dist
from rlkit.parallel.micro import layout_of, micro_inputs, sum_over_sp_group
from rlkit.records import StepBatch, UpdateStats
from rlkit.trainers import backends
from rlkit.trainers.checked import Preflight
from rlkit.trainers.collect import advantages, collect, refresh_monitors, timed
from rlkit.trainers.evaluate import eval_rows, eval_table, held_out_check, signal_fraction
from rlkit.trainers.metrics import step_metrics
from rlkit.trainers.run import Run, save, setup, sync_weights
from rlkit.trainers.update import (
    Minibatch,
    UpdateSettings,
    balance_ranks,
    cut_micro_batch,
    diverged,
    empty_update_stats,
    minibatch_loss_inputs,
    minibatch_normaliser,
    not_finite,
    plan_minibatches,
    policy_logprobs,
    prepare_tokens,
    record_micro_batch,
    token_weights,
)

log = logging.getLogger("rlkit")


@dataclass
class RunResult:
    run_dir: Path
    steps_done: int
    before: dict
    after: dict
    last_metrics: dict


def train(cfg: Config, checked: Preflight) -> RunResult:
    """Run GRPO-family training as configured, on the inputs ``checked`` (rlkit.preflight.preflight: the run
    directory and its lock, resume, data; ``rlkit.train`` runs both). The lock is released at the end."""
    # 0. set-up (then restore from a checkpoint), then the "before" column of the held-out table
    progress.at("set-up", run_dir=cfg.output_dir)
    run, failed = None, True
    try:
        run = setup(cfg, checked)
        result = _train(run)
        progress.at("teardown")
        failed = False
        return result
    finally:
        try:
            if run is not None:
                _close(run, failed)
        finally:
            checked.release()  # the lock; a directory the run never wrote into is removed again


def _close(run: Run, failed: bool) -> None:
    try:  # the dashboard's run ends (marked failed when the run failed); never in the way of the rest
        run.logger.finish(exit_code=1 if failed else 0)
    except Exception as e:  # noqa: BLE001 - the run's outcome is decided; its resources must still close
        log.warning("wandb: finishing the run failed (%s: %s)", type(e).__name__, e)
    run.rollout.close()  # asynchronous rollouts: drop the jobs queued ahead
    run.rewards.close()  # the reward terms' own resources (a scoring model, a pool)
    for engine in run.reward_engines.values():  # the models they asked for (reward_engines)
        engine.close()
    multi = run.acc.num_processes > 1
    # remote engines: no request left running behind a failed run; a colocated vLLM engine on a launcher's
    # world: its teardown (which destroys the process groups) before interpreter exit, not after ours
    if multi or run.engine_caps.remote:
        run.engine.close()
    if multi:
        dist.end_world()  # the process groups down; the CLI then leaves without finalization (leave_world)


def _train(run: Run) -> RunResult:
    cfg = run.cfg
    acc, stages, algo = run.acc, run.stages, cfg.algorithm
    cap = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    held_out = functools.partial(held_out_check, run.engine, run.eval_set.prompts, accuracy_reward(cfg, run.rewards),
                                 temperature=cfg.eval.temperature, seed=cfg.train.seed, max_new_tokens=cap,
                                 forcing=_held_out_forcing(run, cap), thinking=run.thinking,
                                 count=cfg.rollout.thinking.count)
    if cfg.eval.before and not run.before and run.eval_set.prompts:
        progress.at("the held-out evaluation before training")
        run.before = held_out()
        run.logger.log(run.start_step, {f"eval/{k}": v for k, v in run.before.items()})
    update_settings = UpdateSettings(loss=stages.loss, algorithm=algo, batching=run.mbs,
                                     pad_id=run.tokenizer.pad_token_id,
                                     temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                     max_grad_norm=cfg.optim.max_grad_norm, forward_masks=stages.forward_masks,
                                     skip_nonfinite=cfg.optim.skip_nonfinite)
    metrics: dict = {}
    bar = _progress(run)
    for step in range(run.start_step, cfg.train.steps):
        t_step, run.timers = time.perf_counter(), {}
        progress.at("rollout", step + 1)
        # 1. shapers with a monitor set refresh their targets from fresh rollouts of the current policy
        monitor_metrics = refresh_monitors(run, step)

        # 2. this rank's prompts, G completions each, every reward term, the sample transforms; the filter
        #    (if any) decides how many rounds; the shapers run over the whole step gathered from all ranks
        batch = collect(run, step)
        failpoints.hit("rollout")

        # 3. advantages over the whole step; keep this rank's slice
        batch.advantages = advantages(run, batch)

        # 4. even out a*L + b*L^2 across data-parallel ranks (no-op on one process), then the per-token
        #    tensors: loss mask (with the token masks applied before the normaliser) and behaviour logprobs
        #    (under sequence parallelism: across the SP groups, every rank of a group getting its group's share)
        trained = batch
        if cfg.optim.balance_ranks or run.mbs.layout.sp > 1:
            trained = balance_ranks(batch, acc, whole_groups=stages.loss.whole_groups, cost_b=run.mbs.cost_b,
                                    layout=run.mbs.layout)
        prepare_tokens(trained, stages.batch_masks)

        # 5. old logprobs (from the engine, or recomputed when the policy moves within the step) and the
        #    reference logprobs for a KL term
        progress.at("scoring")
        with timed(run.timers, "old_logprobs"):
            score = functools.partial(policy_logprobs, samples=trained.samples, pad_id=run.tokenizer.pad_token_id,
                                      acc=acc, width=trained.mask.shape[1], temperature=cfg.rollout.temperature,
                                      batching=run.mbs)
            if run.rollout.old_from_engine:
                trained.old_logprobs = trained.behaviour
            elif algo.mu * algo.minibatches > 1:
                trained.old_logprobs = score(run.prepared)
            # else one optimizer step per batch: old_logprobs stays None and the update takes the current policy
            # as the old one (its forward's logprobs, detached), which it is
            if stages.loss.reference > 0:  # the loss's KL penalty to the reference policy (ppo_clip's kl_coef)
                trained.ref_logprobs = score(run.ref_model or run.prepared, disable_adapter=run.ref_model is None)

        # 6. policy updates (update_policy, below): mu passes x minibatches, exact aggregation across
        #    micro-batches and ranks
        progress.at("policy update")
        with timed(run.timers, "train"):
            stats = update_policy(run.prepared, run.optimizer, run.scheduler, acc, trained, update_settings,
                                  seed=cfg.train.seed + step, step=step + 1)
        failpoints.hit("update")

        # 7. weight sync: the engine generates with the updated policy from the next step on
        progress.at("weight sync")
        run.timers["weight_sync"] = sync_weights(run)

        # 8. metrics, sample completions, periodic eval and checkpoint
        metrics = step_metrics(batch, stats, trained_mask=trained.mask, mu=algo.mu, lr=run.scheduler.get_last_lr()[0],
                               timers=run.timers, version=run.engine.version, acc=acc,
                               thinking=bool(cfg.rollout.thinking.end))
        metrics.update(monitor_metrics)
        metrics.update({f"reward_engine/{name}/prompts": float(e.calls) for name, e in run.reward_engines.items()})
        real = batch.counted  # a filter's padded copies are not groups of their own (zero weight, DOT)
        metrics.update(dist.mean_metrics(acc, {"signal/group_fraction": signal_fraction(batch.advantages[real],
                                                                                         batch.group_ids[real])}))
        last = step + 1 == cfg.train.steps
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and not last:
            progress.at("the periodic held-out evaluation")
            failpoints.hit("eval")
            with timed(metrics, "time/eval"):
                metrics.update({f"eval/{k}": v for k, v in held_out().items()})
        if last and cfg.eval.after and run.eval_set.prompts:  # in the last step's row and checkpoint
            progress.at("the held-out evaluation after training")
            failpoints.hit("eval")
            with timed(metrics, "time/eval"):
                run.after = held_out()
            metrics.update({f"eval_after/{k}": v for k, v in run.after.items()})
        progress.at("logging")
        if cfg.logging.completions_every and step % cfg.logging.completions_every == 0:
            run.logger.log_completions(step + 1, _completion_rows(batch, cfg.logging.completions_count))
        if (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0) or (last and cfg.checkpoint.save_final):
            progress.at("checkpoint")
            with timed(metrics, "time/checkpoint"):
                save(run, step + 1, dict(metrics))
        metrics["time/step"] = time.perf_counter() - t_step
        lengths = [n for rank in dist.gather_objects(acc, [s.num_tokens for s, k in zip(batch.samples, real) if k])
                   for n in rank]
        progress.at("logging")
        run.logger.log_lengths(step + 1, lengths)
        run.logger.log(step + 1, metrics)
        failpoints.hit("log")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('accuracy', 0):.2f}",
                            len=f"{metrics['completion/mean_tokens']:.0f}")
    if bar is not None:
        bar.close()

    # 9. the before/after table (the final evaluation ran in the last step, or is restored from its checkpoint)
    after = run.after
    if not after and cfg.eval.after and run.eval_set.prompts:
        progress.at("the held-out evaluation after training")
        failpoints.hit("eval")
        after = run.after = held_out()
    if (run.before or after) and acc.is_main_process:
        with_signal = _steps_with_signal(run.run_dir)
        summary = {"before": run.before, "after": after, "steps": cfg.train.steps, "steps_with_signal": with_signal}
        atomic_write_text(run.run_dir / "eval_summary.json", json.dumps(summary, indent=2) + "\n")
        run.logger.console(f"steps with a learning signal (some group's rewards differ): {with_signal} of "
                           f"{cfg.train.steps}")
        run.logger.console(eval_table({"before": run.before, "after": after}, len(run.eval_set.prompts),
                                      cfg.eval.data))
        run.logger.log_table("eval/table", *eval_rows({"before": run.before, "after": after}), step=cfg.train.steps)
    if acc.num_processes > 1:
        acc.wait_for_everyone()  # every process is done before any tears its groups down (train's finally)
    return RunResult(run.run_dir, cfg.train.steps, run.before, after, metrics)


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
    Every rank runs the same forwards and collectives in the same order: an idle rank runs zero-weight ones.
    """
    algo, layout = settings.algorithm, layout_of(settings.batching, acc)
    stats = empty_update_stats(settings)
    minibatches = plan_minibatches(batch, settings, acc, stats, seed)  # the micro-batch plans serve every pass
    prepared.train()
    for epoch in range(algo.mu):
        for minibatch_index, planned in enumerate(minibatches):
            # the aggregation weights from the normaliser summed over ranks, then the loss's minibatch-wide inputs
            # (before the first backward: the policy is the minibatch's start)
            aggregation, group_scale = minibatch_normaliser(acc, batch, planned.rows, settings)
            minibatch = Minibatch(planned.rows, aggregation, group_scale,
                                  minibatch_loss_inputs(prepared, acc, batch, planned, settings))
            nonfinite = None  # the first loss of the minibatch that was not finite on some rank
            for micro_index, micro in enumerate(planned.micro_batches):
                # one optimizer step per minibatch: its last micro-batch is the accumulation boundary
                last = micro_index == len(planned.micro_batches) - 1
                index, inputs = micro_inputs(batch.samples, micro, settings.pad_id, settings.batching, acc)
                sync = contextlib.nullcontext() if last else acc.no_sync(prepared)
                with sync, acc.autocast():
                    logprobs, entropy = prepared(inputs, temperature=settings.temperature, with_entropy=True)
                    rows = cut_micro_batch(batch, micro, index, inputs, minibatch, layout, acc)
                    # nothing scored (one optimizer step per batch: mu x minibatches = 1): the old policy is the
                    # current one, so the ratio is 1 in value and its gradient the policy gradient
                    old = rows.old_logprobs if rows.old_logprobs is not None else logprobs.detach()
                    weights = token_weights(batch, rows, old, entropy, settings, stats)  # TIS, forward masks
                    out = settings.loss.fn(LossInputs(
                        logprobs=logprobs, old_logprobs=old, advantages=rows.advantages,
                        token_advantages=rows.token_advantages, mask=rows.mask,
                        token_weights=weights, ref_logprobs=rows.ref_logprobs, group_ids=rows.group_ids,
                        correct=rows.correct, group_scale=minibatch.group_scale, entropy=entropy,
                        behaviour_logprobs=rows.behaviour, extra=rows.extra, max_new_tokens=settings.max_new_tokens))
                    bad = not_finite(acc, out.loss)
                    # a non-finite loss goes backward too, so every engine reaches the boundary; the optimizer
                    # step is then skipped or the run stops
                    backends.backward(acc, prepared, out.loss, last=last)
                record_micro_batch(stats, rows, logprobs, entropy, out.stats, first_pass=epoch == 0,
                                   first_minibatch=minibatch_index == 0)
                if nonfinite is None and bad is not None:
                    nonfinite = bad
                    if not settings.skip_nonfinite:
                        raise diverged(step, f"the loss is {bad}", minibatch_index, micro_index)
            norm, applied = backends.optimizer_step(acc, prepared, optimizer, settings.max_grad_norm,
                                                    skip=nonfinite is not None)
            if not applied:
                if not settings.skip_nonfinite:
                    raise diverged(step, f"the gradient norm is {norm}", minibatch_index, None)
                stats.skipped += 1
            else:
                stats.grad_norms.append(norm)
            if scheduler is not None:
                scheduler.step()
    return sum_over_sp_group(stats, layout)


def _held_out_forcing(run: Run, cap: int):
    """The held-out check's budget forcing (eval.budgets, the cap as the largest budget; the phrase and answer
    allowance of rollout.budget_forcing), or None."""
    if not run.cfg.eval.budgets:
        return None
    from rlkit.rollout.forcing import BudgetForcing

    f = run.cfg.rollout.budget_forcing
    return BudgetForcing.for_tokenizer((*run.cfg.eval.budgets, cap), f.phrase, f.answer_tokens, run.tokenizer)


def _steps_with_signal(run_dir) -> int:
    """Steps of the run (metrics.jsonl, resumed parts included) in which some group carried a learning signal."""
    count = 0
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        count += isinstance(row, dict) and (row.get("signal/group_fraction") or 0) > 0
    return count


def _progress(run: Run):
    if not (run.cfg.logging.progress and run.acc.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.cfg.train.steps, initial=run.start_step, desc="train", unit="step", dynamic_ncols=True)


def _completion_rows(batch: StepBatch, count: int) -> list[dict]:
    real = batch.counted.tolist()  # a filter's padded copies are not samples of their own
    rows = [{"prompt": batch.prompts[s.group_id].columns.get("question", "")[:300], "completion": s.text,
             "reward": float(batch.rewards[i]), "advantage": float(batch.advantages[i]), "tokens": s.num_tokens,
             "finish_reason": s.finish_reason} for i, s in enumerate(batch.samples) if real[i]]
    return rows[:count]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
