"""Per-sample length terms against hand-computed values (methods.md formulas)."""


import pytest

from rlkit.config import RewardTerm
from rlkit.rewards import RewardSet
from rlkit.rewards.length import loop_start
from rlkit.rewards.registry import build_reward


def call(name, kwargs, lengths, correct=None, finish=None, completions=None, ids=None, **columns):
    fn = build_reward(name, kwargs)
    n = len(lengths)
    return fn(["p"] * n, completions or ["x"] * n, ids or [[1] * L for L in lengths], num_tokens=lengths,
              finish_reason=finish or ["stop"] * n, correct=correct, **columns)


def test_truncation_dler():
    got = call("truncation", {"max_tokens": 100}, [50, 100, 101, 60, 30], correct=[1, 1, 1, 1, 0],
               finish=["stop", "stop", "stop", "length", "stop"])
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_correctness_gated_terms_need_a_correctness_term_and_pass_none_through():
    with pytest.raises(ValueError, match="'laser_step' gates on correctness: list a correctness term"):
        call("laser_step", {"target_tokens": 10}, [5])
    assert call("laser_step", {"target_tokens": 10}, [5, 5], correct=[None, 1]) == [None, 0.5]


def test_laser_step():
    assert call("laser_step", {"target_tokens": 10, "alpha": 0.5}, [10, 11, 3], correct=[1, 1, 0]) == [0.5, 0.0, 0.0]


def test_budget_triangular_and_per_sample_budget():
    assert call("budget_triangular", {"budget": 100}, [0, 50, 100, 150, 200, 250]) == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert call("budget_triangular", {}, [40, 40], budget=[80, 40]) == [0.5, 1.0]
    with pytest.raises(ValueError, match="positive `budget`"):
        call("budget_triangular", {}, [40])


def test_dapo_overlong():
    got = call("dapo_overlong", {"max_tokens": 100, "buffer": 20}, [80, 90, 100, 101])
    assert got == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="0 < buffer <= max_tokens"):
        build_reward("dapo_overlong", {"max_tokens": 10, "buffer": 20})


def test_cosine_paper_values():
    kw = {"max_tokens": 100}
    got = call("cosine", kw, [0, 50, 0, 50, 100, 20], correct=[1, 1, 0, 0, 1, 1],
               finish=["stop"] * 5 + ["length"])
    assert got[0] == pytest.approx(2.0) and got[1] == pytest.approx(1.5)  # correct: 2 at L=0, 1.5 halfway
    assert got[2] == pytest.approx(-10.0) and got[3] == pytest.approx(-5.0)  # wrong: -10 at L=0, -5 halfway
    assert got[4] == -10.0 and got[5] == -10.0  # at the cap / truncated


def test_l1_exact_and_max():
    assert call("l1_exact", {"target_tokens": 100, "alpha": 0.01}, [90, 130]) == [pytest.approx(-0.1), pytest.approx(-0.3)]
    assert call("l1_exact", {}, [90], target_tokens=[100]) == [pytest.approx(-0.0003 * 10)]
    got = call("l1_max", {"target_tokens": 100, "alpha": 0.01, "delta": 0.5}, [100, 60, 150, 10, 50],
               correct=[1, 1, 1, 1, 0])
    assert got == [0.5, pytest.approx(0.9), 0.0, 1.0, 0.0]


def test_format_length_smooth_polyline_and_no_format():
    kw = {"max_tokens": 100, "p": 0.5}
    boxed = ["\\boxed{1}"] * 4
    got = call("format_length", kw, [25, 50, 75, 100], completions=boxed)
    assert got == [pytest.approx(1 + 0.75), 2.0, pytest.approx(1 + 0.5), pytest.approx(1 - 1)]
    got = call("format_length", {**kw, "shape": "polyline"}, [25, 75, 100], completions=boxed[:3])
    assert got == [pytest.approx(1.5), pytest.approx(1.0), pytest.approx(0.0)]
    # without the format the reward is never positive
    assert call("format_length", kw, [50, 100], completions=["no box", "no box"]) == [0.0, pytest.approx(-1.0)]
    # the prompt's own "\\boxed{}" copied empty is no format
    assert call("format_length", kw, [50], completions=["Put it in \\boxed{ }."]) == [0.0]


def test_loop_start_and_repetition_penalty():
    assert loop_start([1, 2, 3, 4, 5]) == 5
    assert loop_start([9, 8, 1, 2, 1, 2, 1, 2]) == 2
    assert loop_start([5, 7, 7, 7, 7]) == 1
    ids = [[9, 8, 1, 2, 1, 2, 1, 2], [9, 8, 1, 2, 1, 2, 1, 2], [1, 2, 3, 4]]
    got = call("repetition_penalty", {"kappa": 0.2}, [8, 8, 4], finish=["length", "stop", "length"], ids=ids)
    assert got == [pytest.approx(-0.2 * 6 / 8), 0.0, 0.0]
    got = call("repetition_penalty", {"kappa": 0.1, "scaled": False}, [8], finish=["length"], ids=ids[:1])
    assert got == [-0.1]


def test_reward_set_hands_correctness_to_length_terms_whatever_the_order():
    rs = RewardSet.from_config([RewardTerm("laser_step", 1.0, {"target_tokens": 3}),
                                RewardTerm("math_correct", 1.0)])
    assert rs.correctness_label == "math_correct"
    v = rs(["q", "q"], ["\\boxed{4}", "\\boxed{5}"], [[1, 2], [1, 2]], {"answer": [4, 4]},
           finish_reason=["stop", "stop"], num_tokens=[2, 2], step=0)
    assert v.terms["math_correct"].tolist() == [1.0, 0.0]
    assert v.terms["laser_step"].tolist() == [0.5, 0.0]
    assert v.total.tolist() == [1.5, 0.0]
    assert list(v.terms) == ["laser_step", "math_correct"]  # config order is kept for logging


def test_only_one_correctness_term():
    with pytest.raises(ValueError, match="at most one reward term can be the correctness term"):
        RewardSet.from_config([RewardTerm("math_correct"), RewardTerm("boxed_format", correctness=True)])


def test_length_terms_are_listed():
    from rlkit.rewards import list_rewards

    names = dict(list_rewards())
    for name in ("truncation", "laser_step", "budget_triangular", "dapo_overlong", "cosine", "l1_exact", "l1_max",
                 "format_length", "repetition_penalty"):
        assert name in names and names[name]


def test_empty_completion_edge_case():
    empty = dict(completions=[""], ids=[[]])
    assert call("truncation", {"max_tokens": 10}, [0], correct=[0], **empty) == [0.0]
    assert call("laser_step", {"target_tokens": 10}, [0], correct=[1], **empty) == [0.5]
    assert call("budget_triangular", {"budget": 10}, [0], **empty) == [0.0]
    assert call("dapo_overlong", {"max_tokens": 10, "buffer": 2}, [0], **empty) == [0.0]
    assert call("cosine", {"max_tokens": 10, "margin": 0}, [0], correct=[0], **empty) == [-10.0]
    assert call("format_length", {"max_tokens": 10}, [0], **empty) == [0.0]  # no format: min(0, 0 + 0)
    assert call("repetition_penalty", {}, [0], finish=["length"], **empty) == [0.0]
