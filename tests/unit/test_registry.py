"""One registry for every kind: names, import paths, entry points, options checked when the config is parsed."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from rlkit import registry
from rlkit.config import ConfigError, load_config, resolve, save_config


@pytest.mark.parametrize("override, message", [
    ({"rewards": [{"name": "truncation", "kwargs": {"max_tokns": 5}}]},
     r"rewards\[0\]\.kwargs: reward 'truncation' has no option 'max_tokns'; valid options: max_tokens, rho"),
    ({"rewards": [{"name": "cosine", "kwargs": {"nonsense": 1}}]},
     r"reward 'cosine' has no option 'nonsense'; valid options: max_tokens, r0_correct"),
    ({"rewards": [{"name": "math_correct", "kwargs": {"tolerence": 0.1}}]},
     r"reward 'math_correct' has no option 'tolerence'; valid options: sample_timeout, workers"),
    ({"rewards": [{"name": "truncation"}]}, r"reward 'truncation' needs option 'max_tokens'"),
    ({"rewards": [{"name": "truncation", "kwargs": {"max_tokens": "many"}}]},
     r"rewards\[0\]\.kwargs\.max_tokens' must be an integer, got 'many'"),
    ({"shaping": [{"name": "kimi", "kwargs": {"cof": 0.1}}]}, r"reward shaper 'kimi' has no option 'cof'; valid options: coef"),
    ({"shaping": [{"name": "grpo_lambda", "kwargs": {"mode": "top"}}]},
     r"invalid value 'top' for 'shaping\[0\]\.kwargs\.mode'; valid choices: top_fraction, threshold"),
    ({"filter": {"name": "dynamic_sampling", "kwargs": {"metric": "shape"}}},
     r"'filter\.kwargs\.metric'; valid choices: correct, reward, shaped"),
    ({"sample_transforms": [{"name": "dot_truncation", "kwargs": {"alfa": 3}}]},
     r"sample transform 'dot_truncation' has no option 'alfa'"),
    ({"algorithm.loss": "drpo", "algorithm.loss_options": {"lamda": 0.1}},
     r"policy loss 'drpo' has no option 'lamda'; valid options: lam, tau, beta, delta"),
    ({"algorithm.loss_options": {"epsilon_lo": 0.1}}, r"policy loss 'ppo_clip' has no option 'epsilon_lo'; valid "
     r"options: epsilon_low, epsilon_high, dual_clip, kl_coef"),
    ({"algorithm.loss_options": {"dual_clip": 0.5}}, r"'algorithm\.loss_options\.dual_clip' must be 0 or > 1, got 0\.5"),
    ({"shaping": ["nope"]}, r"shaping\[0\]\.name: unknown reward shaper 'nope'; registered shapers: da_dler"),
    ({"token_masks": ["nope"]}, r"unknown token mask 'nope'; registered token masks: dmmpt, geo_rs, icepop, mask_truncated, mis"),
])
def test_component_options_are_checked_at_parse_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=override)


@pytest.mark.parametrize("override, message", [
    ({"filter": {"name": "dynamic_sampling", "kwargs": {"max_rounds": 0}}},
     r"filter: dynamic_sampling: max_rounds and safety_cap must be >= 1"),
    ({"token_masks": [{"name": "dmmpt", "kwargs": {"tau": 1.5}}]}, r"token_masks\[0\]: dmmpt: tau must be in \(0, 1\]"),
    ({"prompt_transforms": [{"name": "budget_curriculum", "kwargs": {"template": "no placeholder"}}]},
     r"prompt_transforms\[0\]: budget_curriculum: template must contain \{budget\}"),
    ({"rewards": [{"name": "decimal:Decimal", "factory": True}]},
     r"rewards\[0\] \(decimal:Decimal\): the factory returned Decimal Decimal\('0'\), not a reward function"),
])
def test_component_values_are_refused_when_built_before_any_model_loads(override, message, tmp_path):
    """A value only the component's factory can judge: the config check (pure) passes it, building it (the checks
    before any model loads, rlkit.preflight) refuses it naming the key."""
    from rlkit.preflight import preflight
    from rlkit.trainers.stages import build_components

    cfg = load_config(overrides={**override, "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=message):
        build_components(cfg)
    with pytest.raises(ConfigError, match=message):
        preflight(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ({"algorithm.loss": "kl_cov", "algorithm.kl_coef": 0.1},  # the old name, translated: kl_cov has no KL term
     r"algorithm\.loss_options: policy loss 'kl_cov' has no option 'kl_coef'; valid options: kl_cov_ratio"),
    ({"algorithm.loss": "drpo", "algorithm.loss_options": {"epsilon_high": 0.28}},
     r"policy loss 'drpo' has no option 'epsilon_high'"),
    ({"algorithm.advantage": "dr_grpo", "algorithm.scale": "group"},
     r"'algorithm\.scale' is 'group' but advantage 'dr_grpo' divides by no std"),
    ({"algorithm.advantage": "batch_norm", "algorithm.scale": "batch"}, r"advantage 'batch_norm' divides by no std"),
    ({"rewards": [{"name": "boxed_format"}], "token_masks": ["dmmpt"]}, r"token mask 'dmmpt' needs a correctness term"),
    ({"rewards": [{"name": "boxed_format"}], "filter": "dynamic_sampling"},
     r"group filter 'dynamic_sampling' needs a correctness term"),
    ({"rewards": [{"name": "boxed_format"}], "sample_transforms": ["dot_truncation"]},
     r"sample transform 'dot_truncation' needs a correctness term"),
    ({"rollout.segments": 2, "filter": "dynamic_sampling"}, r"cannot be combined with a `filter`"),
    ({"rewards": [{"name": "boxed_format"}], "shaping": ["kimi"]}, r"reward shaper 'kimi' needs a correctness term"),
])
def test_contradictory_settings_are_errors(override, message):
    from rlkit.trainers.stages import build_components

    with pytest.raises(ConfigError, match=message):  # the config check, or building what it names
        build_components(load_config(overrides=override))


def test_loss_options_are_coerced_at_parse_time():
    cfg = load_config(overrides={"algorithm.loss": "kl_cov", "algorithm.loss_options": {"kl_cov_ratio": "2e-3"}})
    assert cfg.algorithm.loss_options == {"kl_cov_ratio": "2e-3"}  # the config describes what was written
    assert resolve(cfg).algorithm.loss_options == {"kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0}  # YAML 1.1 read 2e-3 as text


def test_consistent_settings_pass_and_scale_applies_where_it_exists():
    load_config(overrides={"algorithm.loss": "kl_cov"})
    load_config(overrides={"algorithm.advantage": "dr_grpo", "algorithm.scale": "none"})
    cfg = load_config(overrides={"algorithm.advantage": "rloo", "algorithm.scale": "group"})
    import torch

    from rlkit.trainers.stages import Stages

    adv = Stages.from_config(cfg).advantage(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long))
    expected = registry.resolve("advantage", "rloo").obj(torch.tensor([1.0, 0.0, 0.0, 0.0]),
                                                          torch.zeros(4, dtype=torch.long), scale="group")
    assert torch.allclose(adv, expected) and not torch.allclose(adv, expected * 0.5 + 0.1)


def test_resolved_options_with_defaults_are_saved(tmp_path):
    cfg = load_config(overrides={"rewards": [{"name": "truncation", "kwargs": {"max_tokens": 5}}, "math_correct"],
                                 "shaping": ["kimi"], "filter": "dynamic_sampling", "token_masks": ["dmmpt"]})
    save_config(resolve(cfg), tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rewards"][0]["kwargs"] == {"max_tokens": 5, "rho": 0.0}
    assert saved["shaping"][0]["kwargs"] == {"coef": 0.4, "format_term": None}
    assert saved["filter"] == {"name": "dynamic_sampling", "kwargs": {"metric": "correct", "max_rounds": 3,
                                                                      "until_full": False, "safety_cap": 64}}
    assert saved["token_masks"][0]["kwargs"] == {"tau": 0.99, "sigma": 0.2}
    assert load_config(overrides={k: saved[k] for k in ("rewards", "shaping", "filter", "token_masks")}).filter == resolve(cfg).filter


def test_cli_rejects_a_mistyped_option_in_seconds_before_any_model_loads(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", f"--output_dir={tmp_path / 'r'}",
                           "--rewards=[{name: truncation, kwargs: {max_tokns: 5}}]"],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2
    assert "reward 'truncation' has no option 'max_tokns'; valid options: max_tokens, rho" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()
    assert elapsed < 30  # no model, no vLLM (measured ~3 s; the bound only guards against a model load)


def test_trl_reward_factory_by_import_path_is_called_once_with_its_kwargs():
    from rlkit.rewards import RewardSet

    cfg = load_config(overrides={"rewards": [
        {"name": "trl.rewards:get_soft_overlong_punishment", "kwargs": {"max_completion_len": 24,
                                                                       "soft_punish_cache": 8}}]})
    rewards = RewardSet.from_config(cfg.rewards)
    ids = [[1] * 10, [1] * 20, [1] * 30]
    values = rewards(["p"] * 3, ["a", "b", "c"], ids, {}, finish_reason=["stop"] * 3, num_tokens=[10, 20, 30], step=0)
    # TRL: 0 up to L_max - cache = 16, linear down to -1 at 24, -1 beyond
    assert values.total.tolist() == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ConfigError, match="has no option 'max_len'"):
        load_config(overrides={"rewards": [{"name": "trl.rewards:get_soft_overlong_punishment",
                                            "kwargs": {"max_len": 24}}]})


def test_conversational_reward_without_format_says_what_to_set():
    from rlkit.rewards import RewardError, RewardSet

    cfg = load_config(overrides={"rewards": [{"name": "trl.rewards:think_format_reward"}]})
    rewards = RewardSet.from_config(cfg.rewards)
    with pytest.raises(RewardError, match="set `format: conversational` on this reward term"):
        rewards(["p"], ["<think>x</think>y"], [[1]], {}, finish_reason=["stop"], num_tokens=[1], step=0)
    cfg = load_config(overrides={"rewards": [{"name": "trl.rewards:think_format_reward", "format": "conversational"}]})
    values = RewardSet.from_config(cfg.rewards)(["p"], ["<think>x</think>y"], [[1]], {}, finish_reason=["stop"],
                                               num_tokens=[1], step=0)
    assert values.total.tolist() == [1.0]


KINDS_AND_OBJECTS = {
    "shaper": ("rlkit.shapers", "class Plugin:\n    def __init__(self, bonus: float = 1.0):\n        self.bonus = bonus\n"
               "    def __call__(self, b):\n        return b.rewards + self.bonus\n"),
    "loss": ("rlkit.losses", "def Plugin(inp, *, scale: float = 1.0):\n    return None\n"),
    "token_mask": ("rlkit.token_masks", "class Plugin:\n    kind = 'batch'\n    def keep(self, inp):\n"
                   "        return inp.mask\n"),
}


@pytest.mark.parametrize("kind", sorted(KINDS_AND_OBJECTS))
def test_entry_point_groups_per_kind(tmp_path, monkeypatch, kind):
    group, source = KINDS_AND_OBJECTS[kind]
    module = f"myplugin_{kind}"  # one module per kind: sys.modules keeps what an earlier case imported
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\nmy_{kind} = {module}:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert f"my_{kind}" in registry.names(kind)
    entry = registry.resolve(kind, f"my_{kind}")
    assert entry.obj.__name__ == "Plugin" and list(entry.options) in (["bonus"], ["scale"], [])
    with pytest.raises(ConfigError, match="has no option 'typo'"):
        registry.check_options(entry, {"typo": 1}, "x", "test")


def test_imports_run_downward():
    code = textwrap.dedent("""
        import sys
        import rlkit.config
        assert not [m for m in sys.modules if m.startswith("rlkit.trainers")], "config imported a trainer"
        import rlkit.rollout.base
        assert "rlkit.rollout.vllm_engine" not in sys.modules and "rlkit.rollout.hf_engine" not in sys.modules
        import rlkit.records, rlkit.registry
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    import ast
    from pathlib import Path

    base = Path(registry.__file__).parent / "rollout" / "base.py"
    imported = {n.module for n in ast.walk(ast.parse(base.read_text())) if isinstance(n, ast.ImportFrom)}
    assert not {"rlkit.rollout.vllm_engine", "rlkit.rollout.hf_engine", "rlkit.rollout.factory"} & imported


def test_every_registered_component_declares_the_same_of_its_class_and_of_a_built_instance():
    """One spelling per capability, as values: for every registered component of every kind, the declaration read
    from the registered object equals the one read from an instance built with its default options (required
    options get a plain value); a property or an older spelling is refused by name."""
    import inspect

    from rlkit import registry

    plain = {int: 100, float: 0.5, str: "x", bool: False}
    checked = 0
    for kind in registry.KINDS:
        for name, _ in registry.listing(kind):
            entry = registry.resolve(kind, name)
            if kind == "engine" or not entry.factory:
                continue  # functions are the component itself; engines are built from a run's context
            options = {}
            for opt, param in entry.options.items():
                if param.default is inspect.Parameter.empty:
                    options[opt] = plain.get(param.annotation if isinstance(param.annotation, type) else None, 100)
            try:
                built = registry.build(entry, options)
            except (TypeError, ValueError):
                continue  # an option combination the factory refuses: nothing to compare
            assert registry.capabilities(built, entry.flags, kind=kind) == entry.caps, (kind, name)
            checked += 1
    assert checked >= 20

    class Prop:
        @property
        def needs_verifier(self):
            return True

    with pytest.raises(ValueError, match="declares needs_verifier as a property"):
        registry.capabilities(Prop, kind="shaper")
    for old, now in (("needs_correctness", "needs_verifier"), ("uses_correct", "needs_verifier"),
                     ("needs_whole_groups", "whole_groups")):
        with pytest.raises(ValueError, match=f"declares {old}: the declaration is now {now}"):
            registry.capabilities(type("Old", (), {old: True}), kind="loss")
    dynamic = registry.resolve("filter", "dynamic_sampling")
    assert dynamic.caps.needs_verifier is True  # a value, not a property object
    assert registry.capabilities(registry.build(dynamic, {"metric": "reward"}), kind="filter").needs_verifier is False
