"""Every example's train.py runs one step on the tiny model through rlkit's Python API (train, then evaluate or
report as the script does); one of them under `accelerate launch`, one on 2 processes (torchrun: what accelerate
launches on GPUs; on CPU `accelerate launch` runs one process). The demo generates with vLLM as `make demo` does;
the others with the hf engine (the scripts' own code is what is under test here; vLLM rollouts and evaluation are
tested in test_grpo_vllm.py, test_eval_suite.py and the distributed tests), which saves ~20 s of vLLM start-up each."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/train.py"))
SERVER_ONLY = {"multinode"}  # needs a vLLM server: run in tests/integration/test_vllm_server.py


def _tiny(model) -> list[str]:
    return [f"model.name_or_path={model}", "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
            "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "rollout.kv_cache_gib=1", "eval.size=2",
            "logging.progress=false", "optim.micro_batch_size=4"]


def _run(cmd, cwd, **env):
    full = {**os.environ, "EVAL_LIMIT": "2", "OMP_NUM_THREADS": "1", **env,
            "PYTHONPATH": str(ROOT / "examples" / "custom_reward") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full, timeout=600)


def test_every_example_folder_has_a_script():
    folders = sorted(p.name for p in (ROOT / "examples").iterdir() if p.is_dir())
    assert folders == EXAMPLES


@pytest.mark.parametrize("name", [n for n in EXAMPLES if n not in SERVER_ONLY])
def test_example_script_runs_one_step(name, tiny_model_dir, tmp_path):
    script = ROOT / "examples" / name / "train.py"
    args = _tiny(tiny_model_dir) + ([f"output_dir={tmp_path / 'run'}"] if name == "accelerate" else [])
    # the demo keeps vLLM and its held-out budgets, scaled under the tiny cap of 8 tokens
    args += ["eval.budgets=[4]"] if name == "demo" else ["rollout.engine=hf"]
    if name == "gsm8k":  # the same script under `accelerate launch` (one process on CPU)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args]
    else:
        cmd = [sys.executable, str(script), *args]
    proc = _run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in tmp_path.rglob("metrics.jsonl")]
    assert len(runs) == 1, runs
    rows = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1]
    evals = list(runs[0].glob("evals/*.json"))
    if name in ("gsm8k", "custom_reward", "lora", "dler_curriculum"):  # these evaluate the checkpoint
        result = json.loads(evals[0].read_text())
        assert result["benchmarks"] and all(m["prompts"] >= 1 for m in result["benchmarks"].values())
    if name in ("lora", "dler_curriculum"):  # against the untrained model in the same call
        assert "vs_baseline" in result and "aes" in next(iter(result["vs_baseline"].values()))
    if name == "demo":
        assert sorted(p.name for p in (runs[0] / "report").iterdir()) == ["budgets.png", "curves.png", "lengths.png",
                                                                            "pareto.png"]  # budgets: eval.budgets
        assert "AES vs before" in proc.stdout


def test_example_on_two_processes(tiny_model_dir, tmp_path):
    script = ROOT / "examples" / "accelerate" / "train.py"
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(29600 + os.getpid() % 300), str(script), *_tiny(tiny_model_dir), f"output_dir={tmp_path / 'run'}",
                 "rollout.prompts_per_step=2", "rollout.engine=hf"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 1 steps on 2 process(es)" in proc.stdout
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("*/trainer_state.json")).read_text())
    assert state["world_size"] == 2
