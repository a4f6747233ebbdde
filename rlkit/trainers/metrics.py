"""Step metrics: one fixed set of keys from the step's batch and update statistics, averaged over ranks."""

from __future__ import annotations

import math

import torch

from rlkit.evals.metrics import length_stats
from rlkit.parallel import dist
from rlkit.records import StepBatch, UpdateStats


def _peak_rss_gib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def token_signal_metrics(batch: StepBatch, real: torch.Tensor) -> dict:
    """Token-level signals (reward terms of shape tokens / chunks; an estimator declaring tokens):
    ``reward/token_nonzero_frac`` the share of completion tokens a token reward touched, and
    ``advantage/token_spread`` the mean over samples of max - min of a sample's per-token advantages (0 when each
    sample's tokens share one advantage, as with a sequence estimator)."""
    out = {}
    rows = [i for i, k in enumerate(real.tolist()) if k]
    if batch.token_rewards is not None:
        total = sum(batch.token_rewards[i].numel() for i in rows)
        out["reward/token_nonzero_frac"] = (sum(int((batch.token_rewards[i] != 0).sum()) for i in rows) / total
                                            if total else math.nan)
    if batch.token_advantages is not None:
        spreads = [float(batch.token_advantages[i].max() - batch.token_advantages[i].min()) for i in rows
                   if batch.token_advantages[i].numel()]
        out["advantage/token_spread"] = sum(spreads) / len(spreads) if spreads else math.nan
    return out


def step_metrics(batch: StepBatch, stats: UpdateStats, *, trained_mask: torch.Tensor, mu: int, lr: float,
                 timers: dict, version: int, acc, thinking: bool = False) -> dict:
    """``batch``: this rank's collected step (before rank balancing); ``trained_mask``: the loss mask of the
    samples this rank trained on. Means over ranks skip ranks without a finite value (dist.mean_metrics);
    ``reward/<term>/errors`` (from rlkit.trainers.collect.score, reported by every rank) are summed.
    A filter's padded copies (``batch.padding``) were neither generated nor trained: they count in no statistic
    (``batch.counted``: a batch that is all padding, no group with a signal, reports the groups it generated).
    ``thinking`` (rollout.thinking.end is set): also ``completion/think_tokens`` and ``completion/answer_tokens``,
    the mean thinking and answer tokens of a completion (rlkit.rollout.thinking); ``completion/*_tokens`` count
    every token."""
    real = batch.counted
    samples = [s for s, k in zip(batch.samples, real.tolist()) if k]
    lengths = [s.num_tokens for s in samples]
    n_gen_tokens = sum(lengths)
    n_tok = max(float(trained_mask.sum()) * mu, 1.0)
    rewards = batch.rewards[real]
    terms = {name: t[real] for name, t in batch.terms.items()}
    # samples no term applies to (every term None) have no reward to report: left out, null when none has one
    scored = ~torch.stack([torch.isnan(t) for t in terms.values()]).all(0) if terms else \
        torch.ones(len(samples), dtype=torch.bool)
    kept = rewards[scored] if len(samples) else rewards
    m = {"reward/mean": float(kept.mean()) if kept.numel() else math.nan,
         "reward/std": float(kept.std()) if kept.numel() > 1 else 0.0}
    for name, t in terms.items():
        valid = t[~torch.isnan(t)]
        m[f"reward/{name}"] = float(valid.mean()) if valid.numel() else math.nan
    m.update(token_signal_metrics(batch, real))
    correct = batch.correct[real] if batch.correct is not None else None
    known = correct[~torch.isnan(correct)] if correct is not None else torch.zeros(0)
    if known.numel():
        m["accuracy"] = float(known.mean())
    none = math.nan if not samples else None  # a rank without samples has no statistics to average in
    m.update({f"completion/{k}_tokens": none or v for k, v in length_stats(lengths).items()})
    if thinking:
        for part in ("think", "answer"):
            m[f"completion/{part}_tokens"] = none or sum(s.length(part) for s in samples) / len(samples)
    m["completion/truncation_rate"] = none or sum(s.finish_reason == "length" for s in samples) / len(samples)
    m["completion/samples"] = float(len(samples))
    m["completion/total_tokens"] = float(n_gen_tokens)
    for key in ("clip_frac", "ratio", "kl"):  # every loss's dashboard keys, 0 when a loss has no such term
        m[f"loss/{key}"] = stats.sums.get(key, 0.0) / n_tok
    for key, v in stats.sums.items():  # every statistic a loss reports: token sums as means, counts as they are
        m[f"loss/{key}"] = v if key.endswith("_count") else v / n_tok
    m["loss/entropy"] = stats.entropy / max(stats.tokens, 1.0)
    m["loss/logprob_mismatch"] = stats.mismatch / max(stats.mismatch_tokens, 1.0)
    for name, removed in stats.masked.items():
        m[f"mask/{name}/masked_frac"] = removed / n_tok
    m["parallel/sharded_frac"] = stats.sharded / max(stats.micro_batches, 1)  # sequence parallelism at work
    if stats.predicted_s > 0:  # adaptive/flex SP: the plans' predicted forward+backward time against the update's
        m["parallel/predicted_s"] = stats.predicted_s
        m["parallel/measured_s"] = timers.get("train", math.nan)
        m["parallel/bound_s"] = stats.bound_s
        m["parallel/gap"] = stats.predicted_s / max(stats.bound_s, 1e-12) - 1.0  # to the lower bound
    m["optim/grad_norm"] = sum(stats.grad_norms) / len(stats.grad_norms) if stats.grad_norms else math.nan
    if stats.skipped:
        m["optim/skipped_updates"] = float(stats.skipped)
    # forwards with samples per optimizer step (this rank): the micro-batches one step accumulates
    m["optim/micro_batches"] = stats.micro_batches / max(len(stats.grad_norms) + stats.skipped, 1)
    m["optim/lr"] = lr
    m["throughput/rollout_tokens_per_s"] = none or n_gen_tokens / max(timers.get("rollout", 0.0), 1e-9)
    train_tokens = sum(len(s.prompt_ids) + s.num_tokens for s in samples) * mu
    m["throughput/train_tokens_per_s"] = train_tokens / max(timers.get("train", 0.0), 1e-9)
    m.update({f"time/{k}": v for k, v in timers.items()})
    m["policy_version"] = version
    m["memory/peak_rss_gib"] = _peak_rss_gib()  # this process's high-water mark (averaged over ranks below)
    if torch.cuda.is_available():
        m["memory/peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    m.update(batch.metrics)
    out = dist.mean_metrics(acc, m)
    for key, v in out.items():  # failed reward samples (on_error none): the step's count, summed over ranks
        if key.startswith("reward/") and key.endswith("/errors") and isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = round(v * acc.num_processes)
    return out
