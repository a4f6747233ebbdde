"""The policy's weights as whole tensors, whatever shards them: the one place that gathers.

Every rollout engine (colocated vLLM, vLLM servers, the hf engine's checkpoints) and the checkpoint's ``policy/``
export read the policy through here. Under DeepSpeed ZeRO-3 a parameter is an empty placeholder (``ds_id``,
``ds_shape``) gathered with ``deepspeed.zero.GatheredParameters``; under FSDP2 it is a sharded ``DTensor`` whose
``full_tensor()`` all-gathers it. Both gathers are collectives: every process iterates the same weights in the
same order, even when only one of them sends (the server engine) or keeps (rank 0 writing a checkpoint) them.
Tensors come out one at a time, so a whole model is never gathered at once by this module.

LoRA (PEFT) policies are exported merged, ``W + sum_a transpose(B_a A_a) * scaling_a`` over the active adapters,
computed out of place from the gathered base weight and adapter matrices: the training weights are never
modified (PEFT's ``merge_adapter`` / ``unmerge_adapter`` would add and subtract the delta in place, which neither
works on sharded placeholders nor gives back the same bits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


def is_zero3(t) -> bool:
    return hasattr(t, "ds_id")


def global_shape(t: torch.Tensor) -> tuple[int, ...]:
    """The whole tensor's shape (a ZeRO-3 placeholder keeps it in ``ds_shape``; a DTensor reports it)."""
    return tuple(getattr(t, "ds_shape", t.shape))


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A whole, detached copy-safe tensor of parameter or buffer ``t`` (collective when ``t`` is sharded)."""
    if is_zero3(t):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
            return t.detach().clone()
    if callable(getattr(t, "full_tensor", None)):  # DTensor (FSDP2)
        return t.full_tensor().detach()
    return t.detach()


@contextlib.contextmanager
def _gathered(params: list[torch.Tensor]):
    """Several parameters whole at once for the duration (ZeRO-3: one gather; DTensors: materialised copies)."""
    zero3 = [p for p in params if is_zero3(p)]
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(zero3, modifier_rank=None):
            yield [p.detach().clone() if is_zero3(p) else full_tensor(p) for p in params]
        return
    yield [full_tensor(p) for p in params]


@dataclass(frozen=True)
class Weight:
    """One exported tensor: its HF name, dtype and whole shape, and how to get it (a collective when sharded)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    fetch: Callable[[], torch.Tensor]


class WeightExport:
    """The policy's weights under plain HF names. Iterating yields ``(name, whole tensor)`` pairs one at a time,
    gathering each (every process must iterate, in step); ``specs`` describes them without gathering."""

    def __init__(self, weights: list[Weight]):
        self.weights = weights

    @property
    def specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(w.name, w.dtype, w.shape) for w in self.weights]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for w in self.weights:
            yield w.name, w.fetch()

    def __len__(self) -> int:
        return len(self.weights)


def as_export(named) -> WeightExport:
    """A WeightExport as it is, or one over plain ``(name, tensor)`` pairs."""
    if isinstance(named, WeightExport):
        return named
    return WeightExport([Weight(k, v.dtype, global_shape(v), (lambda v=v: full_tensor(v))) for k, v in named])


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers by module name (the ones that carry ``lora_A``)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def _merged_fetch(layer, base_weight: torch.Tensor) -> Callable[[], torch.Tensor]:
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    for a in adapters:
        if not isinstance(layer.lora_A[a], torch.nn.Linear) or getattr(layer, "use_dora", {}).get(a, False):
            raise ValueError(f"LoRA adapter {a!r} on {type(layer.base_layer).__name__}: only plain LoRA on Linear "
                             "layers can be merged for the rollout engine")

    def fetch() -> torch.Tensor:
        params = [base_weight] + [t for a in adapters for t in (layer.lora_B[a].weight, layer.lora_A[a].weight)]
        with _gathered(params) as (w, *ab):
            out = w.clone()
            for i, a in enumerate(adapters):
                b, a_mat = ab[2 * i], ab[2 * i + 1]
                delta = (b.float() @ a_mat.float()) * layer.scaling[a]
                out += (delta.T if layer.fan_in_fan_out else delta).to(out.dtype)
            return out

    return fetch


def _export_peft(model) -> list[Weight]:
    prefix = "base_model.model."
    layers = _lora_layers(model)
    out = []
    for key, t in model.state_dict(keep_vars=True).items():
        if "lora_" in key or "modules_to_save" in key:
            continue
        name = key[len(prefix):] if key.startswith(prefix) else key
        owner = key[:-len(".base_layer.weight")] if key.endswith(".base_layer.weight") else None
        fetch = _merged_fetch(layers[owner], t) if owner in layers else (lambda t=t: full_tensor(t))
        out.append(Weight(name.replace(".base_layer", ""), t.dtype, global_shape(t), fetch))
    return out


@contextlib.contextmanager
def exported_weights(model) -> Iterator[WeightExport]:
    """The (unwrapped) policy's weights under plain HF names: full weights, or a PEFT model's base weights with
    the active LoRA adapters merged. Iterate inside the block, on every process."""
    if _is_peft(model):
        yield WeightExport(_export_peft(model))
        return
    yield as_export(model.state_dict(keep_vars=True).items())


def gathered_state_dict(module, keep: bool) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every tensor whole (a collective: every process calls it); the tensors are kept
    only where ``keep`` (the process that writes them), the others get an empty dict."""
    out = {}
    for key, t in module.state_dict(keep_vars=True).items():
        whole = full_tensor(t)
        if keep:
            out[key] = whole.cpu()
    return out
