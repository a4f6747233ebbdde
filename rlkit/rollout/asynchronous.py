"""Asynchronous rollouts with bounded staleness (``rollout.async_steps: k``, server engines only).

The first generation round of steps s+1 .. s+k runs on a background thread while step s trains. Prompts are
drawn (sampler, prompt transforms) on the training thread when a step is submitted, so the sampler and every
stage stay single-threaded; the background thread only calls the engine, one job at a time, in step order.

Staleness: the job of step t is submitted at the start of step t-k, when the policy version is t-k (the version
counts weight syncs, one per step); versions only grow, so every token of step t's batch comes from a version
>= t-k. A weight sync waits for the engine's generation in flight (``VLLMServerEngine`` gates it) and every
sample records the version it was generated with (``Sample.versions``), so staleness is measured, not assumed:
``async/staleness_max`` (step - the version the batch's generation started from, <= k, checked),
``async/sample_staleness_mean`` (step - the newest version in each sample) and ``async/oldest_token_lag`` (step -
the oldest version, which segment rollouts push past k by design: their samples carry tokens from earlier steps).
Prompt transforms and the dynamic-sampling filter's sizing see the controller state of the step that draws the
prompts, up to k steps before the step that trains on them.

Off-policy correction is the loop's existing machinery: with ``rollout.importance: sais`` the engine's
per-token logprobs are the PPO ratio's old policy (each token against the version that generated it); with
``pois`` the ratio is against the current policy and ``algorithm.tis_cap`` weights each token by
min(pi_old / pi_behaviour, cap) (truncated importance sampling, Yao et al. 2025).

Dynamic-sampling rounds after the first run synchronously (on the same thread, after the jobs already queued).
A checkpoint waits for the queued jobs and stores their batches (JSON), so a resumed run trains on exactly
the batches the interrupted one had generated.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rollout.base import Rollout


def _done(batch: StepBatch) -> Future:
    f: Future = Future()
    f.set_result(batch)
    return f


class AsyncRollout(Rollout):
    def __init__(self, inner: Rollout, k: int, total_steps: int, *, old_from_engine: bool):
        super().__init__(inner.engine)
        self.inner, self.k, self.total_steps = inner, k, total_steps
        self.old_from_engine = old_from_engine  # rollout.importance: one choice for the whole rollout
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkit-async-rollout")
        self._ahead: dict[int, Future] = {}

    def _generate(self, prompts: list[Prompt], spec, step: int, metrics: dict) -> StepBatch:
        t0, version = time.perf_counter(), self.engine.version  # no older policy generates any of this job
        batch = self.inner(prompts, spec, step)
        batch.metrics = {**metrics, **batch.metrics, "async/generate_s": time.perf_counter() - t0,
                         "async/job_version": float(version)}
        return batch

    def produce(self, step: int, job, first_round: bool) -> StepBatch:
        if not first_round:
            prompts, spec, metrics = job(step)
            return self._worker.submit(self._generate, prompts, spec, step, metrics).result()
        for t in range(step, min(step + self.k, self.total_steps - 1) + 1):
            if t not in self._ahead:
                prompts, spec, metrics = job(t)
                self._ahead[t] = self._worker.submit(self._generate, prompts, spec, t, metrics)
        batch = self._ahead.pop(step).result()
        batch.metrics.update(self._staleness(batch, step))
        return batch

    def _staleness(self, batch: StepBatch, step: int) -> dict:
        """The bound is on the job: every token it generated comes from a version >= its start version. Tokens a
        segment rollout carried from earlier steps (and members that finished in an earlier segment round and
        wait for their group) are older by design; they are reported, not bounded."""
        lag = step - int(batch.metrics.pop("async/job_version", step))
        if lag > self.k:  # the bound is what makes the importance correction valid: never train past it
            raise RuntimeError(f"asynchronous rollout: the batch of step {step} was generated {lag} versions ago, "
                               f"over rollout.async_steps={self.k}")
        newest = [step - max(s.versions) for s in batch.samples if s.versions]
        oldest = [step - min(s.versions) for s in batch.samples if s.versions]
        return {"async/staleness_max": float(lag), "async/sample_staleness_mean": sum(newest) / max(len(newest), 1),
                "async/oldest_token_lag": float(max(oldest, default=0))}

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def state_dict(self) -> dict:
        ahead = {t: f.result() for t, f in sorted(self._ahead.items())}  # waits for the queued jobs
        return {"inner": self.inner.state_dict(), "ahead": [
            {"step": t, "prompts": [dataclasses.asdict(p) for p in b.prompts],
             "samples": [dataclasses.asdict(s) for s in b.samples], "metrics": b.metrics}
            for t, b in ahead.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state.get("inner") or {})
        self._ahead = {d["step"]: _done(StepBatch([Prompt(**p) for p in d["prompts"]],
                                                  [Sample(**s) for s in d["samples"]], metrics=d["metrics"]))
                       for d in state.get("ahead", [])}
