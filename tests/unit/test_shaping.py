"""Group/batch shaping against hand-computed values (methods.md sec. 1, 5, 10.1)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit import registry
from rlkit.config import ConfigError, load_config
from rlkit.shaping.groups import ShapingBatch, sigmoid_length_penalty


def build_shaper(name, kwargs=None):
    return registry.build(registry.resolve("shaper", name), kwargs or {})


def batch(correct, lengths, groups, rewards=None, step=0):
    c = torch.tensor(correct, dtype=torch.float32)
    return ShapingBatch(rewards=c.clone() if rewards is None else torch.tensor(rewards, dtype=torch.float32),
                        correct=c, lengths=torch.tensor(lengths, dtype=torch.float32),
                        truncated=torch.zeros(len(correct), dtype=torch.bool), group_ids=torch.tensor(groups), step=step)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_sigmoid_penalty_hand_computed_and_edge_cases():
    # correct lengths 10, 30: mean 20, unbiased std 14.142; z = -/+0.7071
    pen = sigmoid_length_penalty(torch.tensor([10.0, 30.0, 99.0]), torch.tensor([1.0, 1.0, 0.0]), 0.4)
    assert pen.tolist() == pytest.approx([0.4 * sig(-1 / math.sqrt(2)), 0.4 * sig(1 / math.sqrt(2)), 0.0], abs=1e-6)
    # one correct sample: z = 0 (our documented default), all equal lengths: z = 0, none correct: no penalty
    assert sigmoid_length_penalty(torch.tensor([5.0, 9.0]), torch.tensor([1.0, 0.0]), 0.4).tolist() == pytest.approx([0.2, 0.0])
    assert sigmoid_length_penalty(torch.tensor([5.0, 5.0]), torch.tensor([1.0, 1.0]), 0.4).tolist() == pytest.approx([0.2, 0.2])
    assert sigmoid_length_penalty(torch.tensor([5.0, 9.0]), torch.tensor([0.0, 0.0]), 0.4).tolist() == [0.0, 0.0]


def test_kimi_hand_computed():
    out = build_shaper("kimi", {"coef": 0.4})(batch([1, 1, 0, 0], [10, 30, 20, 10], [0, 0, 0, 0]))
    # L_min 10, L_max 30: lambda = 0.5, -0.5, 0, 0.5; incorrect get min(0, lambda)
    assert out.rewards.tolist() == pytest.approx([1 + 0.2, 1 - 0.2, 0.0, 0.0])
    same = build_shaper("kimi", {})(batch([1, 0], [7, 7], [3, 3]))  # all equal lengths: lambda = 0
    assert same.rewards.tolist() == [1.0, 0.0]


def test_efficient_reasoning_per_group():
    b = batch([1, 1, 0, 1, 0], [10, 30, 50, 8, 3], [0, 0, 0, 1, 1], rewards=[1.1, 1.1, 0.1, 1.0, 0.0])
    out = build_shaper("efficient_reasoning", {"alpha": 0.4})(b)
    z = 1 / math.sqrt(2)
    assert out.rewards.tolist() == pytest.approx([1.1 - 0.4 * sig(-z), 1.1 - 0.4 * sig(z), 0.1, 1.0 - 0.2, 0.0], abs=1e-6)


def test_grpo_lambda_top_fraction_switches_the_most_correct_groups():
    # group pass rates: g0 = 1.0, g1 = 0.5, g2 = 0.0, g3 = 0.75 ; lam = 0.5 -> ceil(2) groups: g0 and g3
    correct = [1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    lengths = [10, 20, 30, 40] * 4
    groups = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    shaper = build_shaper("grpo_lambda", {"lam": 0.5, "alpha": 0.4})
    out = shaper(batch(correct, lengths, groups, rewards=[9.0] * 16))  # other terms are dropped
    r = out.rewards
    assert r[4:12].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]  # plain 0/1 for the accuracy-prioritised groups
    assert torch.all(r[:4] < 1) and r[0] > r[3]  # penalised, shorter correct answers keep more
    assert r[15] == 0 and torch.all(r[12:15] < 1)
    assert out.metrics["switched_fraction"] == 0.5
    assert shaper.state_dict() == {"switched_total": 2, "groups_total": 4}
    again = build_shaper("grpo_lambda", {"lam": 0.5})
    again.load_state_dict(shaper.state_dict())
    assert again(batch([1, 0], [1, 2], [0, 0])).metrics["switched_fraction_cumulative"] == 3 / 5


def test_grpo_lambda_threshold_mode():
    b = batch([1, 1, 1, 0, 0, 0], [10, 20, 10, 20, 10, 20], [0, 0, 1, 1, 2, 2])
    out = build_shaper("grpo_lambda", {"mode": "threshold", "threshold": 0.5, "alpha": 0.4})(b)
    assert out.metrics["switched_fraction"] == pytest.approx(2 / 3)
    assert out.rewards[2:].tolist() == pytest.approx([1 - 0.2, 0.0, 0.0, 0.0])  # g1: one correct -> z = 0


def test_shapers_need_a_correctness_term_and_bad_kwargs_fail():
    b = batch([0, 0], [1, 2], [0, 0])
    b.correct = torch.full((2,), float("nan"))
    # unknown correctness is not "wrong": the rewards are left as they are; a config without a verifier is
    # rejected when its components are built (the checks before any model loads)
    assert torch.equal(build_shaper("kimi", {})(b).rewards, b.rewards)
    from rlkit.trainers.stages import build_components

    with pytest.raises(ConfigError, match="reward shaper 'kimi' needs a correctness term"):
        build_components(load_config(overrides={"rewards": ["boxed_format"], "shaping": ["kimi"]}))
    with pytest.raises(ValueError, match="mode must be top_fraction or threshold"):
        build_shaper("grpo_lambda", {"mode": "top"})


def test_config_shaping_section():
    cfg = load_config(overrides={"shaping": [{"name": "grpo_lambda", "kwargs": {"lam": 0.2}}, "kimi"]})
    assert [t.name for t in cfg.shaping] == ["grpo_lambda", "kimi"]
    with pytest.raises(ConfigError, match=r"shaping\[0\]\.name: unknown reward shaper 'kimmi'; registered shapers: da_dler, efficient_reasoning, grpo_lambda, jet_shortest, kimi"):
        load_config(overrides={"shaping": ["kimmi"]})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 500)), min_size=2, max_size=8))
def test_length_penalties_keep_correct_above_incorrect(samples):
    """Within a group, a correct sample keeps a higher reward than any incorrect one (alpha < 1)."""
    correct = [c for c, _ in samples]
    lengths = [L for _, L in samples]
    for name in ("efficient_reasoning", "kimi"):
        out = build_shaper(name, {})(batch(correct, lengths, [0] * len(samples))).rewards
        good = [r for r, c in zip(out.tolist(), correct) if c]
        bad = [r for r, c in zip(out.tolist(), correct) if not c]
        if good and bad:
            assert min(good) > max(bad)


def test_da_dler_tiers_by_pass_rate():
    # g0: pass rate 0.75 -> cap 20; g1: pass rate 0.25 -> cap 40
    b = batch([1, 1, 1, 0, 1, 0, 0, 0], [10, 25, 20, 5, 35, 45, 10, 10], [0] * 4 + [1] * 4)
    b.truncated[6] = True
    out = build_shaper("da_dler", {"thresholds": [0.5], "lengths": [40, 20]})(b)
    assert out.rewards.tolist() == [1, 0, 1, 0, 1, 0, 0, 0]  # 25 > 20 is cut in the easy group; 35 <= 40 kept
    assert out.metrics["cut_fraction"] == pytest.approx(3 / 8)  # index 1, 5 (45 > 40) and the truncated 6
    tiers = build_shaper("da_dler", {"thresholds": [0.3, 0.7], "lengths": [300, 200, 100]})
    assert [tiers.cap_for(p) for p in (0.0, 0.3, 0.5, 0.7, 1.0)] == [300, 200, 200, 100, 100]
    with pytest.raises(ValueError, match="len\\(lengths\\) == len\\(thresholds\\) \\+ 1"):
        build_shaper("da_dler", {"thresholds": [0.5], "lengths": [1]})


def test_palu_compresses_easy_questions_and_resets_hard_ones():
    palu = build_shaper("palu", {"max_tokens": 100, "C": 0.75, "tau": 0.5})
    # q1: 4/4 correct, lengths 10, 20, 30, 40 -> Q1.0 - Q0.5 = 40 - 25 = 15 -> budget 85
    # q2: 1/4 correct -> budget stays at the maximum
    b = batch([1, 1, 1, 1, 1, 0, 0, 0], [10, 20, 30, 40, 50, 60, 70, 80], [0] * 4 + [1] * 4)
    b.keys = ["q1"] * 4 + ["q2"] * 4
    out = palu(b)
    assert out.rewards.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # nothing over the (initial) budgets
    assert palu.budgets == {"q1": 85, "q2": 100}
    # next visit of q1 with a response over 85 tokens: it gets 0 and does not count as a pass
    b2 = batch([1, 1, 1, 1], [10, 20, 30, 90], [5] * 4)
    b2.keys = ["q1"] * 4
    assert palu(b2).rewards.tolist() == [1, 1, 1, 0]
    assert palu.budgets["q1"] == 85 - 10  # 3/4 = 0.75 >= C: Q1.0 - Q0.5 of [10, 20, 30] = 30 - 20
    state = palu.state_dict()
    again = build_shaper("palu", {"max_tokens": 100})
    again.load_state_dict(state)
    assert again.budgets == {"q1": 75, "q2": 100}


def test_stop_properly_multiplies_truncated_rewards():
    b = batch([1, 1, 0], [5, 9, 9], [0, 0, 0], rewards=[1.0, 2.0, -1.0])
    b.truncated = torch.tensor([False, True, True])
    out = build_shaper("stop_properly", {"coef": 0.1})(b)
    assert out.rewards.tolist() == pytest.approx([1.0, 0.2, -0.1])
    assert out.metrics["penalised_fraction"] == pytest.approx(2 / 3)
