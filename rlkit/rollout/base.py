"""The engine protocol and its sampling spec (the Sample record lives in rlkit.records)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from rlkit.records import Sample


@dataclass
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    logprobs: bool = True
    seed: int | None = None


@runtime_checkable
class RolloutEngine(Protocol):
    version: int

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        """n samples per prompt, grouped: prompt k's samples come together and carry group_id k.
        ``spec`` is shared by all prompts, or a list with one spec per prompt (segment rollouts)."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (HF parameter names) and bump `version`."""

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


def per_prompt_specs(spec: SamplingSpec | list[SamplingSpec], n_prompts: int) -> list[SamplingSpec]:
    if isinstance(spec, SamplingSpec):
        return [spec] * n_prompts
    if len(spec) != n_prompts:
        raise ValueError(f"generate: {len(spec)} sampling specs for {n_prompts} prompts")
    return list(spec)
