import json

import pytest

from rlkit.cli import main
from rlkit.config import Config, ConfigError, load_config, save_config


def test_defaults_are_valid_and_are_the_embedded_demo():
    cfg = load_config()
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.rollout.engine == "vllm"
    assert [t.name for t in cfg.rewards] == ["math_correct", "boxed_format"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  temperature: 0.7\n  group_size: 8\nrewards:\n  - name: math_correct\n    weight: 2\n")
    cfg = load_config(path, ["rollout.temperature=0.9", "algorithm.loss_options.epsilon_high=0.28", "output_dir=/x"])
    assert cfg.rollout.temperature == 0.9 and cfg.rollout.group_size == 8
    assert cfg.algorithm.loss_options == {"epsilon_high": 0.28} and cfg.output_dir == "/x"
    assert cfg.rewards[0].weight == 2.0


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "bad.yaml" in msg and "'rollout.temprature'" in msg and "temperature" in msg


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError, match="valid choices: auto, token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        load_config(overrides=["algorithm.aggregation=mean"])


def test_exponent_floats_without_a_dot(tmp_path):
    assert load_config(overrides=["optim.lr=1e-5"]).optim.lr == 1e-5
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-6}\n")
    assert load_config(path).optim.lr == 3e-6


def test_type_errors_and_cross_checks():
    with pytest.raises(ConfigError, match="'rollout.group_size' must be an integer"):
        load_config(overrides=["rollout.group_size=four"])
    with pytest.raises(ConfigError, match="group_size' must be >= 2"):
        load_config(overrides=["rollout.group_size=1"])
    with pytest.raises(ConfigError, match="must divide"):
        load_config(overrides=["algorithm.minibatches=5"])


def test_unknown_reward_fails_at_parse_time_with_valid_names():
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.name: unknown reward 'acuracy'.*math_correct"):
        load_config(overrides={"rewards": [{"name": "acuracy"}]})


def test_unknown_advantage_and_loss():
    with pytest.raises(ConfigError, match="algorithm.advantage: unknown advantage estimator 'gpro'"):
        load_config(overrides=["algorithm.advantage=gpro"])
    with pytest.raises(ConfigError, match="algorithm.loss: unknown policy loss"):
        load_config(overrides=["algorithm.loss=ppo"])


def test_save_round_trip(tmp_path):
    cfg = load_config(overrides=["train.steps=3"])
    save_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("output_dir")
    assert load_config(overrides={k: v for k, v in data.items()}) == Config(**{**cfg.__dict__, "output_dir": Config().output_dir})


def test_cli_reports_config_errors(capsys):
    assert main(["train", "--rollout.temperature=hot"]) == 2
    assert "'rollout.temperature' must be a number" in capsys.readouterr().err
    assert main(["train", "--rewards", "[{name: nope}]"]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # not "cannot read config file --rollout..." (argparse's positional)
        main(["train", "--rollout.budget_forcing={budgets: [16, 24], answer_tokens: 8}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--rollout.budget_forcing is a section" in err
    assert "--rollout.budget_forcing.budgets" in err and "config file" not in err
    with pytest.raises(SystemExit):
        main(["train", "--rollout.nope=a b"])
    assert "unrecognized option --rollout.nope" in capsys.readouterr().err


def test_cli_help_documents_every_option(capsys):
    from rlkit.config import iter_leaves

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key, *_ in iter_leaves():
        assert f"--{key}" in out
    assert "--resume" in out


def test_cli_lists_rewards(capsys):
    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    assert "math_correct" in out and "boxed_format" in out


def test_cli_components_show_declarations_and_serve_asks_the_engine(capsys):
    assert main(["components", "engine"]) == 0
    out = capsys.readouterr().out
    assert "vllm_server" in out and "remote=True, concurrent=True" in out and "uses_policy=True" in out
    assert "math_correct" not in out
    assert main(["components", "loss"]) == 0
    assert "declares: aggregation='seq-mean-token-mean'" in capsys.readouterr().out  # gspo
    assert main(["serve", "--engine", "hf", "some-model"]) == 2
    assert "rollout engine 'hf' declares no server to start" in capsys.readouterr().err


def test_segment_and_dmmpt_options_are_checked_at_parse_time():
    import pytest as _pytest

    from rlkit.config import ConfigError, load_config, resolve
    from rlkit.trainers.stages import build_components

    cfg = load_config(overrides={"rollout.segments": 4, "rollout.importance": "sais"})
    assert cfg.rollout.segments == 4 and cfg.rollout.importance == "sais"
    described = load_config(overrides={"rollout.segments": 4})
    assert described.rollout.importance == "auto" and resolve(described).rollout.importance == "pois"
    assert described.rollout.importance == "auto"  # resolving reads the config and returns a copy
    assert cfg.optim.packing is True and cfg.optim.micro_batch_tokens == 8192  # packing is the default
    with _pytest.raises(ConfigError, match="cannot be combined with a `filter`"):
        load_config(overrides={"rollout.segments": 2, "filter": {"name": "dynamic_sampling"}})
    with _pytest.raises(ConfigError, match="'rollout.segments' must be >= 1"):
        load_config(overrides={"rollout.segments": 0})
    with _pytest.raises(ConfigError, match="token mask 'dmmpt' needs a correctness term"):
        build_components(load_config(overrides={"token_masks": [{"name": "dmmpt"}],
                                                "rewards": [{"name": "boxed_format"}]}))
    with _pytest.raises(ConfigError, match="rollout.importance"):
        load_config(overrides={"rollout.importance": "tois"})


def test_importance_is_one_option_and_the_old_names_are_translated(caplog):
    import pytest as _pytest

    from rlkit.config import ConfigError, load_config, translate_renamed

    with caplog.at_level("WARNING", logger="rlkit"):
        cfg = load_config(overrides={"rollout.segments": 2, "rollout.segment_importance": "sais"})
    assert cfg.rollout.importance == "sais" and not hasattr(cfg.rollout, "segment_importance")
    assert "'rollout.segment_importance' is now 'rollout.importance'" in caplog.text
    with _pytest.raises(ConfigError, match="rollout.segment_importance: pois, rollout.async_importance: sais "
                                           "disagree with each other or with rollout.importance"):
        load_config(overrides={"rollout.segment_importance": "pois", "rollout.async_importance": "sais"})
    # a checkpoint's saved config (both old keys, defaults included): the choice that was in effect
    for segments, ahead, seg, asy, want in [(1, 0, "pois", "sais", "pois"), (4, 0, "sais", "sais", "sais"),
                                            (1, 2, "pois", "sais", "sais"), (4, 1, "pois", "pois", "pois")]:
        saved = {"rollout": {"segments": segments, "async_steps": ahead, "segment_importance": seg,
                             "async_importance": asy}}
        translate_renamed(saved, "ckpt", saved=True)
        assert saved["rollout"] == {"segments": segments, "async_steps": ahead, "importance": want}


def test_sequence_parallel_settings_are_checked_against_the_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert load_config(overrides=["parallel.sp_size=2"]).parallel.sp_size == 2  # 2 data-parallel x 2 SP
    with pytest.raises(ConfigError, match=r"'parallel\.sp_size' \(3\) must divide the 4 processes"):
        load_config(overrides=["parallel.sp_size=3"])
    with pytest.raises(ConfigError, match=r"shards packed rows: set optim\.packing to true"):
        load_config(overrides=["parallel.sp_size=2", "optim.packing=false"])
    with pytest.raises(ConfigError, match=r"invalid value 'on' for 'parallel\.tiled_mlp'"):
        load_config(overrides=["parallel.tiled_mlp='on'"])


def test_moved_options_read_under_their_old_names_on_the_cli_and_in_saved_configs(caplog, tmp_path):
    """The held-out settings (one eval section), the cost model's attention ratio and a loss's options (typed,
    algorithm.loss_options) moved: the old names still load (one warning each), from the command line too, and a
    checkpoint's saved config reads as what the run had, with no option of another loss."""
    from rlkit.cli import _nested_overrides, _overrides, build_parser
    from rlkit.config import load_config, translate_renamed

    parser, types = build_parser()
    args, extra = parser.parse_known_args(["train", "--algorithm.loss_options.epsilon_high=0.28", "--data.eval_size=7",
                                           "--optim.attention_cost=0.5", "--bogus=1"])
    args.nested, rest = _nested_overrides(extra, types)
    assert rest == ["--bogus=1"]  # still an error for the CLI
    with pytest.raises(ConfigError, match="--data.eval_size takes its value after '='"):
        _nested_overrides(["--algorithm.loss_options.kl_coef=1", "--data.eval_size"][1:], types)
    with caplog.at_level("WARNING", logger="rlkit"):
        cfg = load_config(None, _overrides(args, types))
    assert cfg.algorithm.loss_options == {"epsilon_high": 0.28} and cfg.eval.size == 7
    assert cfg.parallel.cost_model.attention == 0.5
    assert "'data.eval_size' is now 'eval.size'" in caplog.text and "'optim.attention_cost'" in caplog.text
    old_ppo = {"algorithm": {"loss": "ppo_clip", "loss_kwargs": {}, "epsilon_low": 0.2, "epsilon_high": 0.28,
                             "dual_clip": 0.0, "kl_coef": 0.0}, "data": {"eval": "x", "eval_size": 3},
               "train": {"eval_every": 2, "steps": 4}}
    translate_renamed(old_ppo, "ckpt", saved=True)
    assert old_ppo["algorithm"] == {"loss": "ppo_clip", "loss_options": {"epsilon_low": 0.2, "epsilon_high": 0.28,
                                                                         "dual_clip": 0.0, "kl_coef": 0.0}}
    assert old_ppo["eval"] == {"data": "x", "size": 3, "every": 2} and old_ppo["train"] == {"steps": 4}
    old_drpo = {"algorithm": {"loss": "drpo", "loss_kwargs": {"lam": 0.5}, "epsilon_low": 0.2, "kl_coef": 0.0}}
    translate_renamed(old_drpo, "ckpt", saved=True)
    assert old_drpo["algorithm"] == {"loss": "drpo", "loss_options": {"lam": 0.5}}
    both = tmp_path / "both.yaml"  # one file giving the option under both names, differently
    both.write_text("algorithm: {kl_coef: 0.1, loss_options: {kl_coef: 0.2}}\n")
    with pytest.raises(ConfigError, match="algorithm.kl_coef: 0.1 disagrees with each other or with "
                                          "algorithm.loss_options.kl_coef"):
        load_config(both)
