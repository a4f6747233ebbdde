"""Run logging: console, ``RUN_DIR/metrics.jsonl`` (one object per step), ``completions.jsonl``
tables, and wandb (offline automatically when no API key is configured)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


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
                 run_name: str):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.completions_path = self.run_dir / "completions.jsonl"
        self.wandb = None
        if enabled and "wandb" in report_to:
            import wandb

            if not os.environ.get("WANDB_MODE") and not _wandb_key_configured():
                os.environ["WANDB_MODE"] = "offline"
            self.wandb = wandb.init(project=project, name=run_name, config=config, dir=str(self.run_dir),
                                    resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

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
            self.wandb.log({f"completions/step_{step}": table}, step=step)

    def console(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
