"""Pieces of the server engine and asynchronous rollouts that need no server: chunk planning of the weight
transfer, the generation/sync gate, the async job schedule and its staleness bound, TIS weights, `rlkit serve`'s
command line."""

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rollout.base import Rollout


@settings(deadline=None)  # the first call imports vLLM
@given(st.lists(st.integers(1, 5000), max_size=40), st.integers(1, 8000))
def test_plan_chunks_covers_every_parameter_once_in_order(sizes, buffer):
    from rlkit.rollout.transfer import plan_chunks

    chunks = plan_chunks(sizes, buffer)
    assert [i for lo, hi in chunks for i in range(lo, hi)] == list(range(len(sizes)))
    for lo, hi in chunks[:-1]:  # every chunk but the last holds at least a buffer; it went over with its last
        assert sum(sizes[lo:hi]) >= buffer and sum(sizes[lo:hi - 1]) < buffer


def test_gate_sync_waits_for_generation_and_holds_new_ones_back():
    from rlkit.rollout.base import Gate

    gate, log = Gate(), []
    started = threading.Event()

    def generate(tag, hold):
        with gate.generating():
            started.set()
            log.append(f"{tag}+")
            time.sleep(hold)
            log.append(f"{tag}-")

    first = threading.Thread(target=generate, args=("g1", 0.3))
    first.start()
    started.wait()
    with gate.exclusive():
        log.append("sync+")
        late = threading.Thread(target=generate, args=("g2", 0.0))
        late.start()
        time.sleep(0.2)  # g2 must not start while the sync holds the gate
        log.append("sync-")
    first.join()
    late.join()
    assert log == ["g1+", "g1-", "sync+", "sync-", "g2+", "g2-"]


def test_truncated_importance_weights():
    from rlkit.trainers.update import truncated_importance

    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    w = truncated_importance(old, behaviour, cap=3.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 3.0]]))  # 0.5/0.25, 0.2/0.4, min(9, 3)


class _Engine:
    """Records the policy version each generate call saw; the test moves ``version`` like weight syncs do."""

    def __init__(self):
        self.version, self.calls = 0, []

    def generate(self, prompts, spec):
        self.calls.append((prompts[0][0], self.version))
        return [Sample(prompt_ids=p, completion_ids=[1, 2], logprobs=[-1.0, -1.0], finish_reason="stop", text="",
                       group_id=k, versions=[self.version] * 2) for k, p in enumerate(prompts)]

    def sleep(self):
        pass

    def wake(self):
        pass


def test_async_rollout_runs_k_steps_ahead_and_bounds_staleness():
    from rlkit.rollout.asynchronous import AsyncRollout

    engine = _Engine()
    rollout = AsyncRollout(Rollout(engine), k=2, total_steps=5, old_from_engine=True)
    drawn = []

    def job(step):
        drawn.append(step)
        return [Prompt(ids=[step], text="", columns={})], None, {"drawn_at": float(engine.version)}

    try:
        for step in range(5):
            batch = rollout.produce(step, job, first_round=True)
            assert batch.prompts[0].ids == [step]
            # the bound is on the version the job started from; its tokens are no older than that
            assert step - batch.samples[0].versions[0] <= batch.metrics["async/staleness_max"] <= 2
            engine.version += 1  # the step's weight sync
        assert drawn == [0, 1, 2, 3, 4]  # drawn in order, never past the last step
        # step t was submitted at the start of step t - 2 (version t - 2) and generated no earlier
        assert all(v >= step - 2 for step, v in engine.calls)
        state = rollout.state_dict()
        assert state["ahead"] == []
    finally:
        rollout.close()


def test_async_rollout_refuses_a_batch_past_the_bound_and_restores_queued_batches():
    from rlkit.rollout.asynchronous import AsyncRollout

    engine = _Engine()
    rollout = AsyncRollout(Rollout(engine), k=1, total_steps=4, old_from_engine=True)

    def job(step):
        return [Prompt(ids=[step], text="", columns={})], None, {}

    try:
        rollout.produce(0, job, first_round=True)  # queues step 1 at version 0
        state = rollout.state_dict()
        assert [d["step"] for d in state["ahead"]] == [1]
        again = AsyncRollout(Rollout(engine), k=1, total_steps=4, old_from_engine=True)
        again.load_state_dict(state)
        engine.version = 1
        batch = again.produce(1, job, first_round=True)  # the restored batch, not a new generation
        assert batch.samples[0].versions == [0, 0]
        again.state_dict()  # waits for the queued job
        assert [c[0] for c in engine.calls] == [0, 1, 2]  # step 1 not generated again; step 2 queued
        again.close()
        stale = StepBatch([], [Sample([0], [1], [-1.0], "stop", "", 0, versions=[0])],
                          metrics={"async/job_version": 0.0})  # started at version 0, trained at step 2
        with pytest.raises(RuntimeError, match="generated 2 versions ago, over rollout.async_steps=1"):
            rollout._staleness(stale, step=2)
    finally:
        rollout.close()


def test_serve_command_has_what_the_engine_needs_and_user_flags_win():
    from rlkit.rollout.serve import vllm_command

    cmd = vllm_command("/m", host="127.0.0.1", port=8123, backend="rlkit_gloo", extra=["--dtype=bfloat16"],
                       cuda=False)
    joined = " ".join(cmd)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for part in ("--model /m", "--port 8123", "--logprobs-mode processed_logprobs", "--generation-config vllm",
                 '--weight-transfer-config {"backend": "rlkit_gloo"}', "--enforce-eager", "--no-enable-chunked-prefill"):
        assert part in joined, part
    assert "--dtype float32" not in joined and cmd[-1] == "--dtype=bfloat16"  # the user's dtype wins
    gpu = " ".join(vllm_command("/m", host="h", port=1, backend="nccl", extra=[], cuda=True))
    assert '"backend": "nccl"' in gpu and "--enforce-eager" not in gpu
