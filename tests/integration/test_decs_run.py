"""DECS end to end on the embedded SmolLM2 (issue 34: the token-level path): the recipe trains with its detector
served by a reward engine (a colocated hf copy of SmolLM2), the chunk rewards reach the per-token advantages the loss
reads, budget forcing's injected tokens stay out of the loss, and the curriculum filter reads the necessary-prefix
ratio the reward reports (one generation round a step here, to keep the test cheap; every sample correct, so the
groups differ by a small digit-fraction term the filter's metric "reward" sees)."""

import json

import pytest

from rlkit.config import load_config

# SmolLM2-135M does not follow the authors' detector prompt within 5 tokens; this one makes it answer Yes / No
PROMPT = "Does this text contain the number {answer}? Reply yes or no in lowercase.\nText: {segment}"


def test_decs_trains_from_its_recipe_with_a_served_detector(tmp_path):
    from rlkit.api import train

    cfg = load_config(recipes=["decs"], overrides=[
        f"output_dir={tmp_path / 'run'}", "rollout.engine=hf", "rollout.group_size=4", "rollout.prompts_per_step=4",
        "rollout.max_new_tokens=48", "rollout.temperature=1.0", "train.steps=2", "filter.kwargs.max_rounds=1",
        "filter.kwargs.round_prompts=null", "filter.kwargs.metric=reward", "eval.after=false", "eval.before=false", "optim.lr=1e-5",
        "checkpoint.save_final=false",
        "rollout.budget_forcing={budgets: [32], phrase: ' Therefore, the answer is', answer_tokens: 8}",
        "rewards=[{name: helpers:always_correct, weight: 1.1, correctness: true}, {name: helpers:digit_fraction, "
        "weight: 0.01}, {name: decs_redundancy, kwargs: "
        f"{{engine: detector, ignore_case: true, detector_tokens: 3, prompt: {json.dumps(PROMPT)}}}}}]"])
    assert cfg.reward_engines == {"detector": {"engine": "hf"}} and cfg.algorithm.advantage == "decs"
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/mean" in r]
    assert len(rows) == 2
    assert rows[-1]["reward_engine/detector/prompts"] > rows[0]["reward_engine/detector/prompts"] > 0
    # some completions got a redundant span (negative chunk reward), so tokens of one sample differ in advantage
    assert min(r["reward/decs_redundancy"] for r in rows) < 0
    assert max(r["reward/token_nonzero_frac"] for r in rows) > 0
    assert max(r["advantage/token_spread"] for r in rows) > 0
    assert all(r["forcing/injected_tokens"] > 0 for r in rows)
    # the curriculum filter (decs_curriculum) read the necessary-prefix ratio the reward reported: its kappa follows
    # kappa = 0.2 (r - 0.5) from the last step that had a ratio (0 before any)
    ratios = [r["reward/decs_redundancy/nrp_ratio"] for r in rows]
    assert any(x is not None and 0 < x <= 1 for x in ratios), ratios
    last = None
    for r, ratio in zip(rows, ratios):
        assert r["sampling/kappa"] == pytest.approx(0.0 if last is None else 0.2 * (last - 0.5), abs=1e-6)
        last = ratio if ratio is not None else last
