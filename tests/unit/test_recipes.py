import pytest

from rlkit.cli import main
from rlkit.config import ConfigError, list_recipes, load_config


def test_every_recipe_loads_and_names_its_paper():
    recipes = list_recipes()
    assert {"grpo", "dr_grpo", "dapo", "dler", "da_dler", "drpo", "grpo_lambda", "kimi", "curriculum", "dot", "laser", "laser_d", "laser_de", "ulorl"} <= {r[0] for r in recipes}
    for name, desc, paper in recipes:
        assert desc and "arXiv" in paper, name
        load_config(recipes=[name])


def test_recipe_settings_and_precedence(tmp_path):
    cfg = load_config(recipes=["dler"])
    assert cfg.algorithm.advantage == "batch_norm" and cfg.algorithm.epsilon_high == 0.28
    assert [(t.name, t.weight) for t in cfg.rewards] == [("math_correct", 0.0), ("truncation", 1.0)]
    assert cfg.rewards[1].kwargs == {"max_tokens": 4000} and cfg.rollout.max_new_tokens == 4000
    path = tmp_path / "small.yaml"
    path.write_text("rollout: {prompts_per_step: 8, group_size: 4}\nalgorithm: {minibatches: 1}\n")
    cfg = load_config(path, ["rollout.temperature=0.7"], recipes=["dler"])
    assert cfg.rollout.prompts_per_step == 8 and cfg.rollout.max_new_tokens == 4000  # file over recipe, merged
    assert cfg.rollout.temperature == 0.7 and cfg.algorithm.advantage == "batch_norm"  # override over both
    later = load_config(recipes=["dler", "kimi"])  # lists are replaced by the later source, mappings merge
    assert [t.name for t in later.rewards] == ["math_correct"] and later.algorithm.advantage == "grpo"
    assert later.algorithm.dual_clip == 10.0


def test_unknown_recipe_and_cli(capsys):
    with pytest.raises(ConfigError, match="unknown recipe 'dlr'; valid: .*dler"):
        load_config(recipes=["dlr"])
    assert main(["recipes"]) == 0
    assert "Dr.GRPO" in capsys.readouterr().out
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
