"""The bad-input corpus (cases.yaml) through the CLI: one line, exit status 2.

A case caught before any model loads runs ``rlkit.cli.main`` in this process (the CLI's own entry point, with the
case's working directory, environment and import path; stdout and stderr captured at the file descriptors, so a
line printed by any logger counts): starting a Python with torch for each of about eighty cases cost minutes of CI.
A case that needs the model (``needs_model``: it trains before it fails) runs the CLI in a subprocess as a user
would, since it loads engines and process-wide state."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text())


def _args(case, out: Path, model_args: list[str]) -> list[str]:
    args = [case["config"]] if "config" in case else []
    args += model_args
    return args + [f"--output_dir={out}", *case.get("args", [])]  # a case's own output_dir comes last and wins


def _check(case, status: int, stderr: str, out: Path) -> None:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert status == 2, f"exit {status}; stderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert lines and lines[-1].startswith("rlkit: error: "), stderr[-2000:]
    assert re.search(case["expect"], lines[-1]), f"{lines[-1]!r} does not match {case['expect']!r}"
    if not case.get("needs_model"):  # caught before any model loads: nothing written, nothing else printed
        assert len(lines) == 1, stderr
        assert not out.exists()
    if case.get("keep_output_dir"):
        assert sorted(p.name for p in (HERE / "rundirs" / "nonempty").iterdir()) == ["config.json"]


PRELOAD = [c for c in CASES if not c.get("needs_model")]
TRAINING = [c for c in CASES if c.get("needs_model")]


@pytest.mark.parametrize("case", PRELOAD, ids=[c["name"] for c in PRELOAD])
def test_bad_input_fails_in_one_line_before_any_model_loads(case, tmp_path, monkeypatch, capfd):
    from rlkit.cli import main

    out = tmp_path / "run"
    monkeypatch.chdir(HERE)
    monkeypatch.syspath_prepend(str(HERE))  # the cases' reward modules (bad_rewards.py, ...)
    for key, value in case.get("env", {}).items():  # a launcher's environment (accelerate config files export theirs)
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    try:
        status = main(["train", *_args(case, out, [])])
    except SystemExit as e:  # argparse's own exit
        status = e.code
    _check(case, status, capfd.readouterr().err, out)


@pytest.mark.parametrize("case", TRAINING, ids=[c["name"] for c in TRAINING])
def test_bad_input_found_while_training_fails_in_one_line(case, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    model_args = [f"--model.name_or_path={tiny_model_dir}", "--rollout.engine=hf", "--rollout.prompts_per_step=2",
                  "--rollout.max_new_tokens=8", "--eval.size=2", "--eval.before=false",
                  "--train.steps=2", "--logging.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **case.get("env", {})}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *_args(case, out, model_args)],
                          capture_output=True, text=True, cwd=HERE, env=env, timeout=300)
    _check(case, proc.returncode, proc.stderr, out)


def test_the_corpus_is_split_between_the_two_runners():
    assert len(PRELOAD) + len(TRAINING) == len(CASES) and len(TRAINING) >= 4 and len(PRELOAD) >= 70
