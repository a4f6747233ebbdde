"""The training state of a checkpoint without pickle execution: nothing in a checkpoint can run code when loaded.

One process, DDP and FSDP2 (rlkit's consolidated format, written by rank 0 from whole tensors, so any world size
and any of these engines loads it)::

    model.safetensors       the trained module's state dict, whole tensors (tied weights stored once)
    optimizer.safetensors   every tensor of the optimizer state, whole, keyed ``state.<param index>.<name>``
    optimizer.json          param groups and the non-tensor state
    scheduler.json          the LR scheduler's state dict (numbers only)
    scaler.json             the fp16 grad scaler's state, when there is one
    rng_<rank>.json         python, numpy, torch and CUDA random states of each process

(accelerate's ``save_state`` would store the scheduler, the random states and the optimizer as pickles and load
them with ``torch.load(weights_only=False)``; a crafted file would run code on ``--resume``.) Under FSDP2 the
sharded parameters and optimizer states are gathered tensor by tensor on every process and written by rank 0;
loading cuts each process's shard out of the whole tensor.

DeepSpeed ZeRO keeps its optimizer state in flat per-process partitions that only its engine can re-shard:
there ``deepspeed/`` holds the engine's own checkpoint (``save_checkpoint``, one file per process), loaded with
torch's weights-only unpickler forced on (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``) and only DeepSpeed's few plain state
classes allowed (``SAFE_DEEPSPEED_GLOBALS``): still nothing but tensors and numbers is built. Such a checkpoint
resumes under the same ZeRO stage and process count (preflight refuses anything else: rlkit.trainers.backends).
The scheduler and random states are rlkit's JSON under every engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlkit.errors import CheckpointError
from rlkit.rollout.weights import full_tensor, gathered_state_dict
from rlkit.trainers.backends import is_deepspeed

DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"


def safe_deepspeed_globals() -> list:
    """The plain state classes a DeepSpeed ZeRO checkpoint pickles (besides tensors): a loss scaler (numbers), the
    ZeRO stage enum and the fragment address of a partition (two ints). Allowing them lets the weights-only
    unpickler rebuild them; it still refuses everything else."""
    import deepspeed.runtime.fp16.loss_scaler as scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [scaler.LossScaler, scaler.DynamicLossScaler, ZeroStageEnum, fragment_address]


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint state ({e})") from None


def _optimizer_split(sd: dict, keep: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (whole: sharded ones are gathered, a collective) and the JSON-able rest of an optimizer state dict;
    the tensors are kept only where ``keep``."""
    tensors, plain = {}, {}
    for idx, entry in sd["state"].items():
        plain[str(idx)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                whole = full_tensor(value)
                if keep:
                    tensors[f"state.{idx}.{name}"] = whole.contiguous().cpu()
            else:
                plain[str(idx)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict, params: list[torch.Tensor]) -> dict:
    """The optimizer state dict from its files; a tensor shaped like its (sharded) parameter becomes that
    parameter's shard."""
    state: dict = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        idx = int(idx)
        param = params[idx] if idx < len(params) else None
        if param is not None and tuple(value.shape) == tuple(param.shape):
            value = _like(param, value)
        state.setdefault(idx, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _like(param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``param``: the same sharding for a DTensor (every process holds ``whole`` and cuts its
    own shard, no communication), else unchanged."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(param.dtype), mesh, param.placements, src_data_rank=None)


def _tied_groups(module) -> list[list[str]]:
    """State-dict names that refer to one tensor (tied embeddings), first name first."""
    by_id: dict[int, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _save_model(module, path: Path, keep: bool) -> None:
    whole = gathered_state_dict(module, keep)
    if not keep:
        return
    for names in _tied_groups(module):
        for extra in names[1:]:
            whole.pop(extra, None)
    save_file({k: v.contiguous() for k, v in whole.items()}, str(path))


def _load_model(module, path: Path) -> None:
    """Whole tensors from ``path`` into ``module`` (a plain module, or FSDP2's sharded one), strictly: every key of
    the module's state dict (tied ones from their partner) and no other."""
    saved = load_file(str(path))
    for names in _tied_groups(module):
        present = [n for n in names if n in saved]
        for n in names:
            if present and n not in saved:
                saved[n] = saved[present[0]]
    mine = module.state_dict(keep_vars=True)
    missing, unexpected = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    if missing or unexpected:
        raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, t in mine.items():
            value = saved[name]
            if tuple(value.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} in the checkpoint, {tuple(t.shape)} in the model")
            target = t.to_local() if hasattr(t, "to_local") else t
            source = _like(t, value).to_local() if hasattr(t, "to_local") else value
            target.copy_(source)


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [version, list(internal), gauss],
           "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_training_state(out: Path, acc, prepared, optimizer, scheduler) -> None:
    """Collective: every rank calls it. Rank 0 writes model, optimizer, scheduler (DeepSpeed: every rank its
    partition); each rank its random state."""
    out.mkdir(parents=True, exist_ok=True)
    keep = acc.is_main_process
    if is_deepspeed(prepared):
        prepared.save_checkpoint(str(out / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, client_state={}, save_latest=False)
    else:
        _save_model(acc.unwrap_model(prepared), out / "model.safetensors", keep)
        tensors, meta = _optimizer_split(optimizer.state_dict(), keep)
        if keep:
            save_file(tensors, str(out / "optimizer.safetensors"))
            _write_json(out / "optimizer.json", meta)
    if keep:
        _write_json(out / "scheduler.json", scheduler.state_dict())
        if getattr(acc, "scaler", None) is not None:
            _write_json(out / "scaler.json", acc.scaler.state_dict())
    _write_json(out / f"rng_{acc.process_index}.json", _rng_state())
    acc.wait_for_everyone()


@contextlib.contextmanager
def _weights_only_everywhere():
    """torch.load refuses arbitrary objects for the duration, whatever its caller asks for."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _load_deepspeed(src: Path, prepared) -> None:
    with _weights_only_everywhere(), torch.serialization.safe_globals(safe_deepspeed_globals()):
        path, _ = prepared.load_checkpoint(str(src / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=True,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint '{DEEPSPEED_TAG}' under {src / DEEPSPEED_DIR}")


def load_training_state(src: Path, acc, prepared, optimizer, scheduler) -> list[str]:
    """Restore what ``save_training_state`` wrote (every rank). Returns console notes."""
    notes = []
    deepspeed_state = (src / DEEPSPEED_DIR).is_dir()
    if deepspeed_state != is_deepspeed(prepared):  # preflight refuses this; a checkpoint edited since would land here
        raise CheckpointError(f"{src}: the training state was written {'by' if deepspeed_state else 'without'} "
                              f"DeepSpeed, and this run {'does not use' if deepspeed_state else 'uses'} it")
    try:
        if deepspeed_state:
            _load_deepspeed(src, prepared)
        else:
            module = acc.unwrap_model(prepared)
            _load_model(module, src / "model.safetensors")
            params = [p for g in optimizer.param_groups for p in g["params"]]
            optimizer.load_state_dict(_optimizer_join(load_file(str(src / "optimizer.safetensors")),
                                                      _read_json(src / "optimizer.json"), params))
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{src}: the model or optimizer state cannot be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    scheduler.load_state_dict(_read_json(src / "scheduler.json"))
    if getattr(acc, "scaler", None) is not None and (src / "scaler.json").exists():
        acc.scaler.load_state_dict(_read_json(src / "scaler.json"))
    rng = src / f"rng_{acc.process_index}.json"
    if rng.exists():
        _set_rng_state(_read_json(rng))
    else:
        notes.append(f"no random state for process {acc.process_index} in {src}: it continues from the seed")
    return notes
