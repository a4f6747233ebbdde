"""The distributed engine resolved from the launcher's environment (rlkit.trainers.backends.resolve_backend): what
accelerate's config files export, read before any model loads; every setting rlkit cannot honour is one error."""

import json

import pytest

from rlkit.config import Config, ConfigError
from rlkit.trainers.backends import check_resume, resolve_backend

DS = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}


def resolve(env, cuda=False, **optim):
    cfg = Config()
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return resolve_backend(cfg, env, cuda=cuda)


def test_launcher_environment_decides_the_engine():
    assert resolve({}).type == "single" and resolve({"WORLD_SIZE": "2"}).type == "ddp"
    b = resolve({**DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert (b.type, b.zero_stage, b.world_size, b.num_machines, b.dp, b.sharded) == ("deepspeed", 3, 4, 2, 4, True)
    assert b.record()["mixed_precision"] == "bf16" and not b.consolidated
    assert resolve({**DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}).sharded is False
    f = resolve(FSDP)
    assert (f.type, f.sharded, f.reshard_after_forward, f.wrap) == ("fsdp2", True, True, None)
    assert resolve({**FSDP, "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}).wrap == []
    assert resolve({**FSDP, "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, Foo"}).wrap == ["LlamaDecoderLayer",
                                                                                              "Foo"]


def test_deepspeed_config_file_is_read_and_checked(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "gradient_clipping": "auto"}))
    b = resolve({**DS, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)})
    assert (b.zero_stage, b.ds_config_file) == (3, str(path))
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}))
    assert resolve({**DS, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}, max_grad_norm=1.0).zero_stage == 2
    with pytest.raises(ConfigError, match=r"deepspeed_config_file .*ds\.json sets gradient_clipping 1 but "
                                          r"optim\.max_grad_norm is 0\.5"):
        resolve({**DS, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}, max_grad_norm=0.5)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve({**DS, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)})


@pytest.mark.parametrize("env,match", [
    ({**DS, "ACCELERATE_GRADIENT_CLIPPING": "0.3"}, r"gradient_clipping 0\.3 but optim\.max_grad_norm is 1"),
    ({**DS, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "sets gradient_accumulation_steps 4: rlkit plans"),
    ({**DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, "ZeRO stage 0 is not supported"),
    ({**DS, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offload_optimizer to 'cpu' needs CUDA"),
    ({**FSDP, "FSDP_VERSION": "1"}, "FSDP version 1: rlkit trains with FSDP2"),
    ({**FSDP, "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "SIZE_BASED_WRAP is not supported"),
    ({**FSDP, "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params: true needs CUDA"),
    ({**FSDP, "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "model.gradient_checkpointing"),
    ({**FSDP, **DS}, "both DeepSpeed and FSDP"),
    ({"ACCELERATE_USE_MEGATRON_LM": "true"}, "Megatron-LM"),
])
def test_what_cannot_run_as_asked_is_an_error(env, match):
    with pytest.raises(ConfigError, match=match):
        resolve(env)


def test_offload_is_accepted_where_there_is_cuda():
    assert resolve({**FSDP, "FSDP_OFFLOAD_PARAMS": "true"}, cuda=True).offload_params is True
    assert resolve({**DS, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, cuda=True).zero_stage == 2


def test_missing_deepspeed_is_an_error_not_ddp(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match="deepspeed is not installed"):
        resolve(DS)


def test_resume_across_engines():
    fsdp = resolve(FSDP)
    assert check_resume(fsdp, {"type": "ddp", "world_size": 4}, 4, "ck") == [
        "resume: the checkpoint was written under ddp, this run is fsdp2 (its state is consolidated: it loads exactly)"]
    assert check_resume(resolve({"WORLD_SIZE": "2"}), None, 1, "ck") == []  # single -> ddp: same format
    z3 = resolve({**DS, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    assert check_resume(z3, {"type": "deepspeed", "zero_stage": 3}, 4, "ck") == []
    for saved, world in (({"type": "deepspeed", "zero_stage": 2}, 4), ({"type": "deepspeed", "zero_stage": 3}, 2),
                         ({"type": "fsdp2"}, 4)):
        with pytest.raises(ConfigError, match="per-process ZeRO partitions load only into the same engine"):
            check_resume(z3, saved, world, "ck")
    with pytest.raises(ConfigError, match="written by DeepSpeed ZeRO-3 on 4 process"):
        check_resume(fsdp, {"type": "deepspeed", "zero_stage": 3}, 4, "ck")
