"""The training run's held-out check (one completion per prompt) and its before/after table."""

from __future__ import annotations

import math

from rlkit import registry
from rlkit.logging import format_table


def evaluate(engine, prompts, accuracy_fn, *, temperature: float, max_new_tokens: int, seed: int = 0) -> dict:
    """The training run's held-out check: one completion per prompt (rlkit.evals.suite.run_benchmark with k = 1),
    scored with `accuracy_fn` (a reward callable)."""
    if not prompts:
        return {}
    from rlkit.evals.suite import EvalSettings, run_benchmark

    m = run_benchmark(engine, prompts, accuracy_fn, EvalSettings(k=1, temperature=temperature, top_p=1.0, seed=seed),
                      max_new_tokens, label="held-out", progress=False)
    return {"accuracy": m["avg@k"], "mean_tokens": m["mean_tokens"], "median_tokens": m["median_tokens"],
            "p90_tokens": m["p90_tokens"], "truncation_rate": m["truncation_rate"], "n": m["prompts"]}


def accuracy_reward(cfg, rewards=None):
    """The held-out metric: the configured correctness term (a registered verifier, or a term marked
    ``correctness: true``) with its options, ``timeout``, ``on_error`` and ``format``, else the default
    verifier ``math_correct`` with the default term settings. ``rewards``: the run's RewardSet, whose verifier is
    used as it is (one instance per process)."""
    import dataclasses

    from rlkit.config import RewardTerm
    from rlkit.rewards.combine import GuardedReward, make_term

    found = rewards.verifier() if rewards is not None else None
    if found is None:
        for term in cfg.rewards:
            entry = registry.resolve("reward", term.name, factory=term.factory)
            if term.correctness or entry.caps.verifier:
                break
        else:
            term = RewardTerm("math_correct")
            entry = registry.resolve("reward", term.name)
            term.kwargs = registry.check_options(entry, term.kwargs, "rewards", "the default verifier")
        found = make_term(term, registry.short_name(term.name))
    return GuardedReward(dataclasses.replace(found, weight=1.0, correctness=True), phase="the held-out evaluation")


def eval_rows(columns: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the held-out table, one column per named result (e.g. before / after), with the AES of
    each later column against the first (O1-Pruner's accuracy-efficiency score)."""
    def fmt(d, k, pct):
        if k not in d:
            return "-"
        return f"{100 * d[k]:.1f}%" if pct else f"{d[k]:.1f}"

    rows = [[label] + [fmt(d, k, pct) for d in columns.values()] for label, k, pct in (
        ("accuracy", "accuracy", True), ("mean completion tokens", "mean_tokens", False),
        ("median completion tokens", "median_tokens", False), ("truncation rate", "truncation_rate", True))]
    first, *rest = list(columns.values()) or [{}]
    if rest and first and all(rest):
        from rlkit.evals.metrics import aes

        scores = [aes(d["accuracy"], d["mean_tokens"], first["accuracy"], first["mean_tokens"]) for d in rest]
        rows.append(["AES vs " + next(iter(columns))] + ["-"] + [
            "-" if math.isnan(a) else f"{a:+.3f}" for a in scores])
    return ["metric", *columns], rows


def eval_table(columns: dict[str, dict], n: int, source: str) -> str:
    """The held-out table for the console."""
    headers, rows = eval_rows(columns)
    return f"\nHeld-out evaluation on {n} prompts of {source}:\n" + format_table(headers, rows)
