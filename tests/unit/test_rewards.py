import math
import sys
import textwrap

import pytest
import torch

from rlkit.config import RewardTerm
from rlkit.rewards import RewardError, RewardSet, list_rewards, math_correct, register_reward, resolve_reward
from rlkit.rewards.registry import build_reward

PROMPTS = ["What is 2+2?", "What is 3+3?"]


def _score(rs, completions, **columns):
    return rs(PROMPTS[:len(completions)], completions, [[1, 2]] * len(completions), columns,
              finish_reason=["stop"] * len(completions), num_tokens=[2] * len(completions), step=0)


def test_math_correct_gsm8k_boxed_and_numbers():
    verifier = math_correct()  # a factory: the reward is its instance (samples verified in worker processes)
    got = verifier(PROMPTS * 2, ["so \\boxed{4}", "it is 5", "The answer: 72", "\\boxed{1/2}"], [[]] * 4,
                   answer=["2+2=4 #### 4", 6.0, "#### 72", "\\frac{1}{2}"])
    assert got == [1.0, 0.0, 1.0, 1.0]
    assert verifier(PROMPTS, ["4", "6"], [[], []]) == [None, None]
    assert verifier(PROMPTS, ["4", "6"], [[], []], answer=[None, "6"]) == [None, 1.0]


def test_weighted_combination_and_none_masked():
    def sometimes(prompts, completions, completion_ids, **kw):
        return [None, 1.0]

    rs = RewardSet([("math_correct", 1.0, build_reward("math_correct")), ("fmt", 0.5, build_reward("boxed_format")),
                    ("sometimes", 2.0, sometimes)])
    v = _score(rs, ["\\boxed{4}", "6"], answer=[4, 6])
    assert v.total.tolist() == [1.0 + 0.5, 1.0 + 0 + 2.0]
    assert math.isnan(v.terms["sometimes"][0]) and v.terms["sometimes"][1] == 1.0


def test_registry_import_path_and_factory_kwargs():
    assert resolve_reward("math_correct").obj is math_correct
    boxed = build_reward("boxed_format")
    # an answer in the box counts; the prompt suffix's empty "\\boxed{}" copied back does not
    assert boxed(None, ["so \\boxed{12}", "\\boxed {\\frac{1}{2}}", "answer: \\boxed{}", "\\boxed{ \n}", "12"],
                 None) == [1.0, 1.0, 0.0, 0.0, 0.0]
    fmt = build_reward("boxed_format", {"pattern": r"^<think>"})
    assert fmt(None, ["<think>x", "no"], None) == [1.0, 0.0]
    fn = build_reward("rlkit.rewards.builtin:math_correct")
    assert fn(PROMPTS, ["4"], [[]], answer=["4"]) == [1.0]
    with pytest.raises(KeyError, match="registered rewards: .*boxed_format.*math_correct"):
        resolve_reward("nope")
    with pytest.raises(KeyError, match="cannot import module"):
        resolve_reward("no_such_pkg.mod:fn")


def test_register_reward_decorator_and_listing():
    @register_reward("test_const_reward")
    def const(prompts, completions, completion_ids, **kw):
        """Always 0.25."""
        return [0.25] * len(completions)

    assert ("test_const_reward", "Always 0.25.") in list_rewards()
    rs = RewardSet.from_config([RewardTerm("test_const_reward", 4.0)])
    assert _score(rs, ["a"]).total.tolist() == [1.0]


def test_entry_point_plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "myplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        def brevity(prompts, completions, completion_ids, **kw):
            """Shorter is better."""
            return [1.0 / (1 + len(c)) for c in completions]
    '''))
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlkit.rewards]\nbrevity = myplug:brevity\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward("brevity").obj(None, ["abc"], None) == [0.25]
    assert "brevity" in dict(list_rewards())
    sys.modules.pop("myplug", None)


def test_trl_reward_functions_work_unchanged():
    from trl.rewards import get_soft_overlong_punishment, think_format_reward

    rs = RewardSet([("think", 1.0, think_format_reward, "conversational"),
                    ("overlong", 1.0, get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2))])
    v = _score(rs, ["<think>\nhm\n</think>\n4", "4"])
    assert v.terms["think"].tolist() == [1.0, 0.0]
    assert v.terms["overlong"].tolist() == [0.0, 0.0]  # 2 tokens <= 4 - 2


def test_reward_that_raises_names_reward_sample_and_prompt():
    def fragile(prompts, completions, completion_ids, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # ZeroDivisionError on a 3-char completion

    rs = RewardSet([("fragile", 1.0, fragile)])
    with pytest.raises(RewardError, match=r"reward 'fragile' raised ZeroDivisionError.*at step 1, sample 1 \(prompt: 'What is 3\+3\?'\)"):
        _score(rs, ["long enough", "abc"])


def test_wrong_count_nan_and_non_numbers():
    rs = RewardSet([("short", 1.0, lambda prompts, completions, completion_ids, **kw: [1.0])])
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        _score(rs, ["a", "b"])
    rs = RewardSet([("nanny", 1.0, lambda prompts, completions, completion_ids, **kw: [0.0, float("nan")])])
    with pytest.raises(RewardError, match=r"'nanny' returned nan at step 1, sample 1 \(prompt: 'What is 3\+3\?'\)"):
        _score(rs, ["a", "b"])
    rs = RewardSet([("texty", 1.0, lambda prompts, completions, completion_ids, **kw: ["1", 0.0])])
    with pytest.raises(RewardError, match="'texty' returned '1' \\(not a number or None\\) at step 1, sample 0"):
        _score(rs, ["a", "b"])


def test_context_kwargs_reach_rewards():
    seen = {}

    def spy(prompts, completions, completion_ids, **kw):
        seen.update(kw)
        return [0.0] * len(completions)

    _score(RewardSet([("spy", 1.0, spy)]), ["a", "b"], answer=[1, 2])
    assert seen["finish_reason"] == ["stop", "stop"] and seen["num_tokens"] == [2, 2] and seen["step"] == 0
    assert seen["answer"] == [1, 2]


def test_import_light():
    import subprocess

    code = ("import sys, rlkit.rewards, rlkit.config; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('vllm','deepspeed','triton')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- timeouts and the on_error policy -------------------------------------------------------------


@pytest.fixture
def release():
    """An event that sleeping rewards wait on; set at the end so abandoned threads finish."""
    import threading

    event = threading.Event()
    yield event
    event.set()


def _sleepy(release, on=("zzz",), value=1.0):
    def sleepy(prompts, completions, completion_ids, **kw):
        if any(c in on for c in completions):
            release.wait(120)
        return [value] * len(completions)
    return sleepy


def test_timeout_raise_names_reward_step_and_sample(release):
    import time

    from rlkit.rewards.combine import Term

    rs = RewardSet([Term("sleepy", 1.0, _sleepy(release), timeout=0.5)])
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"^reward 'sleepy' timed out after 0.5 s at step 2, sample 1 "
                                          r"\(prompt: 'What is 3\+3\?'\)$"):
        rs(PROMPTS, ["fine", "zzz"], [[1], [2]], {}, step=1)
    assert time.monotonic() - t0 < 10  # ~1 s: the batch call, then sample 1 alone


def test_timeout_none_masks_counts_and_warns(release, caplog):
    from rlkit.rewards.combine import Term

    rs = RewardSet([Term("sleepy", 1.0, _sleepy(release), timeout=0.5, on_error="none"),
                    Term("half", 1.0, lambda prompts, completions, completion_ids, **kw: [0.5] * len(completions))])
    with caplog.at_level("WARNING", logger="rlkit"):
        v = rs(PROMPTS, ["fine", "zzz"], [[1], [2]], {}, step=2)
    assert v.errors == {"sleepy": 1}  # only terms with on_error none have the series
    assert v.terms["sleepy"][0] == 1.0 and math.isnan(v.terms["sleepy"][1])
    assert v.total.tolist() == [1.5, 0.5]  # the failed sample's term is left out, not counted as 0
    warning, = [r.getMessage() for r in caplog.records]
    assert warning.startswith("reward 'sleepy': 1 of 2 samples failed at step 3 and are masked (on_error: none); "
                              "the first, sample 1 (prompt: 'What is 3+3?'): timed out after 0.5 s")
    ok = rs(PROMPTS, ["fine", "also fine"], [[1], [2]], {}, step=3)
    assert ok.errors == {"sleepy": 0} and ok.total.tolist() == [1.5, 1.5]


def test_a_reward_hanging_on_every_sample_costs_a_bounded_time(release):
    import time

    from rlkit.rewards.combine import MAX_TIMED_OUT_PROBES, Term

    calls = []

    def hangs(prompts, completions, completion_ids, **kw):
        calls.append(len(completions))
        release.wait(120)

    rs = RewardSet([Term("hangs", 1.0, hangs, timeout=0.3, on_error="none")])
    t0 = time.monotonic()
    v = rs(["p"] * 6, ["a"] * 6, [[1]] * 6, {}, step=0)
    assert time.monotonic() - t0 < 10  # (1 + MAX_TIMED_OUT_PROBES) x 0.3 s
    assert v.errors == {"hangs": 6} and calls == [6] + [1] * MAX_TIMED_OUT_PROBES
    assert torch.isnan(v.terms["hangs"]).all() and v.total.tolist() == [0.0] * 6


def test_raise_none_masks_only_the_failing_samples(caplog):
    from rlkit.rewards.combine import Term

    def fragile(prompts, completions, completion_ids, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # ZeroDivisionError on a 3-char completion

    rs = RewardSet([Term("fragile", 1.0, fragile, on_error="none")])
    with caplog.at_level("WARNING", logger="rlkit"):
        v = rs(PROMPTS + ["x"], ["abcd", "abc", "abcde"], [[1]] * 3, {}, step=0)
    assert v.errors == {"fragile": 1}
    assert v.terms["fragile"][0] == 1.0 and math.isnan(v.terms["fragile"][1]) and v.terms["fragile"][2] == 0.5
    assert "the first, sample 1 (prompt: 'What is 3+3?'): raised ZeroDivisionError" in caplog.text


def test_an_exception_that_names_its_sample_is_not_probed():
    from rlkit.rewards.combine import Term

    calls = []

    def knows(prompts, completions, completion_ids, **kw):
        calls.append(len(completions))
        e = KeyError("no gold")
        e.sample = 1
        raise e

    rs = RewardSet([Term("knows", 1.0, knows)])
    with pytest.raises(RewardError, match=r"reward 'knows' raised KeyError: 'no gold' at step 1, sample 1 "):
        _score(rs, ["a", "b"])
    assert calls == [2]


def test_batch_too_slow_without_a_failing_sample_says_so(release):
    import time as _time

    from rlkit.rewards.combine import Term

    def slow(prompts, completions, completion_ids, **kw):
        _time.sleep(0.4 * len(completions))
        return [0.0] * len(completions)

    rs = RewardSet([Term("slow", 1.0, slow, timeout=0.8)])
    with pytest.raises(RewardError, match=r"reward 'slow' timed out after 0.8 s at step 1 on a batch of 4 samples, "
                                          r"though no single sample times out alone"):
        rs(["p"] * 4, ["a"] * 4, [[1]] * 4, {}, step=0)


def test_timeout_zero_calls_inline_and_config_reaches_the_terms():
    import threading

    threads = []
    register_reward("test_thread_spy")(
        lambda prompts, completions, completion_ids, **kw: threads.append(threading.current_thread()) or [0.0])
    rs = RewardSet.from_config([RewardTerm("test_thread_spy", timeout=0), RewardTerm("test_thread_spy", timeout=5,
                                                                                      on_error="none")])
    assert [(t.label, t.timeout, t.on_error) for t in rs.terms] == [
        ("test_thread_spy", 0.0, "raise"), ("test_thread_spy_2", 5.0, "none")]
    assert _score(rs, ["a"]).errors == {"test_thread_spy_2": 0}
    assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()


@pytest.mark.parametrize("returned, message", [
    ((x for x in [1.0, 2.0]), r"returned a generator for 2 completions at step 1; expected a list of 2 numbers "
                              r"\(None where it does not apply\), one per completion \(a `yield` in the reward"),
    ({1.0, 2.0}, r"returned a set for 2 completions at step 1; expected a list of 2 numbers .*unordered"),
    ({"a": 1.0}, r"returned a dict for 2 completions"),
    (iter([1.0, 2.0]), r"returned an iterator \(list_iterator\) .*wrap it in list"),
    (1.0, r"returned a single number \(1\.0\) for 2 completions"),
    (None, r"returned None for 2 completions at step 1; expected a list of 2 numbers"),
])
def test_a_non_list_return_names_the_reward_and_what_it_returned(returned, message):
    rs = RewardSet([("odd", 1.0, lambda prompts, completions, completion_ids, **kw: returned)])
    with pytest.raises(RewardError, match=r"^reward 'odd' " + message):
        _score(rs, ["a", "b"])


def test_a_hung_reward_does_not_hold_up_exit():
    import subprocess
    import time

    code = textwrap.dedent("""
        import time
        from rlkit.rewards import RewardError, RewardSet
        from rlkit.rewards.combine import Term
        rs = RewardSet([Term("stuck", 1.0, lambda prompts, completions, completion_ids, **kw: time.sleep(3600),
                             timeout=0.2)])
        try:
            rs(["p"], ["c"], [[1]], {}, step=0)
        except RewardError as e:
            print(e)
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("reward 'stuck' timed out after 0.2 s at step 1, sample 0 (prompt: 'p')")
    assert time.monotonic() - t0 < 60  # ~2 s (torch import); a join on the sleeping thread would take an hour


def test_whole_batch_failures_are_not_retried_sample_by_sample(caplog):
    """A reward declaring batch_errors: whole_batch (a scoring model) is called once for a failing batch: masked as a
    unit under on_error none, named as a batch under raise; the default retries each sample alone."""
    from rlkit import registry
    from rlkit.rewards.combine import Term

    calls = []

    def scorer(prompts, completions, completion_ids, **kw):
        calls.append(len(completions))
        raise RuntimeError("scoring server down")

    scorer.batch_errors = "whole_batch"
    caps = registry.capabilities(scorer, kind="reward")
    assert caps.batch_errors == "whole_batch" and caps.timeouts == "watchdog"
    rs = RewardSet([Term("scorer", 1.0, scorer, on_error="none", batch_errors=caps.batch_errors)])
    with caplog.at_level("WARNING", logger="rlkit"):
        v = rs(["p"] * 4, ["a"] * 4, [[1]] * 4, {}, step=0)
    assert calls == [4] and v.errors == {"scorer": 4} and torch.isnan(v.terms["scorer"]).all()
    assert "4 of 4 samples failed" in caplog.text and "batch_errors: whole_batch" in caplog.text
    calls.clear()
    rs = RewardSet([Term("scorer", 1.0, scorer, batch_errors="whole_batch")])
    with pytest.raises(RewardError, match=r"raised RuntimeError: scoring server down at step 1 on a batch of 4 "
                                          r"samples \(it declares batch_errors: whole_batch"):
        rs(["p"] * 4, ["a"] * 4, [[1]] * 4, {}, step=0)
    assert calls == [4]
    calls.clear()
    rs = RewardSet([Term("scorer", 1.0, scorer, on_error="none")])  # per_sample: 1 + 4 calls
    rs(["p"] * 4, ["a"] * 4, [[1]] * 4, {}, step=0)
    assert calls == [4, 1, 1, 1, 1]


def test_declared_timeouts_and_bad_declarations():
    from rlkit import registry

    def own(prompts, completions, completion_ids, **kw):
        return [0.0] * len(completions)

    own.timeouts = "own"
    register_reward("test_own_timeouts")(own)
    (term,) = RewardSet.from_config([RewardTerm("test_own_timeouts", timeout=5)]).terms
    assert term.timeout == 0.0  # inline: it bounds its own time
    assert registry.resolve("reward", "math_correct").caps.timeouts == "own"

    class Legacy:
        handles_timeouts = True  # the spelling of before issue 33: refused with the one name it now has

    with pytest.raises(ValueError, match='declares handles_timeouts: the declaration is now timeouts = "own"'):
        registry.capabilities(Legacy, kind="reward")

    class Wrong:
        batch_errors = "sometimes"

    with pytest.raises(ValueError, match="declares batch_errors='sometimes'; valid: per_sample, whole_batch"):
        registry.capabilities(Wrong, kind="reward")
