"""Token- and chunk-level rewards (issue 34 item 1): the declaration, the checks of what a term returns, the per-token
rewards of a batch, the parse-time checks of the estimator and loss they need, and the losses reading per-token
advantages under the same masking and aggregation as sequence advantages."""

import math

import pytest
import torch

from rlkit.algorithms.losses import (
    LossInputs,
    aggregation_weights,
    cispo_loss,
    ppo_clip_loss,
    token_advantages,
)
from rlkit.config import ConfigError, RewardTerm, load_config
from rlkit.config.check import validate
from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rewards import RewardError, RewardSet
from rlkit.rewards.combine import Term
from rlkit.rewards.registry import register_reward

IDS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]


def _score(rs, ids=IDS):
    n = len(ids)
    return rs(["q"] * n, ["c"] * n, ids, {}, finish_reason=["stop"] * n, num_tokens=[len(i) for i in ids], step=0)


def per_token(prompts, completions, completion_ids, **kw):
    return [[0.1 * (t + 1) for t in range(len(ids))] if k != 1 else None for k, ids in enumerate(completion_ids)]


def chunks(prompts, completions, completion_ids, **kw):
    return [[(0, 2, 1.0), ((1, 3), -0.5)], [], [(3, 4, 2.0)]]


def scalar(prompts, completions, completion_ids, **kw):
    return [1.0, 0.0, 0.5]


def test_token_and_chunk_terms_fill_the_token_rewards_and_report_their_sums():
    rs = RewardSet([Term("s", 1.0, scalar), Term("tok", 2.0, per_token, shape="tokens"),
                    Term("ch", 1.0, chunks, shape="chunks")])
    v = _score(rs)
    assert v.total.tolist() == [1.0, 0.0, 0.5]  # token-shaped terms stay out of the scalar total
    assert v.terms["tok"][0].item() == pytest.approx(0.6) and math.isnan(v.terms["tok"][1])
    assert v.terms["ch"].tolist() == pytest.approx([1.0, 0.0, 2.0])  # 1 + 1 - 0.5 - 0.5; no chunk; one token
    # tokens: 2 * 0.1 (t+1); chunks: [0,2) +1, [1,3) -0.5 (overlap adds), tokens outside every span 0
    assert v.tokens[0].tolist() == pytest.approx([0.2 + 1.0, 0.4 + 0.5, 0.6 - 0.5])
    assert v.tokens[1].tolist() == [0.0, 0.0]  # None from the token term, no chunk
    assert v.tokens[2].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8 + 2.0])
    assert _score(RewardSet([Term("s", 1.0, scalar)])).tokens is None


@pytest.mark.parametrize("shape, value, message", [
    ("tokens", [[0.0] * 2, None, None], r"returned 2 token values for a completion of 3 tokens at step 1, sample 0"),
    ("tokens", [None, [0.0, float("nan")], None], r"returned nan at token 1 at step 1, sample 1"),
    ("tokens", [0.5, None, None], r"declares shape tokens but returned a single number .* sample 0"),
    ("chunks", [None, None, [(2, 5, 1.0)]], r"chunk 0 spanning tokens \[2, 5\) of a completion of 4 tokens.*sample 2"),
    ("chunks", [None, [(1, 1, 1.0)], None], r"need 0 <= start < end <= 2"),
    ("chunks", [None, [(0.5, 1, 1.0)], None], r"chunk 0 = \(0.5, 1, 1.0\) at step 1, sample 1.*integer token"),
    ("scalar", [[1.0, 2.0, 3.0], 0.0, 0.0], r"declares shape scalar but returned a sequence for one sample at "
                                            r"step 1, sample 0"),
])
def test_a_wrong_return_names_the_sample_and_the_place(shape, value, message):
    rs = RewardSet([Term("bad", 1.0, lambda **kw: value, shape=shape)])
    with pytest.raises(RewardError, match=message):
        _score(rs)


def test_the_correctness_term_must_be_scalar():
    with pytest.raises(ValueError, match="returns tokens: the correctness term"):
        RewardSet([Term("v", 1.0, per_token, correctness=True, shape="tokens")])


@register_reward("test_token_shaped", shape="tokens")
def token_shaped(prompts, completions, completion_ids, **kw):
    return [[0.0] * len(i) for i in completion_ids]


def test_the_declaration_is_read_and_checked_against_the_estimator_and_loss_when_parsed():
    over = ["rewards=[{name: math_correct}, {name: test_token_shaped, weight: 0.5}]"]
    with pytest.raises(ConfigError, match=r"rewards\[1\] \(test_token_shaped\) returns tokens, but advantage 'grpo' "
                                          r"takes one reward per sample"):
        validate(load_config(overrides=over))
    with pytest.raises(ConfigError, match=r"returns tokens, but loss 'gspo' reads one advantage per sequence"):
        validate(load_config(overrides=over + ["algorithm.advantage=decs", "algorithm.loss=gspo"]))
    validate(load_config(overrides=over + ["algorithm.advantage=decs"]))  # decs + ppo_clip: accepted
    with pytest.raises(ConfigError, match=r"rewards\[0\] \(test_token_shaped\) returns tokens but is marked "
                                          "correctness"):
        validate(load_config(overrides=["rewards=[{name: test_token_shaped, correctness: true}]",
                                        "algorithm.advantage=decs"]))


def test_token_rewards_follow_the_groups_a_filter_selects_and_concatenates():
    prompts = [Prompt([1], "a", {}), Prompt([2], "b", {})]
    samples = [Sample([1], ids, [0.0] * len(ids), "stop", "", g) for ids, g in zip(IDS, [0, 1, 1])]
    rows = [torch.full((len(i),), float(k)) for k, i in enumerate(IDS)]
    batch = StepBatch(prompts, samples, rewards=torch.zeros(3), token_rewards=rows)
    picked = batch.select_groups([1, 0])
    assert [r.tolist() for r in picked.token_rewards] == [[1.0, 1.0], [2.0] * 4, [0.0] * 3]
    joined = StepBatch.concat([picked, batch.select_groups([0])])
    assert [len(r) for r in joined.token_rewards] == [2, 4, 3, 3]


def test_token_level_losses_read_each_tokens_advantage_under_the_same_weights():
    torch.manual_seed(0)
    b, t = 3, 5
    logp = torch.randn(b, t, requires_grad=True)
    old = logp.detach() + 0.05 * torch.randn(b, t)
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    w = aggregation_weights(mask, "token-mean", float(mask.sum()))
    seq = torch.tensor([0.5, -1.0, 2.0])
    tok = seq[:, None].expand(b, t).clone()
    for loss in (ppo_clip_loss, cispo_loss):
        broadcast = loss(LossInputs(logp, old, seq, mask, w)).loss
        same = loss(LossInputs(logp, old, seq, mask, w, token_advantages=tok)).loss
        assert torch.allclose(broadcast, same)  # per-token advantages equal to the broadcast: the same loss
    tok[0, 0] = -3.0  # one token's own advantage moves only that token's gradient
    grad_seq = torch.autograd.grad(ppo_clip_loss(LossInputs(logp, old, seq, mask, w)).loss, logp)[0]
    grad_tok = torch.autograd.grad(ppo_clip_loss(LossInputs(logp, old, seq, mask, w, token_advantages=tok)).loss,
                                   logp)[0]
    diff = (grad_seq - grad_tok).abs() > 1e-9
    assert diff[0, 0] and int(diff.sum()) == 1
    inp = LossInputs(logp, old, seq, mask, w, token_advantages=tok)
    assert token_advantages(inp)[0, 0] == -3.0 and token_advantages(LossInputs(logp, old, seq, mask, w))[0, 0] == 0.5


def test_reward_term_config_has_no_shape_key():
    """The shape is the component's declaration, not a config key (a config cannot disagree with its reward)."""
    assert "shape" not in RewardTerm.__dataclass_fields__


def reports_ratio(prompts, completions, completion_ids, **kw):
    from rlkit.rewards import Reported

    return Reported([1.0, None, 2.0], {"ratio": [0.5, None, 1.0]})


def test_reported_values_become_columns_and_never_add_to_the_reward():
    from rlkit.rewards.combine import reward_columns

    register_reward("test_reports_ratio", reports=("ratio",))(reports_ratio)
    term = RewardTerm(name="test_reports_ratio", weight=2.0)
    assert reward_columns([term, RewardTerm(name="test_reports_ratio")], [reports_ratio, reports_ratio]) == [
        "test_reports_ratio", "test_reports_ratio/ratio", "test_reports_ratio_2", "test_reports_ratio_2/ratio"]
    rs = RewardSet.from_config([term])
    assert rs.labels == ["test_reports_ratio", "test_reports_ratio/ratio"]
    v = _score(rs)
    assert list(v.terms) == rs.labels and v.total.tolist() == [2.0, 0.0, 4.0]
    got = v.terms["test_reports_ratio/ratio"]
    assert got[0] == 0.5 and math.isnan(got[1]) and got[2] == 1.0


@pytest.mark.parametrize("returned, declared, match", [
    ("plain", ("ratio",), r"declares reports \['ratio'\] but returned a list"),
    ("reported", (), "returned Reported values at step 1 but declares no `reports`"),
    ({"other": [1, 2, 3]}, ("ratio",), r"reported \['other'\] at step 1; it declares \['ratio'\]"),
    ({"ratio": [1, 2]}, ("ratio",), r"reported 'ratio' as 2 values for 3 completions"),
    ({"ratio": [1, float("nan"), 3]}, ("ratio",), r"returned nan at its report 'ratio' at step 1, sample 1"),
])
def test_a_wrong_report_is_named(returned, declared, match):
    from rlkit.rewards import Reported

    def fn(prompts, completions, completion_ids, **kw):
        if returned == "plain":
            return [1.0, 1.0, 1.0]
        return Reported([1.0, 1.0, 1.0], {"ratio": [1, 2, 3]} if returned == "reported" else returned)

    with pytest.raises(RewardError, match=match):
        _score(RewardSet([Term("t", 1.0, fn, reports=declared)]))


def test_a_failed_call_reports_nothing():
    def fails(prompts, completions, completion_ids, **kw):
        raise RuntimeError("down")

    v = _score(RewardSet([Term("t", 1.0, fails, on_error="none", batch_errors="whole_batch", reports=("ratio",))]))
    assert torch.isnan(v.terms["t/ratio"]).all() and len(v.terms["t/ratio"]) == 3


def test_a_report_may_not_take_the_failure_counts_name():
    from rlkit.rewards.combine import make_term

    register_reward("test_reports_errors", reports=("errors",))(reports_ratio)
    with pytest.raises(RewardError, match="declares a report named 'errors'"):
        make_term(RewardTerm(name="test_reports_errors"), "test_reports_errors")
