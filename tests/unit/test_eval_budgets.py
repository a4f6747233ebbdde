"""Accuracy against token budgets (rlkit.evals.budgets): the forced continuation only for unfinished samples, the
largest budget untouched, the area under the curve and the forced-answer rate against hand-computed values, and
`rlkit eval --budgets` end to end on the tiny model (hf engine) with `rlkit report`'s budgets.png."""

import json

import pytest

from rlkit.evals.budgets import at_budget, budget_auc, forced_rate, parse_budgets
from rlkit.records import Prompt, Sample
from rlkit.rollout.forcing import BudgetForcing


class _Engine:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, spec):
        self.calls.append((prompts, spec))
        return [Sample(prompt_ids=p, completion_ids=[7, 8], logprobs=[], finish_reason="stop", text="42}",
                       group_id=k) for k, p in enumerate(prompts)]


def _sample(n, reason, group=0):
    return Sample(prompt_ids=[1, 2], completion_ids=list(range(100, 100 + n)), logprobs=[0.0] * n,
                  finish_reason=reason, text="x" * n, group_id=group)


def test_forced_continuation_only_for_unfinished_samples():
    forcing = BudgetForcing((20, 10), " ANSWER{", [5, 6], 4, lambda ids: f"<{len(ids)} tokens>")
    assert forcing.budgets == (10, 20) and forcing.largest == 20
    prompts = [Prompt(ids=[1, 2], text="q", columns={})]
    samples = [_sample(5, "stop"), _sample(10, "stop"), _sample(12, "stop"), _sample(20, "length")]
    engine = _Engine()
    seen, forced = at_budget(engine, prompts, samples, 10, forcing)
    assert forced == [False, False, True, True]
    assert seen[0] is samples[0] and seen[1] is samples[1]  # finished within 10 tokens: unchanged
    (call,) = engine.calls  # one engine call for both forced samples
    assert call[0] == [[1, 2] + list(range(100, 110)) + [5, 6]] * 2
    assert (call[1].n, call[1].temperature, call[1].max_new_tokens) == (1, 0.0, 4)
    assert seen[2].completion_ids == list(range(100, 110)) + [5, 6, 7, 8] and seen[2].num_tokens == 14
    assert seen[2].text == "<10 tokens> ANSWER{42}" and seen[2].finish_reason == "stop"
    engine.calls.clear()
    same, forced = at_budget(engine, prompts, samples, 20, forcing)  # the largest budget: plain eval
    assert same == samples and not any(forced) and not engine.calls


def test_budget_metrics_against_hand_computed_values():
    # trapezoids through (0, 0): 100 * 0.2 / 2 + 100 * (0.2 + 0.4) / 2 + 200 * (0.4 + 0.5) / 2 = 130; / 400
    assert budget_auc([200, 100, 400], [0.4, 0.2, 0.5]) == pytest.approx(0.325)
    assert budget_auc([64], [1.0]) == pytest.approx(0.5)
    assert forced_rate([True, False, False, True]) == 0.5
    assert parse_budgets("256, 128,256") == (128, 256)
    for bad in ("128,abc", "0", "", "-5"):
        with pytest.raises(ValueError, match="--budgets"):
            parse_budgets(bad)


def test_eval_budgets_end_to_end_and_report(tiny_model_dir, tmp_path, capsys):
    from rlkit.cli import main

    common = ["eval", f"--model.name_or_path={tiny_model_dir}", "--rollout.engine=hf", "--eval.size=8",
              "--k", "2", "--no-progress", "--rewards=[{name: math_correct}]"]
    run = tmp_path / "run"
    out = run / "evals" / "step_000001.json"
    assert main(common + ["--budgets", "16,4,8", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Accuracy vs token budget" in text and "AUC / largest" in text
    plain = tmp_path / "plain.json"
    assert main(common + ["--max-new-tokens", "16", "--output", str(plain)]) == 0
    got, ref = (json.loads(p.read_text())["benchmarks"]["held_out"] for p in (out, plain))
    per = got.pop("budgets")
    auc = got.pop("budget_auc")
    assert got == ref  # the largest budget is plain `rlkit eval` at that cap
    assert list(per) == ["4", "8", "16"] and per["16"]["forced_rate"] == 0.0
    assert per["16"]["avg@k"] == ref["avg@k"] and per["16"]["mean_tokens"] == ref["mean_tokens"]
    from rlkit.config import BudgetForcingConfig
    from rlkit.models import load_tokenizer

    phrase = BudgetForcingConfig.phrase  # the one default phrase, "\n\nFinal answer: \boxed{"
    assert phrase == "\n\nFinal answer: \\boxed{" and BudgetForcingConfig.answer_tokens == 16
    suffix = len(load_tokenizer(str(tiny_model_dir))(phrase, add_special_tokens=False)["input_ids"])
    assert all(int(b) + suffix < per[b]["mean_tokens"] <= int(b) + suffix + 16 for b in ("4", "8"))  # all forced
    assert per["4"]["forced_rate"] >= per["8"]["forced_rate"] > 0  # the random tiny model rarely stops early
    assert auc == pytest.approx(budget_auc([4, 8, 16], [per[b]["avg@k"] for b in ("4", "8", "16")]))
    assert sorted(ref["lengths"]) == ["correct", "wrong"] and len(ref["lengths"]["wrong"]) + len(
        ref["lengths"]["correct"]) == 16
    assert main(["eval", "--compare", str(out), str(plain)]) == 0
    assert "budget AUC" in capsys.readouterr().out
    from rlkit.plots import report

    written = {p.name for p in report([str(run)])}
    assert {"budgets.png", "length_by_correctness.png"} <= written
    assert (run / "report" / "budgets.png").stat().st_size > 5000


def test_every_budget_curve_differs_from_the_others_by_colour_and_marker():
    """Issue 36: a run's before and after checkpoints were drawn in two shades of one blue. Two runs of two
    checkpoints each: four lines, four colours, four markers, each labelled with its run and checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlkit.plots import draw_budgets

    line = [(32, 0.1, 0.05, 0.15), (64, 0.2, 0.1, 0.3), (128, 0.3, 0.2, 0.4)]
    runs = [{"label": name, "budgets": [("step 0 mawps", line, 0.2), ("step 8 mawps", line, 0.25)]}
            for name in ("grpo", "dler")]
    fig, ax = plt.subplots()
    lines = draw_budgets(ax, runs)
    plt.close(fig)
    assert len(lines) == 4
    assert len({ln.get_color() for ln in lines}) == 4 and len({ln.get_marker() for ln in lines}) == 4
    assert [ln.get_label() for ln in lines][:2] == ["grpo: step 0 mawps (AUC 20.0%)", "grpo: step 8 mawps (AUC 25.0%)"]
