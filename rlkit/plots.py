"""`rlkit report RUN_DIR [RUN_DIR ...]`: PNG plots of one or several runs (matplotlib, Agg: no display needed).

- ``curves.png``: reward, accuracy, mean completion tokens and truncation rate over steps, one line per run
  (from ``metrics.jsonl``);
- ``lengths.png``: completion-length histograms early vs late in each run (the first and the last fifth of its
  steps, from ``lengths.jsonl``);
- ``pareto.png``: accuracy against mean completion tokens across runs and checkpoints: the held-out results
  before and after training (``eval_summary.json``) and every ``rlkit eval`` result of the run's checkpoints
  (``evals/*.json``, one point per benchmark; avg@k against mean tokens, with its 95% interval as an error bar and a
  line through a run's checkpoints in step order). ``--evals-only`` leaves out the in-training held-out points, so
  the plot shows only ``rlkit eval`` results, measured one way (the papers' view).
- ``budgets.png``: accuracy against the token budget (``rlkit eval --budgets``), one line per run, checkpoint and
  benchmark, with its 95% interval and the area under the curve in the legend;
- ``length_by_correctness.png``: completion lengths of correct and wrong answers (every ``rlkit eval`` result).

The plots go to ``--out``, by default ``RUN_DIR/report/`` for one run and ``report/`` in the runs' common parent
for several.

Nothing is left out silently: each malformed line of a run's files (``file:line``, not valid JSON, not an object,
no step) and each plot, panel or run that has nothing to show gets one warning line on stderr saying what and why;
a plot with nothing at all to show is not written. The two views of evaluations made a particular way
(``budgets.png``, ``length_by_correctness.png``) are written when some run has such results and left out without a
warning otherwise. When no plot can be made the report is a UserError (exit status 2) and writes nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from rlkit.errors import UserError
from rlkit.files import unwritable_reason

CURVES = [("reward/mean", "reward"), ("accuracy", "accuracy (training samples)"),
          ("completion/mean_tokens", "mean completion tokens"), ("completion/truncation_rate", "truncation rate")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: Path) -> str:
    return run.resolve().name


MAX_LINE_NOTES = 3  # malformed lines named one by one per file; the rest are counted in one line
RUN_FILES = ("metrics.jsonl", "lengths.jsonl", "eval_summary.json", "evals")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _why(e: json.JSONDecodeError) -> str:
    return e.msg.removesuffix(" starting at")  # "Unterminated string starting at" is followed by the position


def _read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """The object rows of a .jsonl file that carry an integer ``step``; each other non-blank line is one note
    (``file:line: why``; after MAX_LINE_NOTES of them, one line with the count of the rest)."""
    rows, bad = [], []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            bad.append(f"{path}:{lineno}: not valid JSON ({_why(e)} at column {e.colno}); line skipped")
            continue
        except ValueError:  # not UTF-8
            bad.append(f"{path}:{lineno}: not valid UTF-8; line skipped")
            continue
        if not isinstance(row, dict):
            bad.append(f"{path}:{lineno}: not a JSON object ({type(row).__name__}); line skipped")
        elif not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
            bad.append(f"{path}:{lineno}: no integer 'step' (got {row.get('step')!r}); line skipped")
        else:
            rows.append(row)
    notes += bad[:MAX_LINE_NOTES]
    if len(bad) > MAX_LINE_NOTES:
        notes.append(f"{path}: {len(bad) - MAX_LINE_NOTES} more malformed line(s) skipped")
    return rows


def _read_json(path: Path, notes: list[str]) -> dict | None:
    try:
        value = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        notes.append(f"{path}: not valid JSON ({_why(e)} at line {e.lineno}, column {e.colno}); its points are "
                     "left out")
        return None
    except (OSError, ValueError) as e:
        notes.append(f"{path}: cannot read it ({e}); its points are left out")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path}: not a JSON object; its points are left out")
        return None
    return value


def _point(notes: list[str], where: str, label: str, m, ci_keys: tuple[str, str] | None = None):
    """(label, accuracy, mean tokens, interval or None) from a metrics object, or None with a note."""
    acc_key = "accuracy" if ci_keys is None else "avg@k"
    if not isinstance(m, dict) or not _number(m.get(acc_key)) or not _number(m.get("mean_tokens")):
        got = {k: m.get(k) for k in (acc_key, "mean_tokens")} if isinstance(m, dict) else m
        notes.append(f"{where}: no numeric {acc_key} and mean_tokens for {label!r} (got {got!r}); point left out")
        return None
    ci = None
    if ci_keys is not None and _number(m.get(ci_keys[0])) and _number(m.get(ci_keys[1])):
        ci = (m[ci_keys[0]], m[ci_keys[1]])
    return (label, m[acc_key], m["mean_tokens"], ci)


def load_run(run: Path, evals_only: bool = False) -> dict:
    """What the plots need from one run directory; a point is (label, accuracy, mean tokens, interval or None).
    ``notes``: one line per thing of the run that cannot be plotted (malformed lines and files, missing files)."""
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    if not any((run / name).exists() for name in RUN_FILES):
        raise UserError(f"{run}: not an rlkit run directory (no metrics.jsonl)")
    notes: list[str] = []
    metrics, lengths_path = run / "metrics.jsonl", run / "lengths.jsonl"
    rows = [r for r in _read_jsonl(metrics, notes) if any(key in r for key, _ in CURVES)] \
        if metrics.is_file() else []
    unusable = [(r["step"], key, r[key]) for r in rows for key, _ in CURVES
                if key in r and r[key] is not None and not _number(r[key])]  # null is "no value" (rlkit writes it)
    for step, key, value in unusable[:MAX_LINE_NOTES]:
        notes.append(f"{metrics}: step {step}: {key!r} is {value!r}, not a finite number; point left out")
    if len(unusable) > MAX_LINE_NOTES:
        notes.append(f"{metrics}: {len(unusable) - MAX_LINE_NOTES} more values that are not finite numbers (strings, "
                     "NaN, Infinity); points left out")
    lengths = []
    if lengths_path.is_file():
        for r in _read_jsonl(lengths_path, notes):
            if isinstance(r.get("lengths"), list) and all(_number(n) for n in r["lengths"]):
                lengths.append(r)
            else:
                notes.append(f"{lengths_path}: step {r['step']}: 'lengths' is not a list of numbers; row skipped")
    points, curves, splits = [], [], []
    summary = run / "eval_summary.json"
    if summary.is_file() and not evals_only:
        s = _read_json(summary, notes) or {}
        for when in ("before", "after"):
            if s.get(when):
                points.append(_point(notes, str(summary), f"held-out {when}", s[when]))
                curves += _held_out_curve(f"held-out {when}", s[when])
    for path in sorted((run / "evals").glob("*.json")) if (run / "evals").is_dir() else []:
        result = _read_json(path, notes)
        if result is None:
            continue
        benchmarks = result.get("benchmarks")
        if not isinstance(benchmarks, dict) or not benchmarks:
            notes.append(f"{path}: no 'benchmarks' results (not an `rlkit eval` result?); left out")
            continue
        for name, m in benchmarks.items():
            points.append(_point(notes, str(path), f"{path.stem} {name}", m, ("avg@k_ci_low", "avg@k_ci_high")))
            if isinstance(m, dict):
                curves += _budget_curve(f"{path.stem} {name}", m)
                split = m.get("lengths") if isinstance(m.get("lengths"), dict) else {}
                if any(isinstance(split.get(k), list) and split[k] for k in ("correct", "wrong")):
                    splits.append((f"{path.stem} {name}", [n for n in split.get("correct") or [] if _number(n)],
                                   [n for n in split.get("wrong") or [] if _number(n)]))
    return {"label": _label(run), "path": run, "rows": rows, "lengths": lengths,
            "points": [p for p in points if p is not None], "budgets": curves, "splits": splits, "notes": notes}


def _held_out_curve(label: str, d) -> list:
    """The budget curve of a held-out result (eval.budgets: ``accuracy@B`` keys), like ``_budget_curve``."""
    if not isinstance(d, dict):
        return []
    keys = sorted(int(k[9:]) for k in d if k.startswith("accuracy@") and k[9:].isdigit() and _number(d[k]))
    line = [(b, d[f"accuracy@{b}"], d.get(f"accuracy@{b}_ci_low"), d.get(f"accuracy@{b}_ci_high")) for b in keys]
    return [(label, line, d.get("budget_auc"))] if line else []


def _budget_curve(label: str, m: dict) -> list:
    """[(label, [(budget, avg@k, ci low, ci high), ...], auc)] of a benchmark evaluated with --budgets, else []."""
    per = m.get("budgets")
    if not isinstance(per, dict) or not per:
        return []
    line = sorted((int(b), v["avg@k"], v.get("avg@k_ci_low"), v.get("avg@k_ci_high")) for b, v in per.items()
                  if str(b).isdigit() and isinstance(v, dict) and _number(v.get("avg@k")))
    return [(label, line, m.get("budget_auc"))] if line else []


def _missing_or_empty(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} does not exist"
    if not path.read_bytes().strip():
        return f"{path} is empty"
    return None


def _why_no_rows(run: dict) -> str:
    path = run.get("path", Path(run["label"])) / "metrics.jsonl"
    return _missing_or_empty(path) or \
        f"{path} has no training steps (no valid row with {', '.join(k for k, _ in CURVES)})"


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def curves_skipped(runs: list[dict]) -> tuple[str | None, list[str]]:
    """Why curves.png cannot be made (None when it can), and what it leaves out (empty panels, runs)."""
    with_rows = [r for r in runs if r["rows"]]
    if not with_rows:
        return "curves.png: " + "; ".join(_why_no_rows(r) for r in runs), []
    left = [f"curves.png: {_why_no_rows(r)}; left out" for r in runs if not r["rows"]]
    panels = {key: any(_number(row.get(key)) for r in with_rows for row in r["rows"]) for key, _ in CURVES}
    if not any(panels.values()):
        return ("curves.png: every value of " + ", ".join(panels) + " is null or missing in "
                + ", ".join(str(r.get("path", r["label"])) + "/metrics.jsonl" for r in with_rows)), left
    for key, title in CURVES:
        if not panels[key]:
            left.append(f"curves.png: panel {title!r} is empty: no row of any run's metrics.jsonl has a number "
                        f"for {key!r}")
    return None, left


def lengths_skipped(runs: list[dict]) -> tuple[str | None, list[str]]:
    def why(run: dict) -> str:
        path = run.get("path", Path(run["label"])) / "lengths.jsonl"
        return _missing_or_empty(path) or f"{path} has no valid length rows"

    if not any(r["lengths"] for r in runs):
        return "lengths.png: " + "; ".join(why(r) for r in runs), []
    return None, [f"lengths.png: {why(r)}; its panel is empty" for r in runs if not r["lengths"]]


def pareto_skipped(runs: list[dict], evals_only: bool = False) -> tuple[str | None, list[str]]:
    if any(r["points"] for r in runs):
        return None, []
    wanted = "`rlkit eval` results (evals/*.json)" if evals_only else \
        "held-out results (eval_summary.json) or `rlkit eval` results (evals/*.json)"
    return f"pareto.png: no usable {wanted} in {', '.join(str(r.get('path', r['label'])) for r in runs)}", []


# plots of results only some runs produce (evaluations with budgets, `rlkit eval` results): left out silently
OPTIONAL = ("budgets.png", "length_by_correctness.png")


def _budgets_skipped(runs: list[dict]) -> tuple[str | None, list[str]]:
    if any(r["budgets"] for r in runs):
        return None, []
    return ("budgets.png: no budget results (`rlkit eval --budgets` in evals/*.json, or eval.budgets in "
            "eval_summary.json)"), []


def _splits_skipped(runs: list[dict]) -> tuple[str | None, list[str]]:
    if any(r["splits"] for r in runs):
        return None, []
    return "length_by_correctness.png: no `rlkit eval` result with completion lengths in evals/*.json", []


def plot_curves(runs: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, title) in zip(axes.flat, CURVES):
        for run in runs:
            xs = [r["step"] for r in run["rows"] if _number(r.get(key))]
            ys = [r[key] for r in run["rows"] if _number(r.get(key))]
            if xs:
                ax.plot(xs, ys, markersize=3, label=run["label"], **style(runs.index(run)))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    return _save(plt, fig, out)


def plot_lengths(runs: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        steps = run["lengths"]
        fifth = max(1, len(steps) // 5)
        early = [n for r in steps[:fifth] for n in r["lengths"]]
        late = [n for r in steps[-fifth:] for n in r["lengths"]]
        top = max(early + late, default=1)
        bins = list(range(0, top + max(1, top // 30) + 1, max(1, top // 30)))
        if early:
            ax.hist(early, bins=bins, alpha=0.55, label=f"steps {steps[0]['step']}-{steps[fifth - 1]['step']}")
        if late:
            ax.hist(late, bins=bins, alpha=0.55, label=f"steps {steps[-fifth]['step']}-{steps[-1]['step']}")
        ax.set_title(f"{run['label']}: completion lengths")
        ax.set_xlabel("tokens")
        ax.set_ylabel("samples")
        if early or late:
            ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_pareto(runs: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, run in enumerate(runs):
        if not run["points"]:
            continue
        color = style(i)["color"]
        ax.scatter([p[2] for p in run["points"]], [100 * p[1] for p in run["points"]],
                   marker=style(i)["marker"], s=40, color=color, label=run["label"])
        by_bench: dict[str, list] = {}  # checkpoints of one benchmark in step order (file names sort by step)
        for label, acc, tokens, ci in run["points"]:
            ax.annotate(label, (tokens, 100 * acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if ci is not None:
                ax.errorbar(tokens, 100 * acc, yerr=[[100 * (acc - ci[0])], [100 * (ci[1] - acc)]], color=color,
                            alpha=0.5, capsize=2, linewidth=1)
                by_bench.setdefault(label.split(" ", 1)[-1], []).append((tokens, 100 * acc))
        for line in by_bench.values():
            if len(line) > 1:
                ax.plot(*zip(*line), color=color, alpha=0.4, linewidth=1)
    ax.set_xlabel("mean completion tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs tokens (up and left is better)")
    ax.grid(alpha=0.3)
    if any(run["points"] for run in runs):
        ax.legend(fontsize=8)
    return _save(plt, fig, out)


MARKERS = "osD^v<>ph*"


def style(k: int) -> dict:
    """The k-th curve's colour, marker and line style: every curve of one plot tells from the others by colour and
    by marker (issue 36: a run's before and after were two shades of one blue)."""
    return {"color": f"C{k % 10}", "marker": MARKERS[k % len(MARKERS)],
            "linestyle": ("-", "--", ":", "-.")[(k // 10) % 4]}


def draw_budgets(ax, runs: list[dict]) -> list:
    """Accuracy against the token budget on ``ax``, one line per run, checkpoint and benchmark (each its own
    ``style``), with its 95% interval shaded; returns the lines."""
    lines, k = [], 0
    for run in runs:
        for label, line, auc in run["budgets"]:
            b, acc = [p[0] for p in line], [100 * p[1] for p in line]
            tag = f"{run['label']}: {label}" + (f" (AUC {100 * auc:.1f}%)" if _number(auc) else "")
            lines += ax.plot(b, acc, label=tag, **style(k))
            if all(_number(p[2]) and _number(p[3]) for p in line):
                ax.fill_between(b, [100 * p[2] for p in line], [100 * p[3] for p in line], color=style(k)["color"],
                                alpha=0.1)
            k += 1
    return lines


def plot_budgets(runs: list[dict], out: Path) -> Path:
    """Accuracy against the token budget (``draw_budgets``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    draw_budgets(ax, runs)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token budget (answers forced at the budget)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, out)


def plot_length_split(runs: list[dict], out: Path) -> Path:
    """Completion lengths of correct and wrong answers, one panel per run, checkpoint and benchmark."""
    plt = _pyplot()
    panels = [(run["label"], *s) for run in runs for s in run["splits"]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), squeeze=False)
    for ax, (run_label, label, right, wrong) in zip(axes[:, 0], panels):
        top = max(right + wrong + [1])
        bins = [top * k / 30 for k in range(31)]
        ax.hist(wrong, bins=bins, alpha=0.5, color="C3", label=f"wrong (n={len(wrong)})")
        ax.hist(right, bins=bins, alpha=0.5, color="C2", label=f"correct (n={len(right)})")
        ax.set_title(f"{run_label}: {label}", fontsize=9)
        ax.set_xlabel("completion tokens")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, out)


def report(run_dirs: list[str], out: str | None = None, evals_only: bool = False) -> list[Path]:
    """Write the plots that have something to show; one warning line on stderr for each thing left out. A
    UserError (nothing written) when no plot can be made."""
    runs_paths = [Path(r) for r in run_dirs]
    if out is None:
        target = runs_paths[0] / "report" if len(runs_paths) == 1 else \
            Path(os.path.commonpath([str(r.resolve()) for r in runs_paths])) / "report"
    else:
        target = Path(out)
    why = unwritable_reason(target, directory=True)
    if why:  # before any run is read or anything plotted
        raise UserError(f"{'--out' if out is not None else 'the report folder'} {target}: {why}")
    runs = [load_run(r, evals_only) for r in runs_paths]
    warnings = [note for run in runs for note in run["notes"]]
    plans, skipped = [], []
    for name, check, plot in (("curves.png", curves_skipped, plot_curves), ("lengths.png", lengths_skipped,
                                                                            plot_lengths),
                              ("pareto.png", lambda rs: pareto_skipped(rs, evals_only), plot_pareto),
                              ("budgets.png", _budgets_skipped, plot_budgets),
                              ("length_by_correctness.png", _splits_skipped, plot_length_split)):
        why, left = check(runs)
        if why is not None and name in OPTIONAL:
            continue  # a view of results the runs never asked for: nothing to warn about
        if why is not None:
            skipped.append(why)
        else:
            plans.append((name, plot))
        warnings += left
    for line in warnings:
        print(f"rlkit: warning: {line}", file=sys.stderr)
    if not plans:
        raise UserError(f"nothing to plot: {'; '.join(skipped)}")
    for line in skipped:
        print(f"rlkit: warning: not plotted: {line}", file=sys.stderr)
    target.mkdir(parents=True, exist_ok=True)
    written = [plot(runs, target / name) for name, plot in plans]
    for path in written:
        print(f"wrote {path}")
    return written
