"""What the checks before any model loads (rlkit.preflight) hand the trainer's set-up: the run directory and its
lock, the data rows read and checked, the resume checkpoint, the distributed engine. A record of the trainer's
layer, so the trainer takes it without importing the checks themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlkit.config import Config, ConfigError, to_dict
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
    config: Config | None = None  # the checked config, resolved (rlkit.config.check.resolve): what the run uses
    described: dict = field(default_factory=dict)  # the config as it was given to the checks (to_dict)
    built: dict[str, Any] | None = None  # its reward terms and stages, built (rlkit.trainers.stages.build_components)

    def adopt(self, cfg: Config) -> Config:
        """The resolved config the run uses, for ``cfg``, the config these checks were made on; a config edited
        since is refused (the checks and the components built would describe another run)."""
        if self.config is None:
            raise ConfigError("these checks hold no config: run rlkit.preflight.preflight(cfg) first")
        if to_dict(cfg) != self.described:
            raise ConfigError("the config changed after rlkit.preflight.preflight checked it: check it again "
                              "(rlkit.train does both)")
        return self.config

    def release(self) -> None:
        """Drop the run directory's lock (and the directory, if taking the lock created it and nothing was written)."""
        if self.lock is not None:
            self.lock.release(discard=True)
