import pytest

from rlkit.config import BudgetConfig, ConfigError, load_config
from rlkit.rewards.curriculum import budget_at


def test_exponential_schedule_paper_values():
    cfg = BudgetConfig(schedule="exponential", initial=256, gamma=0.7, every=150)
    assert [budget_at(cfg, t, 600) for t in (0, 149, 150, 300, 450, 599)] == [256, 256, 179, 125, 88, 88]
    assert budget_at(BudgetConfig(), 10, 100) is None


def test_steps_and_linear_schedules():
    steps = BudgetConfig(schedule="steps", initial=256, final=87, decays=3)
    assert [budget_at(steps, t, 600) for t in (0, 149, 150, 300, 450, 599)] == [256, 256, 179, 125, 87, 87]
    linear = BudgetConfig(schedule="linear", initial=256, final=87, decays=3)
    assert [budget_at(linear, t, 600) for t in (0, 150, 300, 450)] == [256, 200, 143, 87]
    one = BudgetConfig(schedule="steps", initial=256, final=87, decays=1)  # the ablation's d = 0.340
    assert [budget_at(one, t, 600) for t in (0, 299, 300)] == [256, 256, 87]


def test_budget_config_errors():
    with pytest.raises(ConfigError, match="budget.template must contain {budget}"):
        load_config(overrides={"budget.schedule": "linear", "budget.template": "be brief"})
    with pytest.raises(ConfigError, match="valid choices: none, exponential, steps, linear"):
        load_config(overrides={"budget.schedule": "cosine"})
