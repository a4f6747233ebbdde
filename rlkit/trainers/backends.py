"""Training backends: which distributed engine trains the policy, decided before any model loads, and the few
operations the update needs from it.

The launcher announces the engine (``accelerate launch --config_file examples/accelerate/zero3.yaml`` exports
``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, ``FSDP_VERSION``, ...; ``torchrun`` exports only
the world). ``resolve_backend`` reads that environment and the config and returns a ``Backend``; everything it
cannot honour is a ``ConfigError`` in one line, raised by preflight before any model loads. What it resolves is
the engine that runs, on CPU (gloo) as on CUDA: nothing falls back silently.

- ``single`` / ``ddp``: accelerate's ``prepare`` (DistributedDataParallel on several processes).
- ``deepspeed``: ZeRO stage 1, 2 or 3 through accelerate's DeepSpeed plugin. rlkit owns what the DeepSpeed config
  would otherwise decide behind its back: one micro-batch per ``backward`` (``train_micro_batch_size_per_gpu: 1``,
  no dataloader needed), ``gradient_accumulation_steps: 1`` with the accumulation boundary marked on the last
  micro-batch of each minibatch (rlkit plans a varying number of micro-batches per minibatch, so a fixed count in
  the config cannot describe it), and ``gradient_clipping`` = ``optim.max_grad_norm`` (an explicit conflicting
  value in the accelerate or DeepSpeed config is an error). On a machine without CUDA the process group is gloo.
- ``fsdp2``: torch's ``fully_shard`` applied by rlkit itself, on CPU and CUDA alike, from the same accelerate config
  keys (``fsdp_version: 2``, ``fsdp_reshard_after_forward``, ``fsdp_auto_wrap_policy``,
  ``fsdp_transformer_layer_cls_to_wrap``, ``fsdp_offload_params``). accelerate applies FSDP only to CUDA-class
  devices, and one implementation that runs everywhere is the one the CPU tests prove.

``backward``, ``optimizer_step`` and the checkpoint functions in ``rlkit.trainers.state_io`` dispatch on the
prepared module's type (a ``DeepSpeedEngine``, an ``FSDPModule``, else accelerate's wrapper).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlkit.config import ConfigError

KINDS = ("single", "ddp", "deepspeed", "fsdp2")
_TRUE = ("1", "true", "yes")


def _flag(env, key: str, default: bool = False) -> bool:
    value = env.get(key)
    return default if value in (None, "") else value.strip().lower() in _TRUE


@dataclass(frozen=True)
class Backend:
    """The resolved training engine (recorded in run.json and every checkpoint as ``distributed``)."""

    type: str = "single"  # one of KINDS
    world_size: int = 1
    num_machines: int = 1
    sp: int = 1
    dp: int = 1
    zero_stage: int | None = None  # deepspeed
    ds_config_file: str | None = None  # deepspeed: the user's JSON config, when the accelerate config names one
    reshard_after_forward: bool | None = None  # fsdp2
    wrap: list[str] | None = None  # fsdp2: module classes sharded as their own units (None: the model's decoder layers)
    offload_params: bool | None = None  # fsdp2 (CUDA only)
    mixed_precision: str = "no"  # what the launcher asked for (the training dtype is model.dtype's)
    notes: list[str] = field(default_factory=list)  # console lines (settings rlkit overrides or ignores)

    @property
    def sharded(self) -> bool:
        """Whether parameters are sharded across processes (ZeRO-3, FSDP2): whole tensors exist only when gathered."""
        return self.type == "fsdp2" or (self.type == "deepspeed" and (self.zero_stage or 0) >= 3)

    @property
    def consolidated(self) -> bool:
        """Whether checkpoints hold whole tensors (rlkit's own format: any world size and these engines can load
        them); DeepSpeed writes its own per-process shards."""
        return self.type != "deepspeed"

    def record(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "notes"}
        return out

    def describe(self) -> str:
        what = {"single": "one process", "ddp": "DDP", "fsdp2": "FSDP2 (fully_shard)"}.get(self.type)
        if self.type == "deepspeed":
            what = f"DeepSpeed ZeRO-{self.zero_stage}"
        return (f"distributed: {what}, {self.world_size} process(es) on {self.num_machines} machine(s), "
                f"sequence-parallel {self.sp} x data-parallel {self.dp}")


def _ds_file_config(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"the accelerate config's deepspeed_config_file {path}: cannot read it ({e.strerror})") \
            from None
    except ValueError as e:
        raise ConfigError(f"the accelerate config's deepspeed_config_file {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the accelerate config's deepspeed_config_file {path}: expected a JSON object")
    return data


def _explicit(value) -> bool:
    return value not in (None, "", "auto", "none")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_deepspeed(cfg, env, cuda) -> dict:
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("the launcher asks for DeepSpeed (distributed_type: DEEPSPEED in the accelerate config) but "
                          "deepspeed is not installed: `make setup` installs it (or see README 'Installing by hand')")
    file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    file = file if _explicit(file) else None
    ds = _ds_file_config(file) if file else {}
    where = f"deepspeed_config_file {file}" if file else "the accelerate config"
    zero = ds.get("zero_optimization") or {}
    stage = zero.get("stage", env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))
    try:
        stage = int(stage)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: ZeRO stage {stage!r} is not a number (0, 1, 2 or 3)") from None
    if stage not in (1, 2, 3):
        raise ConfigError(f"{where}: ZeRO stage {stage} is not supported by rlkit; use 1, 2 or 3 (stage 0 is DDP: "
                          "launch without a DeepSpeed config)")
    clip = ds.get("gradient_clipping", env.get("ACCELERATE_GRADIENT_CLIPPING"))
    if _explicit(clip):
        try:
            clip_value = float(clip)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: gradient_clipping {clip!r} is not a number") from None
        if not math.isclose(clip_value, cfg.optim.max_grad_norm, rel_tol=1e-9, abs_tol=0.0):
            raise ConfigError(f"{where} sets gradient_clipping {clip_value:g} but optim.max_grad_norm is "
                              f"{cfg.optim.max_grad_norm:g}: rlkit clips with optim.max_grad_norm under every engine; "
                              "remove gradient_clipping from the DeepSpeed settings or make the two equal")
    gas = ds.get("gradient_accumulation_steps", env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"))
    if _explicit(gas) and str(gas) != "1":
        raise ConfigError(f"{where} sets gradient_accumulation_steps {gas}: rlkit plans the micro-batches of each "
                          "minibatch itself (optim.micro_batch_tokens, algorithm.minibatches) and steps once per "
                          "minibatch; remove it or set it to 1")
    micro = ds.get("train_micro_batch_size_per_gpu")
    if _explicit(micro) and str(micro) != "1":
        raise ConfigError(f"{where} sets train_micro_batch_size_per_gpu {micro}: rlkit feeds one packed micro-batch "
                          "per backward; remove it or set it to 1")
    if not (cuda if cuda is not None else _cuda()):
        for key, value in (("offload_optimizer", zero.get("offload_optimizer")), ("offload_param",
                                                                                  zero.get("offload_param"))):
            device = (value or {}).get("device") if isinstance(value, dict) else None
            device = device or env.get(f"ACCELERATE_DEEPSPEED_{key.upper()}_DEVICE")
            if _explicit(device):
                raise ConfigError(f"{where}: {key} to {device!r} needs CUDA (on a CPU the parameters already live in "
                                  "host memory); remove it")
    return {"zero_stage": stage, "ds_config_file": file}


def _resolve_fsdp(cfg, env, cuda) -> dict:
    version = env.get("FSDP_VERSION", "1")
    if str(version).strip() != "2":
        raise ConfigError(f"the accelerate config asks for FSDP version {version}: rlkit trains with FSDP2 (torch "
                          "fully_shard); set fsdp_version: 2 (examples/accelerate/fsdp2.yaml)")
    policy = (env.get("FSDP_AUTO_WRAP_POLICY") or "TRANSFORMER_BASED_WRAP").strip().upper()
    if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise ConfigError(f"fsdp_auto_wrap_policy {policy} is not supported by rlkit's FSDP2; use "
                          "TRANSFORMER_BASED_WRAP (each decoder layer is a unit) or NO_WRAP (one unit)")
    classes = [c.strip() for c in (env.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or "").split(",") if c.strip()]
    offload = _flag(env, "FSDP_OFFLOAD_PARAMS")
    if offload and not (cuda if cuda is not None else _cuda()):
        raise ConfigError("fsdp_offload_params: true needs CUDA (on a CPU the parameters already live in host "
                          "memory); set it to false")
    if _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"):
        raise ConfigError("fsdp_activation_checkpointing in the accelerate config: rlkit's switch is "
                          "model.gradient_checkpointing (it works under every engine); set that instead")
    notes = []
    if _flag(env, "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        notes.append("fsdp_cpu_ram_efficient_loading ignored: every process loads the whole model, then rlkit shards "
                     "it")
    state_type = (env.get("FSDP_STATE_DICT_TYPE") or "").upper()
    if state_type and state_type != "FULL_STATE_DICT":
        notes.append(f"fsdp_state_dict_type {state_type} ignored: rlkit checkpoints hold full, consolidated tensors "
                     "(safetensors), loadable at any world size")
    return {"reshard_after_forward": _flag(env, "FSDP_RESHARD_AFTER_FORWARD", True),
            "wrap": (classes or None) if policy == "TRANSFORMER_BASED_WRAP" else [], "offload_params": offload,
            "notes": notes}


def resolve_backend(cfg, env=None, *, cuda: bool | None = None) -> Backend:
    """The engine the launcher's environment and the config ask for, or a ConfigError saying why it cannot run.
    Pure (reads ``env``, default ``os.environ``; ``cuda`` None: asked of torch only when a setting depends on it);
    preflight calls it before any model loads."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)) or world)
    machines = max(1, world // max(local, 1))
    sp = cfg.parallel.sp_size
    common = dict(world_size=world, num_machines=machines, sp=sp, dp=max(world // sp, 1),
                  mixed_precision=(env.get("ACCELERATE_MIXED_PRECISION") or "no").lower())
    if _flag(env, "ACCELERATE_USE_MEGATRON_LM"):
        raise ConfigError("the accelerate config asks for Megatron-LM, which rlkit does not drive; use DeepSpeed "
                          "ZeRO or FSDP2 (examples/accelerate/)")
    if _flag(env, "ACCELERATE_USE_DEEPSPEED") and _flag(env, "ACCELERATE_USE_FSDP"):
        raise ConfigError("the launcher asks for both DeepSpeed and FSDP; choose one accelerate config")
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return Backend(type="deepspeed", **common, **_resolve_deepspeed(cfg, env, cuda))
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return Backend(type="fsdp2", **common, **_resolve_fsdp(cfg, env, cuda))
    return Backend(type="ddp" if world > 1 else "single", **common)


def check_resume(backend: Backend, saved: dict | None, world_then: int, path) -> list[str]:
    """A checkpoint written under another engine or world size: fine when both sides use rlkit's consolidated
    format (a console line names the engine change; the world size is reported by the caller); refused in one line
    when DeepSpeed's per-process shards are on either side."""
    then = (saved or {}).get("type") or ("ddp" if world_then > 1 else "single")
    stage = (saved or {}).get("zero_stage")
    now = backend.type
    if "deepspeed" in (then, now):
        if then == now and stage == backend.zero_stage and world_then == backend.world_size:
            return []

        def name(kind, zero, world):
            label = f"DeepSpeed ZeRO-{zero}" if kind == "deepspeed" else {"fsdp2": "FSDP2", "ddp": "DDP"}.get(
                kind, "one process")
            return f"{label} on {world} process(es)"

        raise ConfigError(f"--resume {path}: the checkpoint was written by {name(then, stage, world_then)}, this run "
                          f"is {name(now, backend.zero_stage, backend.world_size)}; DeepSpeed's per-process ZeRO "
                          "partitions load only into the same engine, stage and process count. Resume with those")
    if then != now and {then, now} != {"single", "ddp"}:
        return [f"resume: the checkpoint was written under {then}, this run is {now} (its state is consolidated: it "
                "loads exactly)"]
    return []


# --- the accelerator and the prepared model -------------------------------------------------------------------

def _quiet_engine_deprecations() -> None:
    """DeepSpeed calls torch.distributed's old collective names (``reduce_scatter_tensor``, ``all_gather_into_tensor``),
    deprecated in torch 2.13. Python shows a warning once per call site until a ``catch_warnings`` block (autocast,
    checkpointing) resets the registry, so the same two lines came back at every step: 235 KB of stderr in a 2-step
    ZeRO-3 run. They say nothing a user can act on; these two are silenced, nothing else."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is "
                            "deprecated", category=FutureWarning)


def make_accelerator(backend: Backend, precision: str, cuda: bool):
    """accelerate's Accelerator for ``backend``: DeepSpeed's plugin from the launcher's settings (gloo on CPU),
    otherwise DDP / one process (FSDP2's variables hidden: rlkit shards the model itself)."""
    from accelerate import Accelerator

    if backend.type in ("deepspeed", "fsdp2"):
        _quiet_engine_deprecations()
    if backend.type == "deepspeed":
        from accelerate.utils import InitProcessGroupKwargs

        handlers = [] if cuda else [InitProcessGroupKwargs(backend="gloo")]
        return Accelerator(cpu=False, mixed_precision=precision, kwargs_handlers=handlers)
    if backend.type == "fsdp2":
        # rlkit shards the model itself: accelerate must not wrap it, and transformers must not load it the FSDP way
        # (with FSDP_CPU_RAM_EFFICIENT_LOADING only rank 0 would read the weights, the others keep zeros)
        for key in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
            os.environ.pop(key, None)
    return Accelerator(cpu=not cuda, mixed_precision=precision)


def _ds_settings(acc, backend: Backend, max_grad_norm: float, n_params: int) -> None:
    """The DeepSpeed config keys rlkit owns (see the module docstring), set before the engine is built. ZeRO's
    communication buckets (``reduce_bucket_size``, ``allgather_bucket_size``, 5e8 elements by default) are capped at
    the model's parameter count unless the config sets them: a bucket larger than the model only allocates and
    zeroes memory (on CPU a 2 GB fp32 buffer per process cost a 2-step run of a small model 28 s of its 35 s)."""
    plugin = acc.state.deepspeed_plugin
    conf = plugin.deepspeed_config
    conf["train_micro_batch_size_per_gpu"] = 1
    conf["gradient_accumulation_steps"] = 1
    conf["train_batch_size"] = backend.world_size
    conf["gradient_clipping"] = float(max_grad_norm)
    conf.setdefault("zero_allow_untested_optimizer", True)
    zero = conf.setdefault("zero_optimization", {})
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if not _explicit(zero.get(key)):
            zero[key] = int(min(5e8, max(n_params, 1)))
    plugin.gradient_accumulation_steps = 1
    plugin.gradient_clipping = float(max_grad_norm)


def _wrap_classes(policy, backend: Backend) -> set[str]:
    if backend.wrap is not None:
        return set(backend.wrap)
    base = policy.model.get_base_model() if hasattr(policy.model, "get_base_model") else policy.model
    return set(getattr(base, "_no_split_modules", None) or [])


def _fully_shard(policy, backend: Backend, device, dtype) -> None:
    """FSDP2: every module of a wrapped class (the decoder layers) is a unit, the root (LogprobPolicy: embeddings,
    final norm, LM head, tied or not) another. Mixed precision: parameters cast to ``dtype`` for compute, gradients
    reduced in fp32."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (backend.world_size,))
    kwargs: dict = {"mesh": mesh, "reshard_after_forward": bool(backend.reshard_after_forward)}
    if dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if backend.offload_params:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    wrap = _wrap_classes(policy, backend)
    units = [m for m in policy.modules() if type(m).__name__ in wrap]
    if wrap and not units:
        raise ConfigError(f"FSDP2: the model has no module of class {sorted(wrap)} to shard as a unit "
                          "(fsdp_transformer_layer_cls_to_wrap)")
    policy.to(device)
    # every process starts from rank 0's values, as DDP and DeepSpeed do: anything initialised at random after
    # loading (LoRA's A matrices, seeded per process) would otherwise differ between the shards
    with torch.no_grad():
        for t in policy.state_dict().values():
            torch.distributed.broadcast(t, src=0)
    for module in units:
        fully_shard(module, **kwargs)
    fully_shard(policy, **kwargs)


def _root_forward(policy, device) -> None:
    """One tiny no-grad forward through the root, so FSDP2 initialises it as the root before the hf engine's
    generate() calls the inner model (FSDP2 requires the root's forward to run first)."""
    import torch

    from rlkit.parallel.batch import collate
    from rlkit.records import Sample

    with torch.no_grad():
        policy(collate([Sample([0], [0], [], "stop", "", 0)], 0).to(device))


def prepare(backend: Backend, acc, policy, make_optimizer, *, max_grad_norm: float, dtype):
    """Shard/wrap ``policy`` (a LogprobPolicy) for ``backend`` and build its optimizer with ``make_optimizer(module)``
    (after sharding: FSDP2 replaces the parameters). Returns (prepared module, optimizer)."""
    if backend.type == "fsdp2":
        _fully_shard(policy, backend, acc.device, dtype)
        optimizer = make_optimizer(policy)
        _root_forward(policy, acc.device)
        return policy, optimizer
    if backend.type == "deepspeed":
        _ds_settings(acc, backend, max_grad_norm, sum(p.numel() for p in policy.parameters()))
    return acc.prepare(policy, make_optimizer(policy))


def param_share(prepared) -> float:
    """The fraction of the policy's parameter elements this process holds (1.0 unsharded; about 1/W when ZeRO-3 or
    FSDP2 really shard them: a tiny model under ZeRO-3's default persistence threshold keeps everything whole)."""
    held = total = 0
    for p in prepared.parameters():
        if hasattr(p, "ds_numel"):  # ZeRO-3: the whole size, and this process's partition
            total += p.ds_numel
            held += p.ds_tensor.numel() if getattr(p, "ds_tensor", None) is not None else p.ds_numel
        elif hasattr(p, "to_local"):  # FSDP2 DTensor
            total += p.numel()
            held += p.to_local().numel()
        else:
            total += p.numel()
            held += p.numel()
    return held / max(total, 1)


def is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_deepspeed(module) -> bool:
    return type(module).__name__ == "DeepSpeedEngine" and hasattr(module, "set_gradient_accumulation_boundary")


def backward(acc, prepared, loss, last: bool) -> None:
    """Backward of one micro-batch; ``last`` marks the minibatch's accumulation boundary (DeepSpeed reduces and
    may step only there)."""
    if is_deepspeed(prepared):
        prepared.set_gradient_accumulation_boundary(last)
        prepared.backward(loss)
    elif is_fsdp(prepared):
        loss.backward()
    else:
        acc.backward(loss)


def optimizer_step(acc, prepared, optimizer, max_grad_norm: float, *, skip: bool = False) -> tuple[float, bool]:
    """Clip to ``max_grad_norm`` (0: no clipping) and step, unless ``skip`` (a non-finite loss this minibatch) or the
    gradient norm is not finite: then the gradients are dropped and nothing is applied. Returns (the gradient norm
    before clipping, whether the step was applied). DeepSpeed clips inside its own step with the same value
    (gradient_clipping, set by ``prepare``) and reports the norm only after stepping: there a non-finite norm is
    found after the fact (the caller stops the run; no checkpoint is written)."""
    if is_deepspeed(prepared):
        if skip:
            prepared.zero_grad()
            return float("nan"), False
        prepared.step()
        norm = prepared.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, math.isfinite(norm)
    if is_fsdp(prepared):
        import torch

        params = [p for p in prepared.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    else:
        norm = float(acc.clip_grad_norm_(prepared.parameters(), max_grad_norm or float("inf")))
    applied = not skip and math.isfinite(norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


@contextlib.contextmanager
def whole_parameters(prepared):
    """For the duration, the root's own parameters (embeddings, norm, LM head) are whole on every rank under FSDP2,
    so the inner model's generate() can run (its decoder layers gather themselves); a no-op otherwise."""
    if not is_fsdp(prepared):
        yield
        return
    prepared.unshard()
    try:
        yield
    finally:
        prepared.reshard()
