"""Checkpoints: written to a temporary directory and renamed into place, never half-written.

Layout of ``RUN_DIR/checkpoints/step_000012/``::

    policy/              HF checkpoint (or PEFT adapter) + tokenizer + README.md (a Hub model card, rlkit.cards):
                         load with transformers or vLLM by path
    trainer/             model, optimizer, scheduler and random states: safetensors and JSON, no pickle; under
                         DeepSpeed its per-process partitions, loaded weights-only (rlkit.trainers.state_io)
    trainer_state.json   step, run id, the run's config, policy version, data position, stage and rollout
                         state, and the step's metrics row
    COMPLETE             written last

Every file and directory is fsynced before the rename that publishes the checkpoint, and the parent after it.
``find_latest`` only returns directories with ``COMPLETE``; stray ``*.tmp-*`` directories from a killed
run (and a ``*.old`` left by a kill while re-saving a step) are ignored and removed by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlkit import failpoints
from rlkit.cards import model_card
from rlkit.errors import CheckpointError
from rlkit.files import fsync_dir, fsync_tree, os_error_of
from rlkit.rundir import STEP_DIR, checkpoint_root, find_latest, list_checkpoints  # noqa: F401 (this module's API too)


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> latest complete checkpoint of the run dir (or None);
    a path -> that checkpoint (must be complete)."""
    if not resume:
        return None
    if resume == "auto":
        return find_latest(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such directory (give a checkpoint directory such as "
                              f"RUN_DIR/checkpoints/step_000010, or auto)")
    if not (path / "COMPLETE").exists():
        latest = find_latest(path)
        hint = f"; did you mean {latest}?" if latest else ""
        raise CheckpointError(f"--resume {resume}: not a complete rlkit checkpoint (no COMPLETE marker){hint}")
    return path


def save_checkpoint(run_dir: str | Path, step: int, accelerator, prepared, tokenizer, optimizer, scheduler,
                    trainer_state: dict, keep_last: int) -> Path:
    """Collective: every rank calls it (accelerate gathers sharded states); rank 0 publishes and rotates.

    `prepared` is the prepared LogprobPolicy (DDP / DeepSpeed engine / FSDP2 module); its ``.model`` (HF or PEFT)
    is exported with whole tensors, gathered on every rank and written by rank 0.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp-{trainer_state.get('run_id', 'run')}"
    if accelerator.is_main_process:
        for stale in [*root.glob("*.tmp-*"), *root.glob("*.old")] if root.exists() else []:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        _write(tmp, final, root, run_dir, step, accelerator, prepared, tokenizer, optimizer, scheduler, trainer_state,
               keep_last)
    except BaseException as e:  # anything (disk full, a writer's own error, a signal): no half-written checkpoint
        if accelerator.is_main_process:  # is left behind, and the last complete one stays
            shutil.rmtree(tmp, ignore_errors=True)
        wrapped = os_error_of(e, tmp) if isinstance(e, Exception) else None
        if wrapped is not None and wrapped is not e:  # disk full inside safetensors: the same line as from open()
            raise wrapped from None
        raise
    accelerator.wait_for_everyone()
    return final


def _write(tmp: Path, final: Path, root: Path, run_dir, step: int, accelerator, prepared, tokenizer, optimizer,
           scheduler, trainer_state: dict, keep_last: int) -> None:
    from rlkit.rollout.weights import gathered_state_dict
    from rlkit.trainers.state_io import save_training_state

    save_training_state(tmp / "trainer", accelerator, prepared, optimizer, scheduler)
    module = accelerator.unwrap_model(prepared)
    full = gathered_state_dict(module, keep=accelerator.is_main_process)  # whole tensors under ZeRO-3 / FSDP2
    if accelerator.is_main_process:
        inner = module.model
        state = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
        inner.save_pretrained(tmp / "policy", state_dict=state)
        tokenizer.save_pretrained(tmp / "policy")
        (tmp / "policy" / "README.md").write_text(model_card(trainer_state, name=Path(run_dir).resolve().name))
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        failpoints.hit("checkpoint", str(tmp / "COMPLETE"))
        (tmp / "COMPLETE").write_text("ok\n")
        fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. final == periodic): replace atomically
            old = final.with_name(final.name + ".old")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
        failpoints.hit("publish")
        for stale in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)


def load_trainer_state(path: Path) -> dict:
    """The JSON state of a checkpoint (numbers and names only: nothing in it is executed)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'trainer_state.json'}: cannot read the checkpoint's state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path / 'trainer_state.json'}: not an rlkit trainer state (no integer 'step')")
    return state


@dataclass
class Piece:
    """One piece of run state in ``trainer_state.json``: ``save()`` returns its JSON value, ``load(value)`` puts it
    back. ``per_process``: each process has its own (gathered on save; on restore each process takes the value of
    its index, and the process count must match). ``load`` None: a record that preflight reads to check a resume
    (the config, the inputs' fingerprints), not restored. ``when``: restore only if it returns True."""

    key: str
    save: Callable[[], Any]
    load: Callable[[Any], None] | None = None
    per_process: bool = False
    what: str = ""  # how a process-count mismatch names it
    when: Callable[[Any], bool] = lambda value: True


@dataclass
class Checkpointer:
    """Owns save and restore of every piece of run state: the model, optimizer, scheduler and random states
    (rlkit.trainers.state_io) and the JSON pieces the run registers (``pieces``: sampler, stages, rollout and reward
    state, held-out results, the time model, the policy version, ...). Adding a piece of state is one ``Piece``."""

    run_dir: Path
    acc: Any
    prepared: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    keep_last: int
    pieces: list[Piece] = field(default_factory=list)

    def save(self, step: int, **records) -> Path:
        """A checkpoint after ``step`` steps (collective: every process calls it); ``records``: values of this save
        only (the step's metrics row)."""
        from rlkit.parallel import dist

        state: dict = {"step": step, **records}
        for piece in self.pieces:
            value = piece.save()
            state[piece.key] = dist.gather_objects(self.acc, value) if piece.per_process else value
        return save_checkpoint(self.run_dir, step, self.acc, self.prepared, self.tokenizer, self.optimizer,
                               self.scheduler, state, self.keep_last)

    def restore(self, path: Path) -> tuple[dict, list[str]]:
        """Load checkpoint ``path`` into the run (every process): the model, optimizer, scheduler and random states,
        then each piece in registration order. Returns the saved state and the console lines of the load."""
        from rlkit.trainers.state_io import load_training_state

        state = load_trainer_state(path)
        lines = load_training_state(path / "trainer", self.acc, self.prepared, self.optimizer, self.scheduler)
        for piece in self.pieces:
            if piece.load is None or piece.key not in state or not piece.when(state[piece.key]):
                continue
            value = state[piece.key]
            if piece.per_process:
                if len(value) != self.acc.num_processes:
                    raise CheckpointError(f"{path}: {piece.what or piece.key} was saved by {len(value)} processes; "
                                          f"resume with the same number (now {self.acc.num_processes})")
                value = value[self.acc.process_index]
            piece.load(value)
        return state, lines
