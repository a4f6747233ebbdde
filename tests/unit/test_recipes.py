import pytest

from rlkit.cli import main
from rlkit.config import ConfigError, list_recipes, load_config, reference_coef

ALL_RECIPES = {"grpo", "dr_grpo", "dapo", "dler", "da_dler", "drpo", "grpo_lambda", "kimi", "curriculum", "dot",
               "laser", "laser_d", "laser_de", "palu", "ulorl", "budget_forcing", "nemo_length"}
DEMO_STEPS = 10  # train.steps default: a recipe that leaves it there has no paper training length


def test_every_recipe_loads_and_names_its_paper():
    recipes = list_recipes()
    assert ALL_RECIPES <= {r[0] for r in recipes}
    for name, desc, paper in recipes:  # a paper, or the released code where the method has no paper (NeMo-RL)
        assert desc and ("arXiv" in paper or "github.com/" in paper), name


@pytest.mark.parametrize("name", sorted(ALL_RECIPES))
def test_recipe_sets_the_paper_batch_and_length(name):
    cfg = load_config(recipes=[name])
    assert cfg.train.steps != DEMO_STEPS, f"{name}: train.steps left at the demo default"
    n_seq = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    assert n_seq % cfg.algorithm.minibatches == 0, name


def test_recipe_settings_and_precedence(tmp_path):
    cfg = load_config(recipes=["dler"])
    assert cfg.algorithm.advantage == "batch_norm" and cfg.algorithm.loss_options["epsilon_high"] == 0.28
    assert [(t.name, t.weight) for t in cfg.rewards] == [("math_correct", 0.0), ("truncation", 1.0)]
    assert cfg.rewards[1].kwargs["max_tokens"] == 4000 and cfg.rollout.max_new_tokens == 4000  # defaults filled in
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.algorithm.minibatches) == (512, 16, 8)
    assert cfg.filter.name == "dynamic_sampling"
    assert cfg.filter.kwargs["metric"] == "reward" and cfg.filter.kwargs["until_full"] is True
    path = tmp_path / "small.yaml"
    path.write_text("rollout: {prompts_per_step: 8, group_size: 4}\nalgorithm: {minibatches: 1}\n")
    cfg = load_config(path, ["rollout.temperature=0.7"], recipes=["dler"])
    assert cfg.rollout.prompts_per_step == 8 and cfg.rollout.max_new_tokens == 4000  # file over recipe, merged
    assert cfg.rollout.temperature == 0.7 and cfg.algorithm.advantage == "batch_norm"  # override over both
    later = load_config(recipes=["dler", "kimi"])  # lists are replaced by the later source, mappings merge
    assert [t.name for t in later.rewards] == ["math_correct", "boxed_format"] and later.algorithm.advantage == "grpo"
    assert later.algorithm.loss_options["dual_clip"] == 10.0 and later.filter.name == "dynamic_sampling"
    assert [s.name for s in later.shaping] == ["kimi"]


def test_recipe_components():
    da = load_config(recipes=["da_dler"])
    assert da.filter.name == "dynamic_sampling" and da.filter.kwargs["metric"] == "shaped"
    assert da.filter.kwargs["until_full"] is True and da.train.steps == 150
    dot = load_config(recipes=["dot"])
    assert dot.filter.name == "predictive_sampling" and dot.filter.kwargs["metric"] == "reward"
    assert [(t.name, t.kwargs["alpha"], t.kwargs["margin"]) for t in dot.sample_transforms] == [("dot_truncation", 3.0, 32)]
    ulorl = load_config(recipes=["ulorl"])
    assert [t.name for t in ulorl.sample_transforms] == ["zero_truncated"] and ulorl.filter is None
    assert [(m.name, m.kwargs["tau"], m.kwargs["sigma"]) for m in ulorl.token_masks] == [("dmmpt", 0.99, 0.2)]
    cur = load_config(recipes=["curriculum"])
    assert cur.train.steps == 600 and cur.rollout.group_size == 8
    [budget] = cur.prompt_transforms
    assert budget.name == "budget_curriculum" and budget.kwargs["initial"] == 256 and budget.kwargs["every"] == 150
    drpo = load_config(recipes=["drpo"])
    assert drpo.algorithm.loss == "drpo" and reference_coef(drpo) == 0.0 and drpo.algorithm.minibatches == 4


def test_unknown_recipe_and_cli(capsys):
    with pytest.raises(ConfigError, match="unknown recipe 'dlr'; valid: .*dler"):
        load_config(recipes=["dlr"])
    assert main(["recipes"]) == 0
    assert "Dr.GRPO" in capsys.readouterr().out
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_version_flag(capsys):
    import rlkit

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"rlkit {rlkit.__version__}"
