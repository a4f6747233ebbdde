"""The training run's held-out check (one completion per prompt) and its before/after table."""

from __future__ import annotations

import math

from rlkit.logging import format_table


def held_out_check(engine, prompts, accuracy_fn, *, temperature: float, max_new_tokens: int, seed: int = 0,
                   forcing=None, thinking=None, count: str = "all") -> dict:
    """The training run's held-out check: one completion per prompt (rlkit.evals.suite.run_benchmark with k = 1),
    scored with `accuracy_fn` (a reward callable). ``forcing`` (rlkit.evals.budgets.BudgetForcing, its largest
    budget the cap): also ``accuracy@B`` (with its interval), ``mean_tokens@B``, ``forced@B`` per budget and
    ``budget_auc``, from the same generations. ``thinking`` / ``count``: the thinking split and what the budgets
    count (rollout.thinking; run_benchmark)."""
    if not prompts:
        return {}
    from rlkit.evals.suite import EvalSettings, run_benchmark

    m = run_benchmark(engine, prompts, accuracy_fn, EvalSettings(k=1, temperature=temperature, top_p=1.0, seed=seed),
                      max_new_tokens, label="held-out", progress=False, forcing=forcing, thinking=thinking,
                      count=count)
    out = {"accuracy": m["avg@k"], "accuracy_ci_low": m["avg@k_ci_low"], "accuracy_ci_high": m["avg@k_ci_high"],
           "mean_tokens": m["mean_tokens"], "median_tokens": m["median_tokens"], "p90_tokens": m["p90_tokens"],
           "truncation_rate": m["truncation_rate"], "n": m["prompts"]}
    for b, bm in (m.get("budgets") or {}).items():
        out.update({f"accuracy@{b}": bm["avg@k"], f"accuracy@{b}_ci_low": bm["avg@k_ci_low"],
                    f"accuracy@{b}_ci_high": bm["avg@k_ci_high"], f"mean_tokens@{b}": bm["mean_tokens"],
                    f"forced@{b}": bm["forced_rate"]})
    if "budget_auc" in m:
        out["budget_auc"] = m["budget_auc"]
    return out


def held_out_budgets(d: dict) -> list[int]:
    """The budgets a held-out result was scored at (its ``accuracy@B`` keys), ascending."""
    return sorted(int(k[9:]) for k in d if k.startswith("accuracy@") and k[9:].isdigit())


def eval_rows(columns: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the held-out table, one column per named result (e.g. before / after), with the AES of
    each later column against the first (O1-Pruner's accuracy-efficiency score)."""
    def fmt(d, k, pct):
        if k not in d:
            return "-"
        if k.startswith("accuracy") and isinstance(d.get(f"{k}_ci_low"), float):  # with its 95% interval
            return f"{100 * d[k]:.1f}% [{100 * d[f'{k}_ci_low']:.1f}, {100 * d[f'{k}_ci_high']:.1f}]"
        return f"{100 * d[k]:.1f}%" if pct else f"{d[k]:.1f}"

    budgets = sorted({b for d in columns.values() for b in held_out_budgets(d or {})})
    extra = [(f"accuracy at {b} tokens (forced)", f"accuracy@{b}", True) for b in budgets[:-1]]
    extra += [("budget AUC", "budget_auc", True)] if budgets else []
    rows = [[label] + [fmt(d, k, pct) for d in columns.values()] for label, k, pct in (
        ("accuracy", "accuracy", True), *extra, ("mean completion tokens", "mean_tokens", False),
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
    return (f"\nHeld-out evaluation on {n} prompts of {source} (accuracy with its 95% bootstrap interval; one "
            f"problem is {100 / max(n, 1):.2f} points):\n" + format_table(headers, rows))


def signal_fraction(advantages, group_ids) -> float:
    """The share of the batch's groups whose advantages are not all zero: the groups that carry a learning signal
    (a group whose rewards are all equal contributes only a KL term)."""
    from rlkit.records import group_index

    groups = group_index(group_ids)
    if not groups:
        return 0.0
    return sum(bool((advantages[idx].abs() > 1e-8).any()) for idx in groups) / len(groups)
