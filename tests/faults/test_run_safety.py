"""Run safety (issue 23): one live run per directory, --overwrite deletes only rlkit's own files, non-finite never
trains silently, resume checks the model it continues, and interruptions and a full disk end in one line with the
last checkpoint intact."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPERS = Path(__file__).parent.parent / "integration"  # helpers.py: the test rewards and losses


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(HELPERS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "WANDB_MODE": "offline", **extra}
    env.pop("RLKIT_FAILPOINTS", None) if "RLKIT_FAILPOINTS" not in extra else None
    return env


def _args(model_dir, out, *extra):
    return [sys.executable, "-m", "rlkit.cli", "train", f"--model.name_or_path={model_dir}", f"--output_dir={out}",
            "--rollout.engine=hf", "--rollout.prompts_per_step=2", "--rollout.max_new_tokens=8", "--eval.size=2",
            "--eval.before=false", "--eval.after=false", "--checkpoint.every=1",
            "--logging.progress=false", "--rewards=[{name: 'helpers:digit_fraction'}]", *extra]


def _rlkit(model_dir, out, *extra, cwd, **env):
    return subprocess.run(_args(model_dir, out, *extra), capture_output=True, text=True, env=_env(**env), cwd=cwd,
                          timeout=600)


def _one_line(proc, status: int = 2) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("rlkit: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_live_run_directory_is_refused_to_every_other_run(tiny_model_dir, tmp_path):
    """Run A holds output_dir (blocked in its first reward); B into the same directory is refused in one line
    naming A, whether fresh, --resume auto or --overwrite; A finishes untouched and releases the lock."""
    run, release = tmp_path / "run", tmp_path / "release"
    a = subprocess.Popen(_args(tiny_model_dir, run, "--train.steps=2",
                               "--rewards=[{name: 'helpers:waits_for_release'}]"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env=_env(RLKIT_TEST_RELEASE=str(release)))
    try:
        deadline = time.monotonic() + 120
        while not (run / "run.json").exists():  # A has started for real (its lock was taken before)
            assert a.poll() is None and time.monotonic() < deadline, a.stderr.read()[-3000:] if a.poll() else "slow"
            time.sleep(0.2)
        holder = json.loads((run / ".rlkit.lock").read_text())
        assert holder["pid"] == a.pid
        for extra in ((), ("--resume=auto",), ("--overwrite",)):
            line = _one_line(_rlkit(tiny_model_dir, run, "--train.steps=1", *extra, cwd=tmp_path))
            assert f"output_dir {run} is in use by another rlkit run (pid {a.pid} on host" in line, line
        release.touch()
        out, err = a.communicate(timeout=300)
    finally:
        release.touch()
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, err[-3000:]
    assert [r["step"] for r in _rows(run)] == [1, 2]
    assert len({json.loads((run / "run.json").read_text())["run_id"]}) == 1
    assert not (run / ".rlkit.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_note(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".rlkit.lock").write_text(json.dumps({"host": "gone-host", "pid": 999999, "started": "earlier"}))
    proc = _rlkit(tiny_model_dir, run, "--train.steps=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "took over the lock of a run that is gone (pid 999999 on host gone-host" in proc.stdout


def test_overwrite_deletes_only_what_rlkit_wrote(tiny_model_dir, tmp_path):
    """Foreign files, or the run's own model inside output_dir: refused before anything is deleted."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "src").mkdir()
    (run / "important.txt").write_text("keep me")
    (run / "src" / "main.py").write_text("print('mine')")
    before = _listing(run)
    line = _one_line(_rlkit(tiny_model_dir, run, "--train.steps=1", "--overwrite", cwd=tmp_path))
    assert f"--overwrite: {run} holds entries rlkit did not write (important.txt, src)" in line, line
    assert _listing(run) == before

    proc = _rlkit(tiny_model_dir, tmp_path / "done", "--train.steps=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    policy = tmp_path / "done" / "checkpoints" / "step_000001" / "policy"
    before = _listing(tmp_path / "done")
    line = _one_line(_rlkit(policy, tmp_path / "done", "--train.steps=1", "--overwrite", cwd=tmp_path))
    assert f"--overwrite: model.name_or_path {policy} lies inside output_dir {tmp_path / 'done'}" in line, line
    assert _listing(tmp_path / "done") == before
    proc = _rlkit(tiny_model_dir, tmp_path / "done", "--train.steps=1", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # rlkit's own files alone: replaced


def test_a_rejected_run_leaves_no_directory(tiny_model_dir, tmp_path):
    """A mistake found after the run directory was locked (here a resume path that does not exist) leaves nothing
    behind: not the directory the lock created, not the lock."""
    run = tmp_path / "never"
    line = _one_line(_rlkit(tiny_model_dir, run, f"--resume={tmp_path / 'nope'}", cwd=tmp_path))
    assert "no such directory" in line
    assert not run.exists()


def test_a_non_finite_loss_stops_the_run_or_is_skipped(tiny_model_dir, tmp_path):
    """A NaN loss stops the run at step 1 before anything is applied or saved; with optim.skip_nonfinite the steps
    are skipped and counted, and the weights stay the initial ones."""
    line = _one_line(_rlkit(tiny_model_dir, tmp_path / "stop", "--train.steps=2", "--algorithm.loss=helpers:nan_loss",
                            cwd=tmp_path))
    assert "step 1: the loss is nan (minibatch 1, micro-batch 1); the run stopped before applying it" in line
    assert not (tmp_path / "stop" / "checkpoints").exists()

    run = tmp_path / "skip"
    proc = _rlkit(tiny_model_dir, run, "--train.steps=2", "--algorithm.loss=helpers:nan_loss",
                  "--optim.skip_nonfinite=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in _rows(run) if "reward/mean" in r]
    assert [r["optim/skipped_updates"] for r in rows] == [1.0, 1.0]
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    final = load_file(str(run / "checkpoints" / "step_000002" / "policy" / "model.safetensors"))
    assert all(torch.equal(init[k], final[k]) for k in init)


def test_resume_refuses_a_swapped_model(tiny_model_dir, tmp_path):
    """The model folder replaced by another model of the same architecture: refused before any model loads."""
    from rlkit.models import build_tiny_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    run = tmp_path / "run"
    proc = _rlkit(model, run, "--train.steps=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = build_tiny_model(tmp_path / "other", seed=1, corpus=["the same tokenizer corpus"] * 20)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # same shapes, other weights
    before = _listing(run)
    line = _one_line(_rlkit(model, run, "--train.steps=2", "--resume=auto", cwd=tmp_path))
    assert f"model.name_or_path {model} is not the model this run started from (its weights differ" in line, line
    assert "Loading weights" not in line and _listing(run) == before


@pytest.mark.parametrize("signal_name,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_says_where_it_stopped_in_one_line(tiny_model_dir, tmp_path, signal_name, status):
    run = tmp_path / "run"
    proc = _rlkit(tiny_model_dir, run, "--train.steps=3", cwd=tmp_path, RLKIT_FAILPOINTS=f"rollout@2:{signal_name}")
    line = _one_line(proc, status)
    assert line == (f"rlkit: interrupted by {signal_name} at step 2 (rollout); the last checkpoint is "
                    f"{run / 'checkpoints' / 'step_000001'}, intact: run the same command with --resume auto to "
                    "continue"), line
    assert not (run / ".rlkit.lock").exists()
    proc = _rlkit(tiny_model_dir, run, "--train.steps=3", "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _rows(run) if "reward/mean" in r] == [1, 2, 3]


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path):
    """ENOSPC raised where the checkpoint writes its files (a simulated full disk: the test cannot mount a small
    filesystem everywhere it runs): one line naming the file and the step, no half-written checkpoint left."""
    run = tmp_path / "run"
    proc = _rlkit(tiny_model_dir, run, "--train.steps=3", cwd=tmp_path, RLKIT_FAILPOINTS="checkpoint@2:ENOSPC")
    line = _one_line(proc)
    assert line.startswith("rlkit: error: no space left on the device writing ") and "at step 2 (checkpoint)" in line
    assert f"the last checkpoint is {run / 'checkpoints' / 'step_000001'}, intact" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]


@pytest.mark.parametrize("flag,expect", [("--temperature=-1", "--temperature must be a finite number >= 0"),
                                         ("--top-p=2", r"--top-p must be in (0, 1], got 2.0")])
def test_eval_sampling_values_are_checked_before_any_model_loads(flag, expect, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "eval", "--benchmarks=mawps_addsub", flag,
                           f"--output={tmp_path / 'out.json'}"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert expect in _one_line(proc)
    assert not (tmp_path / "out.json").exists()


def test_three_sigints_during_the_final_evaluation_before_any_checkpoint(tiny_model_dir, tmp_path):
    """Three Ctrl-C 50 ms apart in the held-out evaluation after training, with no checkpoint written yet: one line
    naming that phase and saying how to start again, nothing more (no "Exception ignored"), the lock released; the
    command it names then runs the job to its end."""
    run = tmp_path / "run"
    extra = ("--train.steps=1", "--eval.after=true", "--checkpoint.every=0", "--checkpoint.save_final=false")
    proc = _rlkit(tiny_model_dir, run, *extra, cwd=tmp_path, RLKIT_FAILPOINTS="eval@1:SIGINTx3")
    line = _one_line(proc, 130)
    assert line == (f"rlkit: interrupted by SIGINT at step 1 (the held-out evaluation after training); no checkpoint "
                    f"of {run} was written yet: run the same command with --resume auto (it starts fresh, replacing "
                    "what this attempt logged) or --overwrite to start again"), line
    assert "Exception ignored" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-3000:]
    assert not (run / ".rlkit.lock").exists()
    again = _rlkit(tiny_model_dir, run, *extra, cwd=tmp_path)
    assert again.returncode == 2 and "stopped before its first checkpoint" in again.stderr
    proc = _rlkit(tiny_model_dir, run, *extra, "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _rows(run) if "reward/mean" in r] == [1]


def test_under_a_launcher_the_one_line_is_the_root_cause_of_its_report(tmp_path):
    """torchrun (what `accelerate launch` runs) prints its failure report after the workers exit; the report's root
    cause is the one line (the elastic error file), not "To enable traceback see ..."."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rlkit.cli",
                           "train", "--optim.lr=1e300", f"--output_dir={tmp_path / 'run'}"], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    line = ("rlkit: error: overrides: 'optim.lr' is 1e+300, outside float32's range (magnitudes from 1.18e-38 to "
            "3.4e+38, or 0), the precision it is used in")
    tail = [x.strip() for x in proc.stderr.splitlines() if x.strip()][-2:]
    assert tail == [f"traceback : {line}", "=" * 60], tail
    assert "To enable traceback" not in proc.stderr


def test_a_reward_that_never_closes_does_not_keep_the_finished_run_alive(tiny_model_dir, tmp_path):
    """close() runs under the term's timeout: the run ends, says which reward did not close and releases its lock;
    a setup() that raises is one line naming the reward and the hook, before the run directory is written."""
    run = tmp_path / "run"
    t0 = time.monotonic()
    proc = _rlkit(tiny_model_dir, run, "--train.steps=1", "--checkpoint.every=0",
                  "--rewards=[{name: 'helpers:HangsOnClose', timeout: 2}]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 300
    assert "reward 'HangsOnClose': close() did not return within 2 s; the run ends without waiting for it" in \
        proc.stderr, proc.stderr[-2000:]
    assert not (run / ".rlkit.lock").exists()
    line = _one_line(_rlkit(tiny_model_dir, tmp_path / "other", "--rewards=[{name: 'helpers:FailsInSetup'}]",
                            cwd=tmp_path))
    assert line == ("rlkit: error: reward 'FailsInSetup': setup() raised RuntimeError: the scoring model's weights "
                    "are missing"), line
    assert not (tmp_path / "other").exists()
