"""The bad-input corpus (cases.yaml) through the CLI, each in a subprocess: one line, exit status 2."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_fails_in_one_line(case, tmp_path, request):
    out = tmp_path / "run"
    args = [case["config"]] if "config" in case else []
    if case.get("needs_model"):
        model = request.getfixturevalue("tiny_model_dir")
        args += [f"--model.name_or_path={model}", "--rollout.engine=hf", "--rollout.prompts_per_step=2",
                 "--rollout.max_new_tokens=8", "--data.eval_size=2", "--train.eval_before=false",
                 "--train.steps=2", "--logging.progress=false"]
    args += [f"--output_dir={out}", *case.get("args", [])]  # a case's own output_dir comes last and wins
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **case.get("env", {})}  # a launcher's environment (accelerate config files export theirs)
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *args], capture_output=True, text=True,
                          cwd=HERE, env=env, timeout=300)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("rlkit: error: "), proc.stderr[-2000:]
    assert re.search(case["expect"], lines[-1]), f"{lines[-1]!r} does not match {case['expect']!r}"
    if not case.get("needs_model"):  # caught before any model loads: nothing written, nothing else printed
        assert len(lines) == 1, proc.stderr
        assert not out.exists()
    if case.get("keep_output_dir"):
        assert sorted(p.name for p in (HERE / "rundirs" / "nonempty").iterdir()) == ["config.json"]
