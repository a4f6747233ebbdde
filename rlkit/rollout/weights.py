"""Export the policy's weights under plain HF names for the rollout engine (full or LoRA-merged)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_adapter")


@contextlib.contextmanager
def exported_weights(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield ``[(hf_name, tensor)]`` of the (unwrapped) policy. A PEFT model's adapters are merged
    into the base weights for the duration of the block and unmerged afterwards, so consume the
    tensors inside the block (the vLLM engine copies them). The tensors are the parameters themselves (detach
    before use), so a sharded parameter keeps what gathers it (ZeRO-3's ds_* attributes, FSDP2's DTensor)."""
    if not _is_peft(model):
        yield [(k, v) for k, v in model.state_dict(keep_vars=True).items()]
        return
    with torch.no_grad():
        model.merge_adapter()
        try:
            out = []
            prefix = "base_model.model."
            for k, v in model.state_dict(keep_vars=True).items():
                if "lora_" in k or "modules_to_save" in k:
                    continue
                k = k[len(prefix):] if k.startswith(prefix) else k
                out.append((k.replace(".base_layer", ""), v))
            yield out
        finally:
            model.unmerge_adapter()
