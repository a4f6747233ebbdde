"""The Python API's entry points that span the layers: the checks before any model loads (rlkit.preflight), then
the trainer (rlkit.trainers). ``rlkit.train`` is this module's ``train``; the CLI does the same two steps."""

from __future__ import annotations

from rlkit.config import Config
from rlkit.preflight import preflight
from rlkit.trainers.grpo import RunResult
from rlkit.trainers.grpo import train as _train
from rlkit.trainers.run import Run
from rlkit.trainers.run import setup as _setup


def train(cfg: Config, resume: str | None = None, *, overwrite: bool = False) -> RunResult:
    """Check ``cfg``'s inputs (run directory, resume checkpoint, model, data; the run directory's lock is taken),
    then train. ``resume``: None, "auto" or a checkpoint path; ``overwrite``: replace an earlier run in
    ``output_dir`` (without it or ``resume`` a non-empty output_dir is an error)."""
    return _train(cfg, preflight(cfg, resume, overwrite))


def setup(cfg: Config, resume: str | None = None, *, overwrite: bool = False) -> Run:
    """The checks, then the trainer's set-up without training (tests, notebooks): the run directory's lock is held
    until the process ends."""
    return _setup(cfg, preflight(cfg, resume, overwrite))
