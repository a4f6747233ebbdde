"""The evaluation metrics against hand-computed values: pass@k, avg@k, maj@k, token statistics, AES, intervals."""

import math

import pytest

from rlkit.evals.metrics import (
    aes,
    against_baseline,
    benchmark_metrics,
    bootstrap_interval,
    final_answer,
    majority_correct,
    pass_at_k,
)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # 1 - C(5,3)/C(10,3) = 1 - 10/120
    assert pass_at_k(10, 5, 3) == pytest.approx(1 - 10 / 120)
    assert pass_at_k(4, 2, 4) == 1.0 and pass_at_k(4, 3, 2) == 1.0  # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_final_answer_and_majority_vote():
    assert final_answer("so \\boxed{\\frac{1}{2}} and later \\boxed{1,234.0}") == "1234"
    assert final_answer("The answer is 42.") == "42" and final_answer("x = -3.5, y = 7") == "7"
    assert final_answer("no digits here") == ""
    # 7 twice (wrong), 8 once (right): the majority is wrong
    assert majority_correct(["7", "8", "7", ""], [0, 1, 0, 0]) == 0.0
    # tie 8 / 7: the answer seen first wins
    assert majority_correct(["8", "7", "7", "8"], [1, 0, 0, 1]) == 1.0
    assert majority_correct(["", ""], [0, 0]) == 0.0


def test_aes_matches_o1_pruner_definition():
    # shorter and more accurate: (100 - 60)/100 + 3 (0.55 - 0.5)/0.5 = 0.4 + 0.3
    assert aes(0.55, 60, 0.5, 100) == pytest.approx(0.7)
    # shorter but less accurate: 0.4 - 5 (0.5 - 0.45)/0.5 = 0.4 - 0.5
    assert aes(0.45, 60, 0.5, 100) == pytest.approx(-0.1)
    assert aes(0.5, 100, 0.5, 100) == 0.0
    assert math.isnan(aes(0.3, 50, 0.0, 100))


def test_benchmark_metrics_by_hand():
    groups = [  # two prompts, k = 3
        {"correct": [1, 0, 1], "tokens": [10, 20, 30], "truncated": [False, True, False], "answers": ["5", "6", "5"]},
        {"correct": [0, 0, 0], "tokens": [40, 50, 60], "truncated": [True, True, False], "answers": ["1", "2", "3"]},
    ]
    m = benchmark_metrics(groups, 3)
    assert m["prompts"] == 2 and m["k"] == 3
    assert m["avg@k"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["pass@k"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["maj@k"] == pytest.approx(0.5)
    assert m["mean_tokens"] == pytest.approx(35) and m["median_tokens"] == 35
    assert m["mean_tokens_correct"] == pytest.approx(20) and m["mean_tokens_wrong"] == pytest.approx(42.5)
    assert m["truncation_rate"] == pytest.approx(0.5)
    assert m["avg@k_ci_low"] <= m["avg@k"] <= m["avg@k_ci_high"]
    vs = against_baseline(m, {"avg@k": 0.25, "mean_tokens": 70.0})
    assert vs["token_reduction_pct"] == pytest.approx(50.0)
    assert vs["aes"] == pytest.approx(0.5 + 3 * (1 / 3 - 0.25) / 0.25)


def test_bootstrap_interval_shrinks_with_more_prompts():
    lo1, hi1 = bootstrap_interval([1.0, 0.0] * 10, seed=1)
    lo2, hi2 = bootstrap_interval([1.0, 0.0] * 200, seed=1)
    assert lo1 < 0.5 < hi1 and lo2 < 0.5 < hi2
    assert hi2 - lo2 < (hi1 - lo1) / 3  # ~1/sqrt(20) of the width
    assert bootstrap_interval([0.3] * 5) == (pytest.approx(0.3), pytest.approx(0.3))


def test_signal_fraction_and_the_held_out_table_interval():
    import torch

    from rlkit.trainers.evaluate import eval_table, signal_fraction

    adv = torch.tensor([0.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 1e-12])
    assert signal_fraction(adv, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) == 0.25  # only group 1 has a signal
    assert signal_fraction(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0
    d = {"accuracy": 0.1, "accuracy_ci_low": 0.075, "accuracy_ci_high": 0.13, "mean_tokens": 70.0,
         "median_tokens": 60.0, "truncation_rate": 0.2}
    text = eval_table({"before": d, "after": {**d, "accuracy": 0.12}}, 395, "mawps")
    assert "10.0% [7.5, 13.0]" in text and "one problem is 0.25 points" in text
