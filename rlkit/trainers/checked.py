"""What the checks before any model loads (rlkit.preflight) hand the trainer's set-up: the run directory and its
lock, the data rows read and checked, the resume checkpoint, the distributed engine. A record of the trainer's
layer, so the trainer takes it without importing the checks themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlkit.rundir import RunLock
from rlkit.trainers.backends import Backend


@dataclass
class Preflight:
    """The checked inputs of a run, handed to the trainer's set-up."""

    run_dir: Path
    run_id: str
    resume_path: Path | None = None
    overwrite: bool = False  # clear the run directory before writing (main process, in set-up)
    rows: tuple[list[dict], list[dict]] = ((), ())  # train rows, held-out rows (rlkit.data.read_data)
    data_fingerprint: str = ""  # of the train rows, saved in checkpoints and compared on resume
    notices: list[str] = field(default_factory=list)  # console lines (resume: what changed, starting fresh)
    backend: Backend = field(default_factory=Backend)  # the distributed engine the launcher asks for, checked
    lock: RunLock | None = None  # the run directory's lock, held by the main process for the run's life
    inputs: dict = field(default_factory=dict)  # fingerprint of the model and tokenizer (saved in checkpoints)

    def release(self) -> None:
        """Drop the run directory's lock (and the directory, if taking the lock created it and nothing was written)."""
        if self.lock is not None:
            self.lock.release(discard=True)
