"""Held-out evaluation: accuracy and length statistics of one completion per prompt."""

from __future__ import annotations

import statistics

import torch

from rlkit import registry
from rlkit.logging import format_table
from rlkit.rollout.base import SamplingSpec


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    t = torch.tensor(lengths, dtype=torch.float64)
    return {"mean": float(t.mean()), "p50": float(statistics.median(lengths)),
            "p90": float(torch.quantile(t, 0.9)), "max": float(t.max())}


def evaluate(engine, prompts, accuracy_fn, *, temperature: float, max_new_tokens: int, seed: int = 0) -> dict:
    """Generate one completion per held-out prompt and score it with `accuracy_fn` (a reward callable)."""
    if not prompts:
        return {}
    spec = SamplingSpec(n=1, temperature=temperature, max_new_tokens=max_new_tokens, logprobs=False, seed=seed)
    samples = engine.generate([p.ids for p in prompts], spec)
    completions = [s.text for s in samples]
    columns = {k: [p.columns.get(k) for p in prompts] for k in prompts[0].columns}
    scores = accuracy_fn(prompts=[p.text for p in prompts], completions=completions,
                         completion_ids=[s.completion_ids for s in samples], **columns,
                         finish_reason=[s.finish_reason for s in samples],
                         num_tokens=[s.num_tokens for s in samples], step=0)
    valid = [s for s in scores if s is not None]
    lengths = [s.num_tokens for s in samples]
    st = length_stats(lengths)
    return {"accuracy": sum(valid) / max(len(valid), 1), "mean_tokens": st["mean"], "median_tokens": st["p50"],
            "truncation_rate": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "n": len(samples)}


def accuracy_reward(cfg):
    """The held-out metric: the configured correctness term (a registered verifier, or a term marked
    ``correctness: true``) with its options, ``timeout``, ``on_error`` and ``format``, else the default
    verifier ``math_correct`` with the default term settings."""
    from rlkit.config import RewardTerm
    from rlkit.rewards.combine import GuardedReward, Term

    for term in cfg.rewards:
        entry = registry.resolve("reward", term.name, factory=term.factory)
        if term.correctness or entry.flag("correctness", False):
            break
    else:
        term = RewardTerm("math_correct")
        entry = registry.resolve("reward", term.name)
        term.kwargs = registry.check_options(entry, term.kwargs, "rewards", "the default verifier")
    fn = registry.build(entry, term.kwargs)
    return GuardedReward(Term(registry.short_name(term.name), 1.0, fn, term.format, True, float(term.timeout),
                              term.on_error), phase="the held-out evaluation")


def eval_table(columns: dict[str, dict], n: int, source: str) -> str:
    """The held-out table, one column per named result (e.g. before / after)."""
    def fmt(d, k, pct):
        if k not in d:
            return "-"
        return f"{100 * d[k]:.1f}%" if pct else f"{d[k]:.1f}"

    rows = [[label] + [fmt(d, k, pct) for d in columns.values()] for label, k, pct in (
        ("accuracy", "accuracy", True), ("mean completion tokens", "mean_tokens", False),
        ("median completion tokens", "median_tokens", False), ("truncation rate", "truncation_rate", True))]
    return f"\nHeld-out evaluation on {n} prompts of {source}:\n" + format_table(["metric", *columns], rows)


def evaluate_model(cfg, rows: tuple[list[dict], list[dict]] | None = None) -> dict:
    """`rlkit eval`: score ``model.name_or_path`` on the held-out slice and print the table (``rows``: the
    data preflight already read and checked, else read now)."""
    from rlkit.data import load_prompt_sets
    from rlkit.models import load_policy, load_tokenizer, pick_dtype, resolve_model_path
    from rlkit.rollout.factory import make_engine

    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(path)
    _, eval_set = load_prompt_sets(cfg.data, tokenizer, rows=rows)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(path, pick_dtype(cfg.model.dtype, device)).to(device) if cfg.rollout.engine == "hf" else None
    engine = make_engine(cfg, path, policy=policy, tokenizer=tokenizer, device=device,
                         dtype=pick_dtype(cfg.model.dtype, device))
    if getattr(engine, "remote", False):  # a server holds whatever it was started with: give it this model
        from rlkit.rollout.weights import exported_weights

        with exported_weights(load_policy(path, torch.float32)) as named:
            engine.update_weights(named)
    result = evaluate(engine, eval_set.prompts, accuracy_reward(cfg), temperature=cfg.rollout.eval_temperature,
                      max_new_tokens=cfg.rollout.eval_max_new_tokens or cfg.rollout.max_new_tokens, seed=cfg.train.seed)
    print(eval_table({cfg.model.name_or_path: result}, len(eval_set.prompts), cfg.data.eval))
    return result
