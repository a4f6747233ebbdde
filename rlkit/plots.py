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

The plots go to ``--out``, by default ``RUN_DIR/report/`` for one run and ``report/`` in the runs' common parent
for several.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlkit.errors import UserError
from rlkit.logging import _read_rows

CURVES = [("reward/mean", "reward"), ("accuracy", "accuracy (training samples)"),
          ("completion/mean_tokens", "mean completion tokens"), ("completion/truncation_rate", "truncation rate")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: Path) -> str:
    return run.resolve().name


def load_run(run: Path, evals_only: bool = False) -> dict:
    """What the plots need from one run directory; a point is (label, accuracy, mean tokens, interval or None)."""
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run}: not an rlkit run directory (no metrics.jsonl)")
    rows = [r for r in _read_rows(run / "metrics.jsonl") if "reward/mean" in r]
    lengths = _read_rows(run / "lengths.jsonl") if (run / "lengths.jsonl").is_file() else []
    points = []
    summary = run / "eval_summary.json"
    if summary.is_file() and not evals_only:
        s = json.loads(summary.read_text())
        for when in ("before", "after"):
            if s.get(when):
                points.append((f"held-out {when}", s[when]["accuracy"], s[when]["mean_tokens"], None))
    for path in sorted((run / "evals").glob("*.json")) if (run / "evals").is_dir() else []:
        result = json.loads(path.read_text())
        for name, m in result.get("benchmarks", {}).items():
            ci = (m["avg@k_ci_low"], m["avg@k_ci_high"]) if "avg@k_ci_low" in m else None
            points.append((f"{path.stem} {name}", m["avg@k"], m["mean_tokens"], ci))
    return {"label": _label(run), "rows": rows, "lengths": lengths, "points": points}


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(runs: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, title) in zip(axes.flat, CURVES):
        for run in runs:
            xs = [r["step"] for r in run["rows"] if isinstance(r.get(key), (int, float))]
            ys = [r[key] for r in run["rows"] if isinstance(r.get(key), (int, float))]
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=run["label"])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
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
    markers = "osD^v<>ph*"
    for i, run in enumerate(runs):
        if not run["points"]:
            continue
        color = f"C{i % 10}"
        ax.scatter([p[2] for p in run["points"]], [100 * p[1] for p in run["points"]],
                   marker=markers[i % len(markers)], s=40, color=color, label=run["label"])
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


def report(run_dirs: list[str], out: str | None = None, evals_only: bool = False) -> list[Path]:
    runs_paths = [Path(r) for r in run_dirs]
    runs = [load_run(r, evals_only) for r in runs_paths]
    if out is None:
        target = runs_paths[0] / "report" if len(runs_paths) == 1 else \
            Path(os.path.commonpath([str(r.resolve()) for r in runs_paths])) / "report"
    else:
        target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    written = [plot_curves(runs, target / "curves.png"), plot_lengths(runs, target / "lengths.png"),
               plot_pareto(runs, target / "pareto.png")]
    for path in written:
        print(f"wrote {path}")
    return written
