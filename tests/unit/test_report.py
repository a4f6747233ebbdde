"""`rlkit report` plots and the wandb panels (offline mode: what was logged is read back from the run files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _fake_run(path: Path, steps: int, start_tokens: float) -> Path:
    """A run directory as `rlkit train` leaves it (metrics, lengths, held-out summary, one eval result)."""
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "eval/accuracy": 0.1}) + "\n")
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "reward/mean": 0.1 * s, "accuracy": 0.05 * s,
                                "completion/mean_tokens": start_tokens - 5 * s,
                                "completion/truncation_rate": 0.5 / s}) + "\n")
    with open(path / "lengths.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "lengths": [int(start_tokens) - 5 * s + d for d in range(-8, 9)]}) + "\n")
    (path / "eval_summary.json").write_text(json.dumps({
        "before": {"accuracy": 0.1, "mean_tokens": start_tokens}, "after": {"accuracy": 0.2, "mean_tokens": 40.0}}))
    (path / "evals").mkdir()
    (path / "evals" / f"step_{steps:06d}.json").write_text(json.dumps({"benchmarks": {
        "svamp": {"avg@k": 0.3, "avg@k_ci_low": 0.25, "avg@k_ci_high": 0.36, "mean_tokens": 35.0},
        "gsm8k": {"avg@k": 0.05, "mean_tokens": 80.0}}}))
    (path / "evals" / "step_000000.json").write_text(json.dumps({"benchmarks": {
        "svamp": {"avg@k": 0.2, "avg@k_ci_low": 0.15, "avg@k_ci_high": 0.26, "mean_tokens": 60.0}}}))
    return path


def test_report_writes_three_plots_for_several_runs(tmp_path):
    from rlkit.plots import load_run, report

    a = _fake_run(tmp_path / "runs" / "grpo", 10, 90.0)
    b = _fake_run(tmp_path / "runs" / "dler", 10, 70.0)
    loaded = load_run(a)
    assert [p[0] for p in loaded["points"]] == ["held-out before", "held-out after", "step_000000 svamp",
                                                 "step_000010 svamp", "step_000010 gsm8k"]
    assert loaded["points"][1][1:] == (0.2, 40.0, None)
    assert loaded["points"][3][1:] == (0.3, 35.0, (0.25, 0.36))  # with its interval: the error bar
    assert loaded["points"][4][3] is None
    assert [p[0] for p in load_run(a, evals_only=True)["points"]] == ["step_000000 svamp", "step_000010 svamp",
                                                                       "step_000010 gsm8k"]
    assert len(loaded["rows"]) == 10 and len(loaded["lengths"]) == 10
    written = report([str(a), str(b)])
    assert [p.name for p in written] == ["curves.png", "lengths.png", "pareto.png"]
    for p in written:
        assert p.parent == tmp_path / "runs" / "report"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_report_cli_one_run_and_a_bad_directory(tmp_path):
    run = _fake_run(tmp_path / "run", 4, 60.0)
    env = {**os.environ, "MPLBACKEND": ""}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "report", str(run)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (run / "report").iterdir()) == ["curves.png", "lengths.png", "pareto.png"]
    full = (run / "report" / "pareto.png").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "report", str(run), "--evals-only", "--out",
                           str(tmp_path / "evals-only")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "evals-only" / "pareto.png").read_bytes() != full  # two held-out points fewer
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and f"{tmp_path}: not an rlkit run directory (no metrics.jsonl)" in proc.stderr


def test_wandb_offline_gets_step_axis_histograms_and_tables(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from rlkit.logging import RunLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = RunLogger(tmp_path, enabled=True, report_to=["wandb"], project="rlkit-test", config={"a": 1},
                       run_name="t", run_id="rlkittest1")
    logger.log(1, {"reward/mean": 0.5, "loss/ratio": 1.0})
    logger.log_lengths(1, [3, 4, 5, 9, 30])
    logger.log_completions(1, [{"prompt": "p", "completion": "c", "reward": 1.0}])
    logger.log_table("eval/table", ["metric", "before", "after"], [["accuracy", "1.0%", "2.0%"]], step=1)
    logger.finish()
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    raw = next(run.glob("run-*.wandb")).read_bytes()
    for key in (b"train/step", b"reward/mean", b"completion/lengths", b"histogram"):
        assert key in raw, key  # the step axis (define_metric), a metric, the length histogram
    tables = {p.parent.name + "/" + p.name.split("_")[0] for p in (run / "files" / "media" / "table").rglob("*.json")}
    assert tables == {"completions/samples", "eval/table"}
    assert json.loads((tmp_path / "lengths.jsonl").read_text()) == {"step": 1, "lengths": [3, 4, 5, 9, 30]}
