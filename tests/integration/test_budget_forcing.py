"""Budget-forced rollouts in training (rollout.budget_forcing) on the tiny model with the hf engine: samples that
reach their budget get the phrase and a short answer, the reward reads the phrase, the loss never trains on it, and
a resumed run ends exactly where the uninterrupted one does."""

import json

import helpers
import torch
from safetensors.torch import load_file
from test_engines_lora import _cfg

from rlkit.trainers.checkpoint import list_checkpoints

PHRASE = " Time is up. Answer:"


def _over(**more):
    return {"rollout.engine": "hf", "rollout.max_new_tokens": 40, "rollout.group_size": 4,
            "rollout.budget_forcing": {"budgets": [4, 8], "phrase": PHRASE, "answer_tokens": 6},
            "rewards": [{"name": "helpers:records_texts"}], "checkpoint.every": 1, "eval.after": False,
            **more}


def _rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def test_budget_forcing_trains_without_the_phrase_and_resumes_exactly(tiny_model_dir, tmp_path):
    from rlkit.api import train
    from rlkit.models import load_tokenizer

    helpers.SEEN_TEXTS.clear()
    full = tmp_path / "full"
    train(_cfg(tiny_model_dir, full, **_over(**{"eval.after": True, "eval.budgets": [4, 8]})))
    after = json.loads((full / "eval_summary.json").read_text())["after"]  # the held-out check at budgets 4, 8, 40
    assert {"accuracy@4", "accuracy@8", "accuracy@40", "forced@4", "budget_auc"} <= set(after)
    assert after["accuracy@40"] == after["accuracy"] and after["forced@40"] == 0.0 and after["forced@4"] > 0
    from rlkit.plots import report

    assert "budgets.png" in {p.name for p in report([str(full)])}
    rows = _rows(full)
    n_phrase = len(load_tokenizer(str(tiny_model_dir))(PHRASE, add_special_tokens=False)["input_ids"])
    assert all(r["forcing/forced_frac"] > 0.5 for r in rows)  # the random tiny model rarely stops in 8 tokens
    assert all(r["forcing/injected_tokens"] == r["forcing/forced_frac"] * 8 * n_phrase for r in rows)
    assert all(r["forcing/budget_mean"] in (4.0, 6.0, 8.0) for r in rows)
    forced = [t for t in helpers.SEEN_TEXTS if PHRASE in t]
    assert len(forced) >= 8 and all(t.count(PHRASE) == 1 for t in forced)  # the reward reads the whole text

    part = tmp_path / "part"
    train(_cfg(tiny_model_dir, part, **_over(**{"train.steps": 1})))
    train(_cfg(tiny_model_dir, part, **_over()), resume="auto")
    a, b = _rows(full)[-1], _rows(part)[-1]
    for key in ("reward/mean", "forcing/forced_frac", "forcing/injected_tokens", "loss/ratio", "optim/grad_norm"):
        assert a[key] == b[key], key
    wa, wb = (load_file(str(list_checkpoints(r)[-1] / "policy" / "model.safetensors")) for r in (full, part))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
