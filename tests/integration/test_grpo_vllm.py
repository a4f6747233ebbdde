"""Tiny random Qwen2 through the real pipeline: vLLM CPU rollouts, rewards, GRPO updates, sync, checkpoints."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit.config import load_config
from rlkit.rewards import RewardError
from rlkit.rollout.base import SamplingSpec

HERE = Path(__file__).parent
TOL_LOGPROB = 1e-4  # fp32 on both sides; measured ~5e-7


def _cfg(model_dir, out, **over):
    base = {
        "model.name_or_path": str(model_dir), "output_dir": str(out), "train.steps": 2,
        "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 24,
        "rollout.kv_cache_gib": 1, "eval.size": 4, "optim.lr": 1e-3, "optim.micro_batch_size": 3,
        "rewards": [{"name": "helpers:digit_fraction"}], "logging.progress": False,
    }
    base.update(over)
    return load_config(overrides=base)


def _prompt_ids(tok, q="Tom has 3 apples and buys 4 more. How many apples?"):
    text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_vllm_behaviour_logprobs_match_trainer(engine, tiny_model_dir):
    from rlkit.models import load_policy, load_tokenizer
    from rlkit.parallel.batch import collate
    from rlkit.records import to_completion_space
    from rlkit.trainers.batch import LogprobPolicy

    tok = load_tokenizer(str(tiny_model_dir))
    samples = engine.generate([_prompt_ids(tok), _prompt_ids(tok, "What is 7 times 6?")],
                              SamplingSpec(n=3, temperature=0.7, max_new_tokens=20))
    assert len(samples) == 6 and all(len(s.logprobs) == s.num_tokens for s in samples)
    policy = LogprobPolicy(load_policy(str(tiny_model_dir), torch.float32))
    mb = collate(samples, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = policy(mb, temperature=0.7)
    ref = to_completion_space([s.logprobs for s in samples], lp.shape[1])
    err = ((lp - ref).abs() * mb.completion_mask).max().item()
    assert err < TOL_LOGPROB, err


def test_weight_sync_changes_the_next_generation(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    ids = _prompt_ids(tok)
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=16, logprobs=False)
    before = engine.generate([ids], greedy)[0].completion_ids
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    for seed in (1, 2):  # two successive syncs
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        version = engine.version
        engine.update_weights(model.state_dict().items())
        assert engine.version == version + 1
        after = engine.generate([ids], greedy)[0].completion_ids
        hf = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        assert after != before
        assert after == hf[:len(after)]  # the engine now generates exactly what the updated model generates
        before = after
    engine.update_weights(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).state_dict().items())


def test_two_grpo_steps_change_every_trainable_parameter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from rlkit.api import train

    result = train(_cfg(tiny_model_dir, tmp_path / "run"))
    assert result.steps_done == 2
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    final = load_file(str(tmp_path / "run" / "checkpoints" / "step_000002" / "policy" / "model.safetensors"))
    assert init.keys() == final.keys()
    unchanged = [k for k in init if torch.equal(init[k], final[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["loss/logprob_mismatch"] < TOL_LOGPROB  # vLLM vs trainer logprobs before the update
        assert m["policy_version"] == m["step"]
        for key in ("reward/digit_fraction", "completion/p90_tokens", "completion/truncation_rate", "loss/clip_frac",
                    "loss/entropy", "optim/grad_norm", "optim/lr", "throughput/rollout_tokens_per_s",
                    "throughput/train_tokens_per_s", "time/rollout", "time/train", "time/weight_sync"):
            assert key in m, key
        assert m["optim/grad_norm"] > 0


def test_mu_minibatches_kl_and_dual_clip_run(tiny_model_dir, tmp_path):
    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "algorithm.mu": 2, "algorithm.minibatches": 2, "algorithm.loss_options": {"kl_coef": 0.1, "dual_clip": 3.0,
                                                                            "epsilon_high": 0.28}, "algorithm.aggregation": "seq-mean-token-sum-norm",
        "filter": {"name": "dynamic_sampling", "kwargs": {"metric": "reward"}},
        "algorithm.advantage": "batch_norm", "train.steps": 1, "eval.before": False})
    m = train(cfg).last_metrics
    assert m["sampling/rounds"] >= 1 and m["sampling/padded_groups"] >= 0
    assert m["loss/kl"] > 0  # the policy moved away from the reference within the step
    assert m["loss/ratio"] != 1.0


def test_mask_truncated_drops_truncated_completions(tiny_model_dir, tmp_path):
    from rlkit.api import train

    # a random model never emits EOS within 24 tokens: every completion is truncated, nothing is trained
    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{"token_masks": ["mask_truncated"], "train.steps": 1,
                                                   "eval.before": False, "eval.after": False})
    m = train(cfg).last_metrics
    assert m["completion/truncation_rate"] == 1.0
    assert m["optim/grad_norm"] == 0.0
    assert m["mask/mask_truncated/masked_frac"] == 1.0  # every token left the loss


def test_reward_error_stops_the_step_and_keeps_saved_checkpoints(tiny_model_dir, tmp_path):
    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{"rewards": [{"name": "helpers:fails_at_step_two"}],
                                                   "checkpoint.every": 1, "eval.before": False})
    with pytest.raises(RewardError, match=r"reward 'fails_at_step_two' raised ValueError: reward backend unavailable at step 2, sample 0 \(prompt:"):
        train(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_000001"]
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "COMPLETE").exists()


def _rlkit(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cli_train_end_to_end_and_resume(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "cli-run"
    common = [f"--model.name_or_path={tiny_model_dir}", f"--output_dir={run}", "--rollout.prompts_per_step=2",
              "--rollout.max_new_tokens=16", "--rollout.kv_cache_gib=1", "--eval.size=4",
              "--rewards=[{name: 'helpers:digit_fraction'}, {name: math_correct, weight: 0.5}]",
              "--shaping=[{name: grpo_lambda, kwargs: {lam: 0.5}}, kimi]",
              "--checkpoint.every=1", "--checkpoint.keep_last=2", "--logging.progress=false"]
    proc = _rlkit("train", *common, "--train.steps=2", "--logging.report_to=[wandb]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline_runs = list((run / "wandb").glob("offline-run-*"))  # no API key: wandb runs offline
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert "Held-out evaluation on 4 prompts" in proc.stdout and "| accuracy" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["rollout"]["max_new_tokens"] == 16 and config["rewards"][1]["weight"] == 0.5
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and "eval/accuracy" in lines[0]
    assert [x["step"] for x in lines if "reward/mean" in x] == [1, 2]
    assert {"reward/digit_fraction", "reward/math_correct", "accuracy", "reward/shaped_mean",
            "shaping/kimi/bonus_mean"} <= set(lines[1])
    assert lines[1]["shaping/grpo_lambda/switched_fraction"] == 0.5  # 1 of 2 groups
    assert (run / "completions.jsonl").exists() and (run / "eval_summary.json").exists()
    ck = run / "checkpoints" / "step_000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert {"policy", "trainer", "trainer_state.json", "COMPLETE"} <= {p.name for p in ck.iterdir()}
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["policy_version"] == 2 and state["sampler"]["position"] == 4
    AutoModelForCausalLM.from_pretrained(ck / "policy")  # a normal HF checkpoint

    # resume: continue to step 3 from the latest checkpoint; keep_last=2 rotates step_000001 away
    proc = _rlkit("train", *common, "--train.steps=3", "--resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {ck} at step 2" in proc.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "reward/mean" in x] == [1, 2, 3]
    assert [x["policy_version"] for x in lines if "reward/mean" in x] == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    final = json.loads((run / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert final["sampler"]["position"] == 6
    assert final["stages"]["shaping[0].grpo_lambda"] == {"switched_total": 3, "groups_total": 6}  # survived the restart


def test_cli_rejects_unknown_reward_before_loading_anything(tmp_path):
    proc = _rlkit("train", "--rewards=[{name: acuracy}]", f"--output_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert re.search(r"unknown reward 'acuracy'; registered rewards: boxed_format, .*math_correct, .*truncation",
                     proc.stderr)
    assert not (tmp_path / "r").exists()


def test_dynamic_sampling_keeps_only_groups_with_signal(tiny_model_dir, tmp_path):
    from rlkit.api import setup
    from rlkit.trainers.collect import collect

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:even_answers_only"}], "rollout.prompts_per_step": 3,
        "filter": {"name": "dynamic_sampling", "kwargs": {"metric": "reward", "max_rounds": 4}}})
    run = setup(cfg)
    batch = collect(run, step=0)
    local, samples, metrics = batch.prompts, batch.samples, batch.metrics
    assert len(local) == 3 and len(samples) == 3 * 4 and batch.rewards.numel() == 12
    assert [s.group_id for s in samples] == [g for g in range(3) for _ in range(4)]
    for g, prompt in enumerate(local):
        assert float(prompt.columns["answer"]) % 2 == 0  # odd-answer groups (zero variance) were dropped
        r = batch.rewards[g * 4:(g + 1) * 4]
        assert float(r.max() - r.min()) > 0
    assert 1 <= metrics["sampling/rounds"] <= 4 and metrics["sampling/informative_fraction"] < 1


def test_drpo_trains_on_whole_groups(tiny_model_dir, tmp_path):
    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:parity_verifier", "correctness": True}], "algorithm.loss": "drpo",
        "algorithm.loss_options": {"beta": 10.0, "delta": 0.0}, "algorithm.minibatches": 2,
        "optim.micro_batch_size": 3, "rollout.prompts_per_step": 4, "train.steps": 1, "eval.before": False,
        "eval.after": False})
    m = train(cfg).last_metrics
    assert m["optim/grad_norm"] > 0
    assert m["loss/kl_k1"] != 0  # the second minibatch is scored against the recomputed old policy


def test_curriculum_budget_reaches_prompts_and_rewards(tiny_model_dir, tmp_path):
    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:mentions_budget"}, {"name": "budget_triangular"}, {"name": "helpers:digit_fraction"}],
        "prompt_transforms": [{"name": "budget_curriculum",
                               "kwargs": {"schedule": "exponential", "initial": 16, "gamma": 0.5, "every": 1}}],
        "data.max_prompt_tokens": 400, "eval.before": False, "eval.after": False})
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["transforms/budget_curriculum/current"] for m in lines] == [16, 8]
    assert [m["reward/mentions_budget"] for m in lines] == [1.0, 1.0]
    # all completions are 24 tokens: triangular reward 0.5 at budget 16 (24 in (16, 32]), 0 at budget 8 (24 > 16)
    assert [m["reward/budget_triangular"] for m in lines] == [pytest.approx(0.5), 0.0]


def test_dot_truncates_outliers_and_rescores_them(tiny_model_dir, tmp_path):
    import dataclasses

    from rlkit.api import setup
    from rlkit.trainers.collect import produce

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:always_correct", "correctness": True}, {"name": "helpers:length_over_100"}],
        "sample_transforms": [{"name": "dot_truncation", "kwargs": {"alpha": 1.0, "margin": 4}}]})
    run = setup(cfg)
    real = run.engine.generate

    def long_tail(prompts, spec):  # real vLLM samples, cut to lengths 2, 2, 2, 24 in every group
        out = real(prompts, spec)
        return [s if k % 4 == 3 else dataclasses.replace(s, completion_ids=s.completion_ids[:2], logprobs=s.logprobs[:2],
                                                         finish_reason="stop") for k, s in enumerate(out)]

    run.engine.generate = long_tail
    batch = produce(run, 0, 2, 0)
    samples = batch.samples
    # mean 7.5, sample std 11 -> T = 18; 24 - 18 = 6 >= 4: the long sample of each group is cut to 18
    assert [s.num_tokens for s in samples] == [2, 2, 2, 18] * 2
    assert [s.finish_reason for s in samples][3] == "length"
    assert batch.terms["length_over_100"].tolist() == pytest.approx([0.02, 0.02, 0.02, 0.18] * 2)  # re-scored
    assert batch.rewards.tolist() == pytest.approx([1.02, 1.02, 1.02, 1.18] * 2)
    assert batch.metrics["transforms/dot_truncation/truncated_fraction"] == 0.25


def test_laser_d_monitor_sets_targets_during_training(tiny_model_dir, tmp_path):
    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:parity_verifier", "correctness": True}, {"name": "helpers:digit_fraction"}],
        "shaping": [{"name": "laser_d", "kwargs": {"monitor_every": 1, "monitor_size": 4, "monitor_samples": 4,
                                                   "lower": 8, "upper": 24, "interval": 8}}],
        "eval.before": False, "eval.after": False})
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        assert m["time/monitor"] > 0
        assert {m[f"shaping/laser_d/target_{b}"] for b in ("easy", "medium", "hard")} <= {-1, 8, 16, 24}
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert set(state["stages"]["shaping[0].laser_d"]["targets"]) == {"easy", "medium", "hard"}


def test_predictive_oversampling_generates_one_larger_round(tiny_model_dir, tmp_path):
    from rlkit.api import setup
    from rlkit.trainers.collect import collect

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:even_answers_only"}], "rollout.prompts_per_step": 4,
        "filter": {"name": "predictive_sampling", "kwargs": {"metric": "reward"}}})
    run = setup(cfg)
    batch = collect(run, step=0)
    m = batch.metrics
    assert m["sampling/rounds"] == 1 and m["sampling/prompts_generated"] == 6  # floor(4 * 1.5)
    assert len(batch.prompts) == 4 and len(run.stages.filter.history) == 1
    assert run.stages.filter.history[0] == m["sampling/informative_fraction"]


def test_palu_keeps_a_budget_per_question_across_steps(tiny_model_dir, tmp_path):
    import re

    from rlkit.api import train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{
        "rewards": [{"name": "helpers:parity_verifier", "correctness": True}, {"name": "helpers:digit_fraction"}],
        "shaping": [{"name": "palu", "kwargs": {"max_tokens": 24, "C": 0.25}}],
        "eval.before": False, "eval.after": False})
    train(cfg)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    budgets = state["stages"]["shaping[0].palu"]["budgets"]
    assert len(budgets) == 4  # 2 steps x 2 prompts, keyed by data row
    assert all(re.fullmatch(r"singleop\.jsonl:\d+", k) for k in budgets) and all(16 <= v <= 24 for v in budgets.values())
