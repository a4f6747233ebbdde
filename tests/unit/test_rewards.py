import math
import sys
import textwrap

import pytest

from rlkit.config import RewardTerm
from rlkit.rewards import RewardError, RewardSet, list_rewards, math_correct, register_reward, resolve_reward
from rlkit.rewards.registry import build_reward

PROMPTS = ["What is 2+2?", "What is 3+3?"]


def _score(rs, completions, **columns):
    return rs(PROMPTS[:len(completions)], completions, [[1, 2]] * len(completions), columns,
              finish_reason=["stop"] * len(completions), num_tokens=[2] * len(completions), step=0)


def test_math_correct_gsm8k_boxed_and_numbers():
    got = math_correct(PROMPTS * 2, ["so \\boxed{4}", "it is 5", "The answer: 72", "\\boxed{1/2}"], [[]] * 4,
                       answer=["2+2=4 #### 4", 6.0, "#### 72", "\\frac{1}{2}"])
    assert got == [1.0, 0.0, 1.0, 1.0]
    assert math_correct(PROMPTS, ["4", "6"], [[], []]) == [None, None]


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
    with pytest.raises(RewardError, match=r"reward 'fragile' raised ZeroDivisionError.*at sample 1 \(prompt: 'What is 3\+3\?'\)"):
        _score(rs, ["long enough", "abc"])


def test_wrong_count_nan_and_non_numbers():
    rs = RewardSet([("short", 1.0, lambda prompts, completions, completion_ids, **kw: [1.0])])
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        _score(rs, ["a", "b"])
    rs = RewardSet([("nanny", 1.0, lambda prompts, completions, completion_ids, **kw: [0.0, float("nan")])])
    with pytest.raises(RewardError, match=r"'nanny' returned nan at sample 1 \(prompt: 'What is 3\+3\?'\)"):
        _score(rs, ["a", "b"])
    rs = RewardSet([("texty", 1.0, lambda prompts, completions, completion_ids, **kw: ["1", 0.0])])
    with pytest.raises(RewardError, match="'texty' returned '1' \\(not a number or None\\) at sample 0"):
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
