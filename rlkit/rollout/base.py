"""The rollout record and the engine protocol."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Sample:
    """One completion of one prompt.

    logprobs: behaviour log-probs of the completion tokens, log softmax(logits / T) of the engine
    (len == len(completion_ids)); empty when the engine was asked for none (greedy eval).
    versions: the policy version that produced each completion token.
    segments: the segment (0, 1, ...) that produced each token; empty for ordinary one-call rollouts.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) | "length" (hit max_new_tokens)
    text: str
    group_id: int  # index of the prompt within the generate() call (offset by the caller)
    versions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)


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


def make_engine(cfg, model_path: str, *, policy=None, tokenizer=None, device=None, dtype=None) -> RolloutEngine:
    """Build the engine named by ``cfg.rollout.engine`` ("vllm" or "hf")."""
    if cfg.rollout.engine == "vllm":
        from rlkit.rollout.vllm_engine import VLLMEngine

        max_len = cfg.rollout.max_model_len or (cfg.data.max_prompt_tokens + 64 + max(
            cfg.rollout.max_new_tokens, cfg.rollout.eval_max_new_tokens))  # + 64: room for an injected budget
        return VLLMEngine(model_path, seed=cfg.train.seed, max_model_len=max_len, device=device,
                          gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                          kv_cache_gib=cfg.rollout.kv_cache_gib, enable_sleep=cfg.rollout.sleep_between_steps,
                          dtype=dtype)
    from rlkit.rollout.hf_engine import HFEngine

    return HFEngine(policy, tokenizer)
