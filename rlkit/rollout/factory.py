"""Build the configured engine and the rollout strategy that drives it (one call, or segments).

Kept apart from ``rollout.base`` so the protocol module imports none of its implementations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

from rlkit import registry
from rlkit.records import Prompt, StepBatch
from rlkit.rollout.base import EngineContext, Rollout, RolloutEngine, SamplingSpec


def engine_entry(cfg) -> registry.Entry:
    """The registry entry of ``rollout.engine`` (its declaration: ``.caps``)."""
    return registry.resolve("engine", cfg.rollout.engine)


def make_engine(cfg, model_path: str, *, policy=None, tokenizer=None, device=None, dtype=None, lockstep: bool = False,
                context=None) -> RolloutEngine:
    """Build the engine named by ``cfg.rollout.engine`` (a registered name, an import path or an ``rlkit.engines``
    entry point) with ``rollout.engine_options``. ``lockstep`` and ``context`` are for engines that generate with
    the policy under sharded parameters (the hf engine)."""
    import torch.distributed as tdist

    multi = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
    ctx = EngineContext(cfg, model_path, policy=policy, tokenizer=tokenizer, device=device, dtype=dtype,
                        lockstep=lockstep, gather=context, rank=tdist.get_rank() if multi else 0,
                        world=tdist.get_world_size() if multi else 1, barrier=tdist.barrier if multi else None)
    return engine_entry(cfg).obj(ctx, **cfg.rollout.engine_options)


def push_policy(engine: RolloutEngine, caps: registry.EngineCaps, model) -> float:
    """The one way a policy reaches an engine: ``model``'s weights exported (rlkit.rollout.weights: gathered when
    sharded, LoRA merged) into ``engine.update_weights``; an engine declaring no ``weight_sync`` (a fixed policy)
    only counts the version. Every process calls it at the same point. Returns seconds."""
    from rlkit.rollout.weights import exported_weights

    t = time.perf_counter()
    if caps.weight_sync:
        with exported_weights(model) as named:
            engine.update_weights(named)
    else:
        engine.version += 1
    return time.perf_counter() - t


def first_push(engine: RolloutEngine, caps: registry.EngineCaps, model: Callable[[], object]) -> None:
    """A remote engine holds whatever it was started with (or an earlier run's weights): before its first use it
    gets ``model()`` as version 0 (training: the initial policy; evaluation: the evaluated model)."""
    if caps.remote and caps.weight_sync:
        engine.version = -1
        push_policy(engine, caps, model())


class SegmentedRollout(Rollout):
    """UloRL segment rollouts (rlkit.rollout.segments): new groups join the pool, complete groups come out,
    possibly started in earlier steps. ``importance`` "sais" takes each token against the policy version that
    produced it (the engine's logprobs); "pois" recomputes the whole sequence under the current policy."""

    def __init__(self, engine: RolloutEngine, worker, importance: str):
        super().__init__(engine)
        self.worker = worker
        self.old_from_engine = importance == "sais"

    def __call__(self, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        self.engine.wake()
        released, metrics = self.worker.step(prompts, spec, step)
        self.engine.sleep()
        samples = [dataclasses.replace(m, group_id=k) for k, g in enumerate(released) for m in g.members]
        return StepBatch([g.prompt for g in released], samples, metrics=metrics)

    def state_dict(self) -> dict:
        return self.worker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.worker.load_state_dict(state)


def make_rollout(cfg, engine: RolloutEngine, tokenizer, hook=None, verify=None, model_path: str = "",
                 device=None) -> Rollout:
    """The rollout strategy of ``cfg``: a rollout hook (``hook``: the built ``rollout_hook``, else the one the config
    names, or ``rollout.budget_forcing``'s; ``verify`` and ``model_path`` reach it through its HookContext),
    segments, or one engine call; asynchronous around any of them."""
    from rlkit.config import importance

    r = cfg.rollout
    if hook is None and cfg.rollout_hook is not None:
        hook = registry.build_entry(registry.resolve("rollout_hook", cfg.rollout_hook.name), cfg.rollout_hook.kwargs,
                                    "rollout_hook")
    if hook is None and r.budget_forcing.budgets:
        from rlkit.rollout.forcing import BudgetForcing, BudgetForcingHook

        f = r.budget_forcing
        hook = BudgetForcingHook(forcing=BudgetForcing.for_tokenizer(f.budgets, f.phrase, f.answer_tokens, tokenizer))
    if hook is not None:
        from rlkit.rollout.hooks import HookedRollout

        rollout = HookedRollout(engine, hook, tokenizer, cfg.train.seed, model_path=model_path, verify=verify,
                                device=device)
    elif r.segments <= 1:
        rollout = Rollout(engine)
    else:
        from rlkit.rollout.segments import SegmentRolloutWorker

        worker = SegmentRolloutWorker(
            engine, segment_len=math.ceil(r.max_new_tokens / r.segments), max_total_len=r.max_new_tokens,
            min_groups=r.segment_min_groups, max_wait=r.segment_max_wait,
            decode=functools.partial(tokenizer.decode, skip_special_tokens=True))
        rollout = SegmentedRollout(engine, worker, importance(cfg))
    if r.async_steps > 0:
        from rlkit.rollout.asynchronous import AsyncRollout

        rollout = AsyncRollout(rollout, r.async_steps, cfg.train.steps, old_from_engine=importance(cfg) == "sais")
    return rollout
