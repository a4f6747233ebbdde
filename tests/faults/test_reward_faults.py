"""Faulty rewards through the real CLI (tiny random Qwen2, vLLM on CPU): a hanging reward stops the run
with one line naming the reward, step and sample (or is masked and counted with on_error none), and a
reward that returns a generator says so. Nothing hangs, nothing prints a traceback."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent.parent / "integration"  # helpers.py: the test rewards
HANGS = "helpers:sleeps_at_step_two"


def _train(tiny_model_dir, run: Path, rewards: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m rlkit.cli train`` on the tiny model, 3 steps, no evaluation; (process, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WANDB_API_KEY", None)
    args = [f"--model.name_or_path={tiny_model_dir}", f"--output_dir={run}", "--rollout.prompts_per_step=2",
            "--rollout.max_new_tokens=16", "--rollout.kv_cache_gib=1", "--eval.size=4",
            "--logging.progress=false", "--train.steps=3", "--eval.before=false", "--eval.after=false",
            f"--rewards={rewards}", *extra]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *args], capture_output=True, text=True,
                          env=env, cwd=run.parent, timeout=300)
    return proc, time.monotonic() - t0


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


def test_hanging_reward_stops_the_run_with_one_line_and_keeps_checkpoints(tiny_model_dir, tmp_path):
    run = tmp_path / "hang"
    proc, wall = _train(tiny_model_dir, run, f"[{{name: '{HANGS}', timeout: 2}}]", "--checkpoint.every=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert wall < 120, wall  # model + vLLM start, one step, 2 s + 2 s of watchdog; never the hour of sleep
    last = _last_line(proc.stderr)
    assert last.startswith("rlkit: error: reward 'sleeps_at_step_two' timed out after 2 s at step 2, sample 0 "
                           "(prompt: '"), last
    assert "Traceback" not in proc.stderr
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000001"]  # no step_000002, no stray temp dir
    assert (ckpts / "step_000001" / "COMPLETE").exists()


def test_hanging_reward_with_on_error_none_is_masked_and_counted(tiny_model_dir, tmp_path):
    run = tmp_path / "masked"
    proc, wall = _train(tiny_model_dir, run, f"[{{name: '{HANGS}', timeout: 2, on_error: none}}]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wall < 180, wall
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    errors = {r["step"]: r["reward/sleeps_at_step_two/errors"] for r in rows if "reward/mean" in r}
    assert errors == {1: 0, 2: 8, 3: 0}  # 2 prompts x 4 completions masked on step 2; the series is always there
    step2 = next(r for r in rows if r["step"] == 2)
    assert step2["reward/sleeps_at_step_two"] is None  # every value masked: no mean (NaN is written as null)
    warnings = [x for x in proc.stderr.splitlines() if "reward 'sleeps_at_step_two':" in x]
    assert len(warnings) == 1 and "8 of 8 samples failed at step 2 and are masked (on_error: none); the first, " \
                                  "sample 0 (prompt: '" in warnings[0], proc.stderr[-3000:]
