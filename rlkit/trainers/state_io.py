"""The training state of a checkpoint without pickle: nothing in a checkpoint can run code when it is loaded.

Written by rlkit itself for one process and DDP (accelerate's ``save_state`` stores the scheduler, the random
states and the optimizer as pickles and loads them with ``torch.load(weights_only=False)``; a crafted file
would run code on ``--resume``)::

    model.safetensors       the trained module's state dict (shared tensors handled by safetensors)
    optimizer.safetensors   every tensor of the optimizer state, keyed ``state.<param index>.<name>``
    optimizer.json          param groups and the non-tensor state
    scheduler.json          the LR scheduler's state dict (numbers only)
    scaler.json             the fp16 grad scaler's state, when there is one
    rng_<rank>.json         python, numpy, torch and CUDA random states of each process

DeepSpeed and FSDP shard model and optimizer their own way: there accelerate's ``save_state`` writes them, and
they are loaded with torch's weights-only unpickler forced on (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), which refuses
to build arbitrary objects. That path is not exercised on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from rlkit.errors import CheckpointError

OWN_FORMAT = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU")


def _own_format(acc) -> bool:
    return str(acc.distributed_type).rsplit(".", 1)[-1] in OWN_FORMAT


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint state ({e})") from None


def _optimizer_split(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {}
    for idx, entry in sd["state"].items():
        plain[str(idx)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain[str(idx)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


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
    """Collective: every rank calls it. Rank 0 writes model, optimizer, scheduler; each rank its random state."""
    out.mkdir(parents=True, exist_ok=True)
    if not _own_format(acc):
        acc.save_state(str(out / "accelerate"))
    elif acc.is_main_process:
        save_model(acc.unwrap_model(prepared), str(out / "model.safetensors"))
        tensors, meta = _optimizer_split(optimizer.state_dict())
        save_file(tensors, str(out / "optimizer.safetensors"))
        _write_json(out / "optimizer.json", meta)
    if acc.is_main_process:
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


def load_training_state(src: Path, acc, prepared, optimizer, scheduler) -> list[str]:
    """Restore what ``save_training_state`` wrote (every rank). Returns console notes."""
    notes = []
    try:
        if (src / "accelerate").is_dir():  # DeepSpeed / FSDP
            with _weights_only_everywhere():
                acc.load_state(str(src / "accelerate"))
        else:
            load_model(acc.unwrap_model(prepared), str(src / "model.safetensors"), strict=True)
            optimizer.load_state_dict(_optimizer_join(load_file(str(src / "optimizer.safetensors")),
                                                      _read_json(src / "optimizer.json")))
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as e:
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
