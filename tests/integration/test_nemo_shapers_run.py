"""NeMo-RL's eight correctness-gated length shapers train from the nemo_length recipe on the embedded SmolLM2 (issue 34
item 5), composed in one shaping list after a verifier: each runs in the step and reports its metrics."""

import json

from rlkit.config import load_config

SHAPERS = [
    {"name": "nemo_shortest_bonus", "kwargs": {"total_bonus": 0.1}},
    {"name": "nemo_longest_penalty", "kwargs": {"longest_total_penalty": 0.1}},
    {"name": "nemo_group_length", "kwargs": {"group_total_length_penalty_coeff": 0.1}},
    {"name": "nemo_zmad", "kwargs": {"total_zmad_threshold": 1.0, "total_zmad_penalty": 0.1}},
    {"name": "nemo_profiled_length", "kwargs": {"profiled_length_penalty": 0.1}},
    {"name": "nemo_profile_band", "kwargs": {}},
    {"name": "nemo_gated_group_length", "kwargs": {"group_total_length_penalty_coeff": 0.1}},
    {"name": "nemo_pass_rate", "kwargs": {"pass_rate_length_penalty_weight": 0.1}},
]


def test_each_nemo_shaper_trains_from_the_recipe(tmp_path):
    from rlkit.api import train

    cfg = load_config(recipes=["nemo_length"], overrides={
        "output_dir": str(tmp_path / "run"), "rollout.engine": "hf", "rollout.prompts_per_step": 2,
        "rollout.group_size": 4, "rollout.max_new_tokens": 24, "train.steps": 1, "eval.before": False,
        "eval.after": False, "algorithm.minibatches": 1, "checkpoint.save_final": False, "shaping": SHAPERS,
        "rewards": [{"name": "helpers:even_length_correct", "correctness": True}]})
    assert [s.name for s in cfg.shaping] == [s["name"] for s in SHAPERS]
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/mean" in r]
    assert len(rows) == 1 and all(r["optim/grad_norm"] > 0 for r in rows)
    for s in SHAPERS:
        assert all(any(k.startswith(f"shaping/{s['name']}/") for k in r) for r in rows), s["name"]
