"""Crash safety: runs killed with SIGKILL at seeded points (rollout, update, checkpoint writing, publishing,
logging) and resumed each time end bitwise equal to an uninterrupted run, with one metrics row per step."""

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPERS = Path(__file__).parent.parent / "integration"  # helpers.py: the test rewards
POINTS = ("rollout", "update", "checkpoint", "publish", "log")


def _train(model_dir, out, *extra, failpoint=None, cwd):
    env = {**os.environ, "PYTHONPATH": str(HELPERS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "WANDB_MODE": "offline"}
    env.pop("RLKIT_FAILPOINTS", None)
    if failpoint:
        env["RLKIT_FAILPOINTS"] = failpoint
    args = [f"--model.name_or_path={model_dir}", f"--output_dir={out}", "--rollout.prompts_per_step=2",
            "--rollout.max_new_tokens=16", "--rollout.kv_cache_gib=1", "--eval.size=2", "--train.steps=4",
            "--checkpoint.every=1", "--checkpoint.keep_last=2", "--logging.progress=false",
            "--rewards=[{name: 'helpers:digit_fraction'}]", *extra]
    return subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _final_weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / "step_000004" / "trainer" / "model.safetensors"))


def _metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, reference: Path) -> None:
    got, want = _final_weights(run), _final_weights(reference)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    assert _metric_steps(run) == [0, 1, 2, 3, 4]
    rows = {json.loads(x)["step"]: json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()}
    ref = {json.loads(x)["step"]: json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()}
    for step in range(1, 5):  # the same samples and rewards at every step
        assert rows[step]["reward/mean"] == ref[step]["reward/mean"], step
    assert "eval_after/accuracy" in rows[4] and "eval/accuracy" in rows[0]
    assert not list((run / "checkpoints").glob("*.tmp-*"))  # the final save cleared stray temporaries


def test_sigkill_at_seeded_points_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    reference = tmp_path / "reference"
    proc = _train(tiny_model_dir, reference, "--rollout.engine=hf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rng = random.Random(7)
    kills = [(rng.choice(POINTS), rng.randint(1, 2)) for _ in range(5)]
    run, killed = tmp_path / "killed", 0
    for point, nth in kills:
        proc = _train(tiny_model_dir, run, "--rollout.engine=hf", "--resume=auto", failpoint=f"{point}@{nth}",
                      cwd=tmp_path)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        killed += proc.returncode == -signal.SIGKILL
        # whatever the kill interrupted, every published checkpoint is complete and loadable
        for ck in (run / "checkpoints").glob("step_*"):
            if re.fullmatch(r"step_\d{6}", ck.name):
                assert (ck / "COMPLETE").exists() and json.loads((ck / "trainer_state.json").read_text())["step"] > 0
    assert killed >= 3, f"only {killed} of {kills} kills happened"
    proc = _train(tiny_model_dir, run, "--rollout.engine=hf", "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(run, reference)


def test_vllm_run_killed_while_publishing_a_checkpoint_resumes_exactly(tiny_model_dir, tmp_path):
    reference = tmp_path / "reference"
    proc = _train(tiny_model_dir, reference, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "killed"
    proc = _train(tiny_model_dir, run, failpoint="publish@3", cwd=tmp_path)  # step 3 published, 1 not yet rotated
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002", "step_000003"]
    assert _metric_steps(run) == [0, 1, 2]  # killed between the checkpoint of step 3 and its row
    proc = _train(tiny_model_dir, run, "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    _assert_same_run(run, reference)


@pytest.mark.parametrize("name, extra", [
    ("lora", ["--model.lora.enabled=true", "--model.lora.r=4", "--algorithm.loss_options.kl_coef=0.05"]),
    ("segments", ["--rollout.segments=2", "--rollout.max_new_tokens=24"]),
    ("predictive", ["--filter={name: predictive_sampling, kwargs: {metric: reward}}", "--shaping=[]"]),
])
def test_killed_and_resumed_runs_are_exact_with_lora_segments_and_oversampling(tiny_model_dir, tmp_path, name, extra):
    """The kill lands after step 2's row: step 3 and 4 are redone from the step-2 checkpoint (LoRA adapters with
    the adapters-off reference, segment pools carried across steps, the oversampler's history)."""
    reference = tmp_path / "reference"
    proc = _train(tiny_model_dir, reference, "--rollout.engine=hf", "--checkpoint.every=2", *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "killed"
    proc = _train(tiny_model_dir, run, "--rollout.engine=hf", "--checkpoint.every=2", *extra, failpoint="log@3",
                  cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL
    assert _metric_steps(run) == [0, 1, 2, 3]  # step 3's row, written after the step-2 checkpoint
    proc = _train(tiny_model_dir, run, "--rollout.engine=hf", "--checkpoint.every=2", "--resume=auto", *extra,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 2" in proc.stdout
    _assert_same_run(run, reference)
