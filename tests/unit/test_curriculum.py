import pytest

from rlkit.config import ConfigError, load_config
from rlkit.data.transforms import BudgetCurriculum, budget_at


def test_exponential_schedule_paper_values():
    cur = BudgetCurriculum(schedule="exponential", initial=256, gamma=0.7, every=150)
    assert [cur.budget(t, 600) for t in (0, 149, 150, 300, 450, 599)] == [256, 256, 179, 125, 88, 88]
    assert [budget_at("exponential", t, 600, initial=256, final=87, gamma=0.7, every=150, decays=3)
            for t in (0, 150, 599)] == [256, 179, 88]
    # no budget unless the curriculum is configured (it used to be budget.schedule: none)
    assert load_config().prompt_transforms == []


def test_steps_and_linear_schedules():
    steps = BudgetCurriculum(schedule="steps", initial=256, final=87, decays=3)
    assert [steps.budget(t, 600) for t in (0, 149, 150, 300, 450, 599)] == [256, 256, 179, 125, 87, 87]
    linear = BudgetCurriculum(schedule="linear", initial=256, final=87, decays=3)
    assert [linear.budget(t, 600) for t in (0, 150, 300, 450)] == [256, 200, 143, 87]
    one = BudgetCurriculum(schedule="steps", initial=256, final=87, decays=1)  # the ablation's d = 0.340
    assert [one.budget(t, 600) for t in (0, 299, 300)] == [256, 256, 87]


def test_budget_config_errors():
    from rlkit.trainers.stages import build_components

    with pytest.raises(ValueError, match="template must contain {budget}"):
        BudgetCurriculum(schedule="linear", template="be brief")
    with pytest.raises(ConfigError, match=r"prompt_transforms\[0\]: budget_curriculum: template must contain {budget}"):
        build_components(load_config(overrides={"prompt_transforms": [
            {"name": "budget_curriculum", "kwargs": {"schedule": "linear", "template": "be brief"}}]}))
    with pytest.raises(ConfigError, match=r"prompt_transforms\[0\]\.kwargs\.schedule'; "
                                          "valid choices: exponential, steps, linear"):
        load_config(overrides={"prompt_transforms": [{"name": "budget_curriculum", "kwargs": {"schedule": "cosine"}}]})
