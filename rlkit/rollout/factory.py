"""Build the configured engine and the rollout strategy that drives it (one call, or segments).

Kept apart from ``rollout.base`` so the protocol module imports none of its implementations.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from rlkit.records import Prompt, StepBatch
from rlkit.rollout.base import RolloutEngine, SamplingSpec


def make_engine(cfg, model_path: str, *, policy=None, tokenizer=None, device=None, dtype=None, lockstep: bool = False,
                context=None) -> RolloutEngine:
    """Build the engine named by ``cfg.rollout.engine`` ("vllm", "vllm_server" or "hf"). ``lockstep`` and
    ``context`` are for the hf engine under sharded parameters (rlkit.rollout.hf_engine)."""
    if cfg.rollout.engine == "vllm_server":
        import torch.distributed as tdist

        from rlkit.rollout.server_engine import VLLMServerEngine

        multi = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
        return VLLMServerEngine(cfg.rollout.server_urls, timeout=cfg.rollout.server_timeout,
                                backend=cfg.rollout.weight_transfer, transfer_address=cfg.rollout.transfer_address,
                                rank=tdist.get_rank() if multi else 0, world=tdist.get_world_size() if multi else 1,
                                barrier=tdist.barrier if multi else None)
    if cfg.rollout.engine == "vllm":
        from rlkit.rollout.vllm_engine import VLLMEngine

        max_len = cfg.rollout.max_model_len or (cfg.data.max_prompt_tokens + 64 + max(
            cfg.rollout.max_new_tokens, cfg.rollout.eval_max_new_tokens))  # + 64: room for an injected budget
        return VLLMEngine(model_path, seed=cfg.train.seed, max_model_len=max_len, device=device,
                          gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                          kv_cache_gib=cfg.rollout.kv_cache_gib, enable_sleep=cfg.rollout.sleep_between_steps,
                          dtype=dtype)
    from rlkit.rollout.hf_engine import HFEngine

    return HFEngine(policy, tokenizer, lockstep=lockstep, context=context)


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


def make_rollout(cfg, engine: RolloutEngine, tokenizer) -> Rollout:
    r = cfg.rollout
    if r.segments <= 1:
        rollout = Rollout(engine)
    else:
        from rlkit.rollout.segments import SegmentRolloutWorker

        worker = SegmentRolloutWorker(
            engine, segment_len=math.ceil(r.max_new_tokens / r.segments), max_total_len=r.max_new_tokens,
            min_groups=r.segment_min_groups, max_wait=r.segment_max_wait,
            decode=functools.partial(tokenizer.decode, skip_special_tokens=True))
        rollout = SegmentedRollout(engine, worker, r.segment_importance)
    if r.async_steps > 0:
        from rlkit.rollout.asynchronous import AsyncRollout

        rollout = AsyncRollout(rollout, r.async_steps, cfg.train.steps, old_from_engine=r.async_importance == "sais")
    return rollout
