"""Run logging: console, ``RUN_DIR/metrics.jsonl`` (one object per step), ``completions.jsonl``
tables, and wandb (offline automatically when no API key is configured; the run id names the wandb run, so a
resumed run continues the same one).

``metrics.jsonl`` has exactly one row per step (step 0: the held-out results before training), whatever
kills and resumes happened: a resumed run first drops the rows a killed process wrote after its checkpoint
(and a torn last line), and puts back the checkpoint's own row if the kill came between checkpoint and row.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from rlkit.files import atomic_write_text


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def clean_row(metrics: dict) -> dict:
    """A metrics row as plain JSON values (tensors and numpy numbers as numbers, NaN/inf as null)."""
    return {k: _clean(v) for k, v in metrics.items()}


def _wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, report_to: list[str], project: str, config: dict,
                 run_name: str, run_id: str | None = None):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.completions_path = self.run_dir / "completions.jsonl"
        self.lengths_path = self.run_dir / "lengths.jsonl"
        self.wandb = None
        if enabled and "wandb" in report_to:
            import wandb

            if not os.environ.get("WANDB_MODE") and not _wandb_key_configured():
                os.environ["WANDB_MODE"] = "offline"
            self.wandb = wandb.init(project=project, name=run_name, config=config, dir=str(self.run_dir),
                                    id=run_id, resume="allow")
            # wandb makes one panel section per key prefix (reward/, loss/, completion/, eval/, async/, ...);
            # every chart uses the training step as its x axis
            self.wandb.define_metric("train/step")
            self.wandb.define_metric("*", step_metric="train/step")

    def start_at(self, step: int | None, row: dict | None = None) -> None:
        """Before the first step: ``step`` None is a fresh run (earlier rows are dropped); otherwise keep rows up
        to ``step`` (the checkpoint resumed) and put back its ``row`` if the file lacks it."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.completions_path, self.lengths_path):
            if not path.exists():
                continue
            kept = [r for r in _read_rows(path) if step is not None and r.get("step", -1) <= step]
            if path == self.metrics_path and row is not None and step and not any(r["step"] == step for r in kept):
                kept.append({"step": step, **row})
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **clean_row(metrics)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({**metrics, "train/step": step}, step=step)

    def log_lengths(self, step: int, lengths: list[int]) -> None:
        """Every completion length of the step (all processes): lengths.jsonl (for `rlkit report`'s histograms)
        and a wandb histogram."""
        if not self.enabled:
            return
        with open(self.lengths_path, "a") as f:
            f.write(json.dumps({"step": step, "lengths": lengths}) + "\n")
        if self.wandb is not None and lengths:
            import wandb

            self.wandb.log({"completion/lengths": wandb.Histogram(lengths), "train/step": step}, step=step)

    def log_table(self, key: str, headers: list[str], rows: list[list], step: int) -> None:
        """A table for wandb only (e.g. the before/after evaluation); the console and JSON have their own."""
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Table(columns=headers, data=rows), "train/step": step}, step=step)

    def log_completions(self, step: int, rows: list[dict]) -> None:
        if not self.enabled or not rows:
            return
        with open(self.completions_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        if self.wandb is not None:
            import wandb

            cols = list(rows[0])
            table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
            self.wandb.log({"completions/samples": table, "train/step": step}, step=step)

    def console(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def finish(self, exit_code: int = 0) -> None:
        """End the wandb run (``exit_code`` non-zero: marked failed); later calls do nothing."""
        if self.wandb is not None:
            run, self.wandb = self.wandb, None
            run.finish(exit_code=exit_code)


def _read_rows(path: Path) -> list[dict]:
    """The JSON rows of a .jsonl file; a torn line (a write cut by a kill) is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
