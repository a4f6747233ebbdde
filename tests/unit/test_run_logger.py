import json

from rlkit.logging import RunLogger


def _logger(tmp_path):
    return RunLogger(tmp_path, enabled=True, report_to=[], project="p", config={}, run_name="r")


def _steps(path):
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


def test_resume_keeps_one_row_per_step(tmp_path):
    log = _logger(tmp_path)
    for step in range(0, 5):
        log.log(step, {"reward/mean": step / 10})
    log.log_completions(3, [{"completion": "x"}])
    with open(log.metrics_path, "a") as f:
        f.write('{"step": 5, "reward/me')  # a write cut by SIGKILL
    # the checkpoint of step 3 is resumed: rows 4 and the torn 5 are dropped (they will be written again)
    _logger(tmp_path).start_at(3, {"reward/mean": 0.3})
    assert _steps(log.metrics_path) == [0, 1, 2, 3]
    assert _steps(log.completions_path) == [3]


def test_the_checkpoint_row_is_put_back_and_a_fresh_start_clears(tmp_path):
    log = _logger(tmp_path)
    for step in range(0, 3):
        log.log(step, {"reward/mean": step / 10})
    log.start_at(3, {"reward/mean": 0.3})  # killed after the checkpoint of step 3, before its row
    rows = [json.loads(x) for x in log.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["reward/mean"] == 0.3
    log.start_at(None)  # --resume auto without a checkpoint: a fresh run
    assert log.metrics_path.read_text() == ""
