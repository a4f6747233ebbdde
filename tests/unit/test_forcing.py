"""Budget forcing's pieces without a model: which samples get the phrase, the joined completion, the loss mask
that leaves the phrase out, deterministic budgets, and the settings refused before anything loads."""

import pytest
from shared import ScriptedEngine

from rlkit.config import ConfigError, load_config
from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.forcing import BudgetForcing, ForcedRollout
from rlkit.trainers.update import prepare_tokens


class _Engine(ScriptedEngine):
    version = 3

    def sample(self, k, p, s, j):
        n = s.max_new_tokens if (k + j) % 2 == 0 else 2  # even: reaches its cap
        return Sample(p, list(range(50, 50 + n)), [-1.0] * n, "length" if n == s.max_new_tokens and n > 2 else "stop",
                      "t" * n, k, [self.version] * n)


def test_forced_samples_get_the_phrase_and_it_is_never_trained():
    engine = _Engine()
    r = ForcedRollout(engine, BudgetForcing((8, 4), " UP:", [7, 7, 7], 5), seed=1)
    prompts = [Prompt(ids=[1, 2, 3], text="a", columns={}), Prompt(ids=[4, 5], text="b", columns={})]
    batch = r(prompts, SamplingSpec(n=2, temperature=0.7, max_new_tokens=40), step=3)
    budgets = [r.budget_of(p, 3) for p in prompts]
    assert budgets == [r.budget_of(p, 3) for p in prompts] and set(budgets) <= {4, 8}  # a pure function
    first, second = engine.calls
    assert [s.max_new_tokens for s in first[1]] == budgets
    forced = [s for s in batch.samples if s.injected]
    assert len(second[0]) == len(forced) == 2  # only the samples that reached their budget continue
    assert second[1].n == 1 and second[1].max_new_tokens == 5 and second[1].temperature == 0.7
    for s in forced:
        b = budgets[s.group_id]
        assert s.completion_ids[b:b + 3] == [7, 7, 7] and s.injected == [b, b + 1, b + 2]
        assert s.text.count(" UP:") == 1 and len(s.logprobs) == len(s.versions) == s.num_tokens
        assert s.trainable() == [1.0] * b + [0.0] * 3 + [1.0] * (s.num_tokens - b - 3)
    assert batch.metrics["forcing/forced_frac"] == 0.5 and batch.metrics["forcing/injected_tokens"] == 6.0
    step = prepare_tokens(StepBatch(prompts, batch.samples))
    for i, s in enumerate(step.samples):
        assert step.mask[i, :s.num_tokens].tolist() == s.trainable()


@pytest.mark.parametrize("over, message", [
    ({"rollout.budget_forcing.answer_tokens": 0}, "'rollout.budget_forcing.answer_tokens' must be >= 1"),
    ({"rollout.budget_forcing.budgets": [64, 120]}, "leave no room under rollout.max_new_tokens"),
    ({"rollout.budget_forcing.budgets": [0, 8]}, "must be whole numbers of tokens >= 1"),
    ({"rollout.budget_forcing.phrase": "  "}, "'rollout.budget_forcing.phrase' is empty"),
    ({"rollout.segments": 2}, "cannot be combined with rollout.segments > 1"),
])
def test_bad_forcing_settings_are_refused_at_parse_time(over, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"rollout.max_new_tokens": 96, "rollout.budget_forcing.budgets": [16, 32], **over})


def test_a_phrase_that_tokenises_to_nothing_or_overflows_is_refused_before_the_model_loads(monkeypatch,
                                                                                          tiny_model_dir):
    from rlkit import inputs
    from rlkit.errors import UserError
    from rlkit.rollout import base

    cfg = load_config(overrides={"model.name_or_path": str(tiny_model_dir), "rollout.max_new_tokens": 40,
                                 "rollout.budget_forcing.budgets": [8, 30], "rollout.budget_forcing.answer_tokens": 6})
    with pytest.raises(UserError, match="exceed rollout.max_new_tokens"):
        inputs.check_forcing(cfg)  # 30 + the phrase + 6 > 40
    monkeypatch.setattr(base, "phrase_ids", lambda tok, phrase: [])
    with pytest.raises(UserError, match="tokenises to nothing"):
        inputs.check_forcing(cfg)


def test_one_phrase_and_allowance_for_rollouts_evaluations_and_the_held_out_check(tiny_model_dir):
    """rlkit eval --budgets, the held-out check and forced rollouts share rollout.budget_forcing's phrase and answer
    allowance; the held-out check's forced answer must fit the engine's room, checked before the model loads."""
    from rlkit import inputs
    from rlkit.config import CONTEXT_ROOM
    from rlkit.errors import UserError
    from rlkit.evals.suite import EvalSettings

    assert (EvalSettings().force_suffix, EvalSettings().answer_tokens) == ("\n\nFinal answer: \\boxed{", 16)
    cfg = load_config(overrides={"model.name_or_path": str(tiny_model_dir), "rollout.max_new_tokens": 40,
                                 "eval.budgets": [8], "rollout.budget_forcing.answer_tokens": CONTEXT_ROOM})
    with pytest.raises(UserError, match="held-out check's forced answer .* must fit the engine's 64-token room"):
        inputs.check_forcing(cfg)
    cfg.rollout.budget_forcing.answer_tokens = 16
    inputs.check_forcing(cfg)


def test_a_forced_answer_needs_a_phrase_and_at_least_one_token_within_the_room():
    assert BudgetForcing((8,), " A:", [1, 2], 16).fits(64)
    assert not BudgetForcing((8,), " A:", [1, 2], 0).fits(64)  # evaluate_suite refuses --answer-tokens 0 with it
    assert not BudgetForcing((8,), " A:", [1, 2], 63).fits(64)
    assert not BudgetForcing((8,), "", [], 16).fits(64)
