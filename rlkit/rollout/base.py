"""The engine protocol, its sampling spec, the context an engine is built with, the generate/update gate and the
one constructor of a ``Sample`` from engine output (the Sample record lives in rlkit.records).

An engine is a registry component of kind ``engine`` (entry-point group ``rlkit.engines``): a callable
``build(ctx: EngineContext, **options) -> RolloutEngine`` with a declaration (``rlkit.registry.EngineCaps``:
remote, concurrent, weight_sync, uses_policy and the validate / preflight / serve hooks). The built-ins are
registered in ``rlkit.rollout.engines``; a plugin is written the same way (README, "Plugins").
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from rlkit.records import Prompt, Sample, StepBatch


@dataclass
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    logprobs: bool = True
    seed: int | None = None


@dataclass
class EngineContext:
    """What an engine is built from. ``cfg``: the run's Config (an engine reads its own ``rollout.*`` keys);
    ``policy`` / ``tokenizer``: the training model (engines declaring ``uses_policy`` generate with it);
    ``lockstep`` / ``gather``: sharded training (every process must run the same forwards; ``gather()`` is a
    context manager making the policy's parameters whole); ``rank`` / ``world`` / ``barrier``: the trainer's
    processes (an engine shared by all of them lets one send and all wait)."""

    cfg: Any
    model_path: str
    policy: Any = None
    tokenizer: Any = None
    device: Any = None
    dtype: Any = None
    lockstep: bool = False
    gather: Callable[[], contextlib.AbstractContextManager] | None = None
    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] | None = None


@runtime_checkable
class RolloutEngine(Protocol):
    version: int

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        """n samples per prompt, grouped: prompt k's samples come together and carry group_id k.
        ``spec`` is shared by all prompts, or a list with one spec per prompt (segment rollouts).
        Build each sample with ``engine_sample``."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (HF parameter names) and bump `version`. An engine declaring
        ``concurrent`` holds this back until no generation is in flight (``Gate.exclusive``)."""

    def sleep(self) -> None:
        """Free what the engine holds between rollouts (vLLM's sleep mode); may do nothing."""

    def wake(self) -> None: ...

    def close(self) -> None:
        """Release connections, threads and processes (idempotent); the loop calls it once at the end."""


class EngineBase:
    """Defaults for the protocol's optional parts: version 0, sleep/wake/close that do nothing."""

    version: int = 0

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


class Gate:
    """The generate/update gate of a ``concurrent`` engine: generation calls run side by side; a weight update
    waits until none is in flight and holds new ones back (asynchronous rollouts generate on a background thread
    while the training thread syncs weights)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextlib.contextmanager
    def generating(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


def engine_sample(prompt: list[int], ids: list[int], logprobs: list[float], *, stopped: bool, text: str,
                  group: int, version: int) -> Sample:
    """The one way an engine turns its output into a Sample: ``stopped`` = the sample ended itself (EOS or a stop
    string; otherwise it hit the length cap); every token is tagged with the policy ``version`` that made it."""
    ids = [int(t) for t in ids]
    return Sample(prompt_ids=list(prompt), completion_ids=ids, logprobs=[float(x) for x in logprobs],
                  finish_reason="stop" if stopped else "length", text=text, group_id=group,
                  versions=[version] * len(ids))


def per_prompt_specs(spec: SamplingSpec | list[SamplingSpec], n_prompts: int) -> list[SamplingSpec]:
    if isinstance(spec, SamplingSpec):
        return [spec] * n_prompts
    if len(spec) != n_prompts:
        raise ValueError(f"generate: {len(spec)} sampling specs for {n_prompts} prompts")
    return list(spec)


class Rollout:
    """Prompts -> a StepBatch of the groups that come out (prompts, samples, metrics). One engine call:
    every prompt's group comes out in the same step. ``old_from_engine``: the trainer takes the engine's
    logprobs as the old policy (no recomputation)."""

    old_from_engine = False

    def __init__(self, engine: RolloutEngine):
        self.engine = engine

    def __call__(self, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        self.engine.wake()
        samples = self.engine.generate([p.ids for p in prompts], spec)
        self.engine.sleep()
        return StepBatch(prompts, samples)

    def produce(self, step: int, job, first_round: bool) -> StepBatch:
        """A round of ``step``: ``job(step)`` draws (prompts, spec, metrics) on the calling thread, then the
        rollout runs. Asynchronous rollouts override this to run the first rounds of later steps ahead."""
        prompts, spec, metrics = job(step)
        batch = self(prompts, spec, step)
        batch.metrics = {**metrics, **batch.metrics}
        return batch

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def phrase_ids(tokenizer, phrase: str) -> list[int]:
    """A budget-forcing phrase as tokens (no special tokens)."""
    return list(tokenizer(phrase, add_special_tokens=False)["input_ids"])
