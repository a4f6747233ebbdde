import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.algorithms.filters import fill_quota, informative_groups
from rlkit.config import ConfigError, load_config


def test_informative_groups():
    v = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, float("nan"), 2.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert informative_groups(v, g) == [1]  # group 3 has one known value


def test_fill_quota_trims_pads_and_falls_back():
    assert fill_quota(["a", "b", "c"], 2, []) == (["a", "b"], 0)
    assert fill_quota(["a", "b"], 5, ["z"]) == (["a", "b", "a", "b", "a"], 3)
    assert fill_quota([], 2, ["z", "y"]) == (["z", "y"], 2)
    with pytest.raises(ValueError, match="no groups"):
        fill_quota([], 1, [])


def test_dynamic_sampling_on_correct_needs_a_verifier():
    from rlkit.trainers.stages import build_components

    with pytest.raises(ConfigError, match="group filter 'dynamic_sampling' needs a correctness term"):
        build_components(load_config(overrides={"filter": {"name": "dynamic_sampling"},
                                                "rewards": [{"name": "boxed_format"}]}))
    build_components(load_config(overrides={"filter": {"name": "dynamic_sampling", "kwargs": {"metric": "reward"}},
                                            "rewards": [{"name": "boxed_format"}]}))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=2, max_size=4), min_size=1, max_size=8),
       st.integers(1, 6))
def test_dynamic_sampling_never_returns_a_zero_variance_group_when_any_has_signal(groups, quota):
    v = torch.tensor([x for grp in groups for x in grp])
    g = torch.tensor([i for i, grp in enumerate(groups) for _ in grp])
    good = informative_groups(v, g)
    bad = [i for i in range(len(groups)) if i not in good]
    chosen, padded = fill_quota(good, quota, bad)
    assert len(chosen) == quota
    if good:
        assert all(len(set(groups[i])) > 1 for i in chosen)


def test_predictive_oversampling_factor():
    from rlkit.algorithms.filters import PredictiveOversampling

    def reduce(t, op):  # one process
        return t

    p = PredictiveOversampling(metric="reward", window=3)
    assert p.factor() == 1.5 and p.prompts_for(8, 8) == 12  # f_init before any history
    for informative, generated in ((1, 2), (4, 8)):  # pass rate 0.5 twice
        p.record(informative, generated, reduce)
    assert p.factor() == pytest.approx(2.0)  # 1/0.5 * (1 + 0)
    p.record(1, 4, reduce)  # 0.25
    p.record(3, 4, reduce)  # 0.75; window 3: [0.5, 0.25, 0.75], mean 0.5, population std sqrt(0.125 / 3) = 0.2041
    assert p.history == [0.5, 0.25, 0.75] and p.factor() == pytest.approx(2 * (1 + (0.125 / 3) ** 0.5))
    q = PredictiveOversampling()
    q.load_state_dict({"history": [0.0, 0.0]})
    assert q.factor() == 5.0  # nothing informative: f_max
    q.load_state_dict({"history": [1.0, 1.0]})
    assert q.factor() == 1.2  # clipped at f_min
    with pytest.raises(ConfigError, match="filter.kwargs: group filter 'predictive_sampling' has no option 'fmax'"):
        load_config(overrides={"filter": {"name": "predictive_sampling", "kwargs": {"fmax": 3}}})
