"""Rollout hooks on real models (issue 34 item 3): the logprobs the trainer takes for the tokens the policy generated
around injected ones are the engine's own (the importance ratio stays right), and JET and HBPO train from their
recipes on the embedded SmolLM2."""

import json

import torch

from rlkit.config import load_config
from rlkit.records import Prompt
from rlkit.rollout.base import SamplingSpec


def test_generated_tokens_around_injected_ones_keep_the_policys_logprobs(tiny_model_dir):
    from rlkit.models import load_policy, load_tokenizer
    from rlkit.parallel.batch import collate
    from rlkit.records import to_completion_space
    from rlkit.rollout.hf_engine import HFEngine
    from rlkit.rollout.hooks import HBPOBudgets, HookedRollout, JETTruncation
    from rlkit.trainers.batch import LogprobPolicy
    from rlkit.trainers.update import prepare_tokens

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_policy(str(tiny_model_dir), torch.float32)
    engine = HFEngine(model, tok)
    prompts = [Prompt([5, 6, 7, 8], "a", {}), Prompt([9, 10], "b", {})]
    spec = SamplingSpec(n=4, temperature=0.9, max_new_tokens=20, seed=3)
    for hook in (JETTruncation(ratios=(0.3, 0.6, 0.9), phrase=" so the answer is", answer_tokens=6),
                 HBPOBudgets(budgets=(8, 16), phrase=" within {budget} tokens:")):
        batch = HookedRollout(engine, hook, tok, seed=0)(prompts, spec, step=0)
        assert sum(len(s.injected) for s in batch.samples) > 0
        prepare_tokens(batch)  # the loss mask: 0 on injected tokens
        with torch.no_grad():
            lp, _ = LogprobPolicy(model)(collate(batch.samples, tok.pad_token_id), temperature=0.9)
        width = lp.shape[1]
        behaviour = to_completion_space([s.logprobs for s in batch.samples], width)
        mask = batch.mask[:, :width]
        trained_after = [j for s in batch.samples if s.injected for j in range(s.injected[-1] + 1, s.num_tokens)]
        assert trained_after, "no generated token after an injected one"
        # every trained token, those generated after the injected ones included: the trainer's logprob is the
        # engine's (the ratio pi / pi_behaviour is 1 for the policy that generated them)
        assert ((lp - behaviour).abs() * mask).max().item() < 1e-4
        assert float(mask.sum()) == sum(s.num_tokens - len(s.injected) for s in batch.samples)


def _rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def _train(tmp_path, recipe, *over, steps=1):
    from rlkit.api import train

    cfg = load_config(recipes=[recipe], overrides=[
        f"output_dir={tmp_path / recipe}", "rollout.engine=hf", "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=40", f"train.steps={steps}", "eval.before=false", "eval.after=false",
        "algorithm.minibatches=1", "optim.lr=1e-5", "checkpoint.save_final=false", *over])
    train(cfg)
    return _rows(tmp_path / recipe)


def test_jet_trains_from_its_recipe(tmp_path):
    rows = _train(tmp_path, "jet", "rollout.group_size=6",
                  "rollout_hook={name: jet_truncation, kwargs: {answer_tokens: 8}}")
    assert len(rows) == 1 and all(r["completion/samples"] == 12 for r in rows)
    assert all(0 < r["jet/branch_tokens"] for r in rows) and all(r["optim/grad_norm"] > 0 for r in rows)
    assert all("shaping/jet_shortest/bonus_mean" in r for r in rows)


def test_hbpo_trains_from_its_recipe(tmp_path):
    rows = _train(tmp_path, "hbpo", "rollout.group_size=4",
                  "rollout_hook={name: hbpo_budgets, kwargs: {budgets: [16, 32]}}",
                  "rewards=[{name: math_correct, weight: 0.0}, {name: hbpo_budget, kwargs: {l_max: 40, "
                  "think_end: ''}}]")
    assert len(rows) == 1 and all(r["hbpo/announced_tokens"] > 0 for r in rows)
    assert all(r["optim/grad_norm"] > 0 for r in rows)


def test_traac_trains_from_its_recipe_and_compresses_correct_answers(tmp_path):
    """Every answer counts as correct (a stand-in verifier), so every group is easy and its completions are scored by
    a frozen SmolLM2's attention and compressed (SmolLM2 writes no thinking marker: the whole completion is the
    reasoning; it writes none of the released cue words, so sentences and clauses are the steps here)."""
    rows = _train(tmp_path, "traac", "rollout.group_size=4", "rollout.max_new_tokens=96",
                  "rollout_hook={name: traac_compression, kwargs: {think_end: '', answer_tokens: 12, "
                  "cues: ['.', ',', 'Ċ']}}",
                  "rewards=[{name: helpers:always_correct, weight: 4.0, correctness: true}]", steps=2)
    assert len(rows) == 2 and sum(r["traac/compressed"] for r in rows) > 0 and sum(r["traac/removed_tokens"]
                                                                                   for r in rows) > 0
    assert all(r["shaping/traac_length/easy_frac"] == 1.0 for r in rows) and all(r["optim/grad_norm"] > 0 for r in rows)


def test_lapo_learns_lengths_in_stage_one_and_announces_them_in_stage_two(tmp_path):
    stage1 = _train(tmp_path, "lapo", "rollout.group_size=4", "checkpoint.save_final=true",
                    "rewards=[{name: helpers:even_length_correct, correctness: true}]")
    assert stage1[-1]["shaping/lapo_band/prompts_known"] > 0
    state = json.loads(next((tmp_path / "lapo" / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    medians = state["stages"]["shaping[0].lapo_band"]["medians"]
    first = next((tmp_path / "lapo" / "checkpoints").glob("step_*"))
    stage2 = _train(tmp_path, "lapo_stage2", "rollout.group_size=4",
                    f"prompt_transforms=[{{name: lapo_announce, kwargs: {{targets: '{first}'}}}}]",
                    "rewards=[{name: helpers:even_length_correct, correctness: true}]")
    assert len(stage2) == 1 and all("shaping/lapo_target/target_gap" in r for r in stage2)
    # the prompts stage 2 drew carry the lengths stage 1 learned (a prompt it never saw announces 4096)
    assert any(r["transforms/lapo_announce/known_frac"] > 0 for r in stage2) or not any(medians.values())
