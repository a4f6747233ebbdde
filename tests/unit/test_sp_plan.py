from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.kernels.sp_plan import GroupStep, plan_cost, plan_group_steps


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=0, max_size=40), sp=st.integers(1, 4),
       budget=st.integers(100, 300), mode=st.sampled_from(["fixed", "adaptive"]))
def test_plans_train_every_sample_once_within_the_budget(lengths, sp, budget, mode):
    steps = plan_group_steps(lengths, sp, budget, mode)
    seen = sorted(i for s in steps for part in s.parts for i in part)
    assert seen == list(range(len(lengths)))  # every sample exactly once
    for s in steps:
        if s.sharded:
            assert len(s.parts) == 1 and s.parts[0]
            # each rank holds at most a 1/sp shard, or a sample over sp x budget goes alone
            assert sum(lengths[i] for i in s.parts[0]) <= sp * budget or len(s.parts[0]) == 1
            if mode == "adaptive":  # sequence-parallel only where one rank cannot hold the sample
                assert all(lengths[i] > budget for i in s.parts[0])
        else:
            assert mode == "adaptive" and len(s.parts) == sp and any(s.parts)
            assert all(sum(lengths[i] for i in part) <= budget for part in s.parts)
    if mode == "fixed":
        assert all(s.sharded for s in steps)


def test_a_long_tail_batch_runs_mostly_data_parallel_and_is_predicted_cheaper():
    lengths = [300] * 14 + [6000, 7000]  # 14 short completions and two near the cap, budget 4000 per rank
    adaptive = plan_group_steps(lengths, 2, 4000, "adaptive", b=1 / 4000)
    fixed = plan_group_steps(lengths, 2, 4000, "fixed", b=1 / 4000)
    assert [s.sharded for s in adaptive].count(True) == 2  # each long sample sharded alone (13000 > 8000)
    short_steps = [s for s in adaptive if not s.sharded]
    assert len(short_steps) == 1 and sorted(len(p) for p in short_steps[0].parts) == [7, 7]
    cost = {k: plan_cost(p, lengths, 2, b=1 / 4000, comm=0.5) for k, p in (("adaptive", adaptive), ("fixed", fixed))}
    assert cost["adaptive"] < cost["fixed"]


def test_step_shapes():
    assert plan_group_steps([], 2, 100) == []
    assert plan_group_steps([50, 60], 2, 100) == [GroupStep(False, ((0,), (1,)))] or \
        plan_group_steps([50, 60], 2, 100) == [GroupStep(False, ((1,), (0,)))]
