"""A model-based reward's lifecycle in a real run (hf engine, tiny model): built once per process, `setup` with the
device, rank, world size and the memory left, its state saved in checkpoints and restored on resume, `close` at
the end."""

from helpers import ScoringModel
from test_engines_lora import _cfg

from rlkit.trainers.checkpoint import list_checkpoints, load_trainer_state


def test_reward_lifecycle_build_setup_state_close(tiny_model_dir, tmp_path):
    from rlkit.api import train

    for log in (ScoringModel.builds, ScoringModel.contexts, ScoringModel.closed):
        log.clear()
    over = {"rollout.engine": "hf", "train.steps": 1, "checkpoint.every": 1, "eval.after": False,
            "rewards": [{"name": "helpers:ScoringModel", "kwargs": {"scale": 2.0}}]}
    run = tmp_path / "run"
    train(_cfg(tiny_model_dir, run, **over))
    assert ScoringModel.builds == [2.0]  # the config check's instance is the one that scores
    (ctx,) = ScoringModel.contexts
    assert (str(ctx.device), ctx.rank, ctx.world_size) == ("cpu", 0, 1) and ctx.memory_left > 2**28
    assert ScoringModel.closed == [1]
    first = list_checkpoints(run)[-1]
    assert load_trainer_state(first)["rewards"] == [{"ScoringModel": {"batches": 1}}]

    train(_cfg(tiny_model_dir, run, **{**over, "train.steps": 2}), resume="auto")
    assert ScoringModel.builds == [2.0, 2.0] and len(ScoringModel.contexts) == 2
    assert ScoringModel.closed == [1, 2]  # the resumed instance started from the saved state (1 batch)
    assert load_trainer_state(list_checkpoints(run)[-1])["rewards"] == [{"ScoringModel": {"batches": 2}}]


def test_a_run_is_freed_as_soon_as_it_is_dropped(tiny_model_dir, tmp_path):
    """No reference cycle holds a run (its checkpointer's pieces refer to it weakly): a colocated vLLM engine it
    holds is torn down when the run is dropped, not at some later garbage collection, where the teardown of vLLM's
    process-wide groups would break an engine started since (seen: "pipeline model parallel group is not
    initialized" in the next engine of the same process)."""
    import gc
    import weakref

    from rlkit.api import setup

    run = setup(_cfg(tiny_model_dir, tmp_path / "run", **{"rollout.engine": "hf", "train.steps": 1}))
    assert run.checkpointer.pieces
    ref = weakref.ref(run)
    gc.disable()
    try:
        del run
        assert ref() is None
    finally:
        gc.enable()
