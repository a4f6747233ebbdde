"""Set-up of a training run: everything the loop needs, built once from the config, and the checkpoint
state that makes a resumed run continue exactly."""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlkit import __version__, registry, rundir
from rlkit.config import Config, reference_coef, save_config, to_dict
from rlkit.data import PromptSampler, PromptSet, load_prompt_sets
from rlkit.errors import UserError
from rlkit.files import atomic_write_text
from rlkit.kernels import memory
from rlkit.logging import RunLogger, clean_row
from rlkit.models import load_policy, load_tokenizer, pick_dtype, resolve_model_path
from rlkit.parallel import calibrate as sp_calibrate
from rlkit.parallel import dist
from rlkit.parallel.layout import make_layout
from rlkit.parallel.micro import MicroBatching
from rlkit.parallel.plan import CostModel, attention_ratio
from rlkit.rewards import RewardSet
from rlkit.rewards.combine import GuardedReward, RewardContext, reward_inputs
from rlkit.rollout import Rollout, RolloutEngine, make_engine, make_rollout
from rlkit.rollout.factory import engine_entry, first_push, push_policy
from rlkit.rollout.text import make_reward_engines
from rlkit.rollout.thinking import ThinkingSplit
from rlkit.rundir import LOCK_NAME
from rlkit.trainers import backends
from rlkit.trainers import checkpoint as ckpt
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.checked import Preflight
from rlkit.trainers.stages import Stages, built_rewards


@dataclass
class Run:
    """Everything the loop needs, built once by ``setup`` from the config."""

    cfg: Config
    acc: Any  # accelerate.Accelerator
    run_dir: Path
    tokenizer: Any
    prepared: Any  # accelerate-prepared LogprobPolicy
    ref_model: LogprobPolicy | None  # None: no KL term, or LoRA (the reference is the adapters-off policy)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: RolloutEngine
    engine_caps: registry.EngineCaps  # the engine's declaration (remote, weight_sync, ...)
    rollout: Rollout  # one engine call per step, or segments carried across steps
    rewards: RewardSet
    stages: Stages  # the method's stages, resolved from the config
    train_set: PromptSet
    eval_set: PromptSet
    sampler: PromptSampler
    logger: RunLogger
    mbs: MicroBatching
    backend: backends.Backend = field(default_factory=backends.Backend)  # the distributed engine that trains
    run_id: str = ""  # kept across resumes; names the wandb run and the checkpoints' temporary directories
    data_fingerprint: str = ""  # of the training rows (rlkit.data.fingerprint), compared on resume
    inputs: dict = field(default_factory=dict)  # fingerprint of the model and tokenizer (rlkit.inputs), ditto
    start_step: int = 0
    before: dict = field(default_factory=dict)  # held-out results before training (restored on resume)
    after: dict = field(default_factory=dict)  # held-out results after the last step (in the final checkpoint)
    timers: dict = field(default_factory=dict)  # seconds per phase of the current step
    checkpointer: ckpt.Checkpointer | None = None  # save and restore of every piece of run state (state_pieces)
    thinking: ThinkingSplit | None = None  # the split of rollout.thinking.end with the run's tokenizer (None: no split)
    reward_engines: dict = field(default_factory=dict)  # the models the rewards use (reward_engines), closed at the end


def verifier_of(rewards: RewardSet):
    """``verify(prompts, samples) -> [0/1 or None]``: the run's correctness term on samples a rollout hook generated
    (under the term's watchdog and error policy); None when the run has none."""
    term = rewards.verifier()
    if term is None:
        return None
    guarded = GuardedReward(term, "a rollout hook's verdicts")

    def verify(prompts, samples):
        texts, completions, ids, columns, context = reward_inputs(prompts, samples)
        return guarded(texts, completions, ids, **columns, **context)

    return verify


def _setup_accelerator(cfg: Config, backend: backends.Backend):
    """The accelerator of the resolved backend, the training dtype (model.dtype) and console lines. Checks that
    accelerate runs the engine the backend says (a mismatch is a bug, never a silent fallback)."""
    from accelerate.utils import set_seed

    cuda = torch.cuda.is_available()
    dtype = pick_dtype(cfg.model.dtype, torch.device("cuda" if cuda else "cpu"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    acc = backends.make_accelerator(backend, precision, cuda)
    want = {"deepspeed": "DEEPSPEED", "single": "NO"}.get(backend.type, "MULTI_GPU" if cuda else "MULTI_CPU")
    got = str(acc.distributed_type).rsplit(".", 1)[-1]
    if got != want or acc.num_processes != backend.world_size:
        raise RuntimeError(f"accelerate runs {got} on {acc.num_processes} process(es), but the resolved backend is "
                           f"{backend.type} on {backend.world_size} ({want} expected)")
    set_seed(cfg.train.seed + acc.process_index)
    notes = [backend.describe() + f", training dtype {str(dtype).replace('torch.', '')}"]
    if backend.mixed_precision not in ("no", precision):
        notes.append(f"the launcher's mixed_precision {backend.mixed_precision} is not used: model.dtype "
                     f"({cfg.model.dtype}) gives {str(dtype).replace('torch.', '')} on this "
                     f"{'GPU' if cuda else 'CPU'}")
    return acc, dtype, notes


def _optimizer_and_schedule(cfg: Config, model, total_updates: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.optim.schedule]
    sched = get_scheduler(name, opt, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=max(total_updates, 1))
    return opt, sched


def sync_weights(run: Run) -> float:
    """Push the policy's weights to the rollout engine (its version goes up by one); returns seconds."""
    return push_policy(run.engine, run.engine_caps, run.acc.unwrap_model(run.prepared).model)


def _text_config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config()


def _shape(model) -> dict:
    """The decoder's shape as the SP time model reads it (heads, KV heads, head size, width, depth)."""
    text = _text_config(model)
    heads, hidden = int(text.num_attention_heads), int(text.hidden_size)
    return {"layers": int(text.num_hidden_layers), "hidden": hidden, "heads": heads,
            "kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(text, "head_dim", None) or hidden // heads),
            "intermediate": int(getattr(text, "intermediate_size", None) or 4 * hidden), "vocab": int(text.vocab_size)}


def _check_shared_lock(acc, checked: Preflight) -> None:
    """Every process sees the lock the main process took: they share one output_dir (the checkpoints rely on it)."""
    token = dist.broadcast_object(acc, checked.lock.token if checked.lock is not None else "")
    if acc.is_main_process or not token:
        return
    try:
        seen = (checked.run_dir / LOCK_NAME).read_text()
    except OSError:
        seen = ""
    if seen != token:
        raise UserError(f"output_dir {checked.run_dir}: process {acc.process_index} does not see the run directory "
                        "that process 0 locked; every process of a run must share output_dir (a shared filesystem "
                        "across nodes)")


def _start_run_dir(cfg: Config, acc, checked: Preflight, run_id: str, record: dict) -> None:
    """The run starts for real: (main process) clear an --overwrite'd run, write run.json and config.json."""
    run_dir = checked.run_dir
    if acc.is_main_process:
        try:
            if checked.overwrite:
                rundir.clear(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "run.json", json.dumps({"run_id": run_id, "rlkit": __version__,
                                                                "distributed": record}) + "\n")
            save_config(cfg, run_dir / "config.json")
        except OSError as e:
            raise rundir.unwritable(run_dir, e) from None
    acc.wait_for_everyone()


def setup(cfg: Config, checked: Preflight) -> Run:
    """Accelerator, model, optimizer, engine, data, rewards, stages (everything that can fail), then the run
    directory (written only now), logging, and a restored checkpoint, on the inputs ``checked``
    (rlkit.preflight.preflight, which holds the run directory's lock; ``rlkit.trainers.grpo.train`` releases it).
    The run uses the checked config, resolved, and the reward terms and stages the checks built."""
    cfg, backend = checked.adopt(cfg), checked.backend
    acc, dtype, notes = _setup_accelerator(cfg, backend)
    _check_shared_lock(acc, checked)
    run_id = dist.broadcast_object(acc, checked.run_id)  # one id: one temporary directory per checkpoint
    run_dir = checked.run_dir
    if acc.is_main_process:
        resolve_model_path(cfg.model.name_or_path)  # converts the embedded model once; other ranks find it cached
    acc.wait_for_everyone()
    layout = make_layout(acc, cfg.parallel.sp_size, cfg.parallel.sp_mode)
    model_path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model_path)
    train_set, eval_set = load_prompt_sets(cfg.data, cfg.eval, tokenizer, rows=checked.rows)  # prompt lengths: before the model
    hf_model = load_policy(model_path, torch.float32, gradient_checkpointing=cfg.model.gradient_checkpointing,
                           lora=cfg.model.lora)
    memory.apply(hf_model, cfg, sharded_params=backend.sharded)
    ref_model = None
    if reference_coef(cfg) > 0 and not cfg.model.lora.enabled:  # with LoRA the reference is adapters-off
        ref_model = LogprobPolicy(load_policy(model_path, dtype), cfg.optim.logprob_chunk,
                                  sp_groups=layout.groups).to(acc.device).eval()
        ref_model.requires_grad_(False)
    total_updates = cfg.train.steps * cfg.algorithm.mu * cfg.algorithm.minibatches
    made: dict = {}

    def make_optimizer(module):  # after sharding (FSDP2 replaces the parameters)
        made["optimizer"], made["scheduler"] = _optimizer_and_schedule(cfg, module, total_updates)
        return made["optimizer"]

    # the scheduler is not prepared (accelerate would step it once per process); checkpoints save it as JSON
    prepared, optimizer = backends.prepare(backend, acc, LogprobPolicy(hf_model, cfg.optim.logprob_chunk,
                                                                       sp_groups=layout.groups),
                                           make_optimizer, max_grad_norm=cfg.optim.max_grad_norm, dtype=dtype)
    scheduler = made["scheduler"]
    share = backends.param_share(prepared)
    notes.append(f"parameters held per process: {100 * share:.0f}%")
    engine = make_engine(cfg, model_path, policy=hf_model, tokenizer=tokenizer, device=acc.device, dtype=dtype,
                         lockstep=backend.sharded and backend.world_size > 1,
                         context=functools.partial(backends.whole_parameters, prepared))
    rewards = RewardSet.from_config(cfg.rewards, cfg.shaping, built_rewards(cfg, checked.built))
    stages = Stages.from_config(cfg, checked.built)
    hook = checked.built.get("rollout_hook") if checked.built else None
    rollout = make_rollout(cfg, engine, tokenizer, hook, verify=verifier_of(rewards), model_path=model_path,
                           device=acc.device)
    reward_engines = make_reward_engines(cfg, model_path, device=acc.device, dtype=dtype) if cfg.reward_engines else {}
    rewards.setup(RewardContext.here(acc.device, acc.process_index, acc.num_processes, dtype, tokenizer=tokenizer,
                                     max_new_tokens=cfg.rollout.max_new_tokens, engines=reward_engines))
    # run.json records the engine that really runs, with how much it shards
    _start_run_dir(cfg, acc, checked, run_id, {**backend.record(), "param_share": round(share, 4)})
    run = Run(
        cfg=cfg, acc=acc, run_dir=run_dir, tokenizer=tokenizer, prepared=prepared, ref_model=ref_model,
        optimizer=optimizer, scheduler=scheduler, engine=engine, engine_caps=engine_entry(cfg).caps, rollout=rollout, rewards=rewards, stages=stages,
        train_set=train_set, eval_set=eval_set,
        sampler=PromptSampler(len(train_set.prompts), seed=cfg.train.seed, shuffle=cfg.data.shuffle),
        logger=RunLogger(run_dir, enabled=acc.is_main_process, report_to=cfg.logging.report_to,
                         project=cfg.logging.wandb_project, config=to_dict(cfg), run_name=run_dir.name,
                         run_id=run_id),
        mbs=MicroBatching.from_config(cfg.optim, cfg.parallel.cost_model, attention_ratio(**_shape(hf_model)),
                                     layout), backend=backend,
        run_id=run_id,
        data_fingerprint=checked.data_fingerprint, inputs=checked.inputs,
        thinking=ThinkingSplit.for_tokenizer(cfg.rollout.thinking.end, tokenizer), reward_engines=reward_engines)
    for line in notes + checked.notices:
        run.logger.console(line)
    if train_set.skipped_long:
        run.logger.console(f"skipped {train_set.skipped_long} training prompts over {cfg.data.max_prompt_tokens} tokens")
    run.checkpointer = ckpt.Checkpointer(run_dir, acc, prepared, tokenizer, optimizer, scheduler,
                                         cfg.checkpoint.keep_last, state_pieces(run))
    row = restore(run, checked.resume_path) if checked.resume_path is not None else None
    if layout.sp > 1 and layout.mode != "fixed":
        _fit_cost_model(run, hf_model, dtype)
    if checked.resume_path is None:
        first_push(engine, run.engine_caps, lambda: run.acc.unwrap_model(run.prepared).model)
    run.logger.start_at(run.start_step if checked.resume_path is not None else None, row)
    return run


def _fit_cost_model(run: Run, hf_model, dtype) -> None:
    """The adaptive/flex SP time model: a resumed run starts from the one its checkpoint saved (the same plans, so
    the resumed run is exact) and measures only what it lacks (a degree the saved run did not use); a new run
    measures it all (rlkit.parallel.calibrate); parallel.cost_model values win."""
    cfg, mbs = run.cfg, run.mbs
    given = cfg.parallel.cost_model.given()
    if mbs.calibrated:  # restored: the saved values count as given, the config's on top
        saved = mbs.cost.to_dict()
        given = {**{k: saved[k] for k in ("a", "b", "overhead")}, **given,
                 "comm": {**saved["comm"], **{str(k): v for k, v in (given.get("comm") or {}).items()}}}
    shape = _shape(hf_model)
    mbs.cost = sp_calibrate.calibrate(
        run.prepared, run.acc, mbs.layout, budget=mbs.micro_batch_tokens, ratio=mbs.cost_b, layers=shape["layers"],
        heads=shape["heads"], kv_heads=shape["kv_heads"], head_dim=shape["head_dim"], vocab=shape["vocab"],
        checkpointing=cfg.model.gradient_checkpointing, dtype=dtype, given=given)
    mbs.calibrated = True
    run.logger.console(sp_calibrate.describe(mbs.cost))


def state_pieces(run: Run) -> list[ckpt.Piece]:
    """Every piece of run state a checkpoint holds besides the model, optimizer, scheduler and random states, in
    restore order: the one place to add one (rlkit.trainers.checkpoint.Checkpointer). The pieces hold the run weakly:
    the run holds them, and a cycle would keep the run (and its colocated vLLM engine) alive until a garbage
    collection at any later time, whose teardown of vLLM's process-wide groups breaks an engine started since."""
    cfg, mbs = run.cfg, run.mbs
    run = weakref.proxy(run)

    def set_cost(value) -> None:
        mbs.cost, mbs.calibrated = CostModel.from_dict(value), True  # the time model it planned with: same plans

    return [
        ckpt.Piece("run_id", lambda: run.run_id),
        ckpt.Piece("policy_version", lambda: run.engine.version, lambda v: setattr(run.engine, "version", v - 1)),
        ckpt.Piece("distributed", run.backend.record),
        ckpt.Piece("inputs", lambda: run.inputs),
        ckpt.Piece("sampler", run.sampler.state_dict, run.sampler.load_state_dict),
        ckpt.Piece("stages", run.stages.state_dict, run.stages.load_state_dict),
        ckpt.Piece("rollout", run.rollout.state_dict, run.rollout.load_state_dict, per_process=True,
                   what="the rollout state (segment pools)", when=any),
        ckpt.Piece("eval_before", lambda: run.before, lambda v: setattr(run, "before", v or {})),
        ckpt.Piece("rewards", run.rewards.state_dict, run.rewards.load_state_dict, per_process=True,
                   what="the reward terms' state", when=any),
        ckpt.Piece("eval_after", lambda: run.after, lambda v: setattr(run, "after", v or {})),
        ckpt.Piece("world_size", lambda: run.acc.num_processes),
        ckpt.Piece("config", lambda: to_dict(cfg)),
        ckpt.Piece("parallel_cost", lambda: mbs.cost.to_dict() if mbs.calibrated else None, set_cost,
                   when=lambda v: bool(v) and mbs.sp_mode != "fixed"),
        ckpt.Piece("data", lambda: {"train_rows": run.sampler.size, "fingerprint": run.data_fingerprint}),
    ]


def save(run: Run, step: int, row: dict) -> None:
    """A checkpoint after ``step`` steps (collective: every rank calls it); ``row`` is the step's metrics row,
    restored into metrics.jsonl if a kill lands between the checkpoint and the row."""
    run.checkpointer.save(step, metrics_row=clean_row(row))


def _apply_optim_config(cfg: Config, optimizer, scheduler) -> None:
    """After a restore, the config's lr, betas and weight decay hold (a resumed run may change them): the
    scheduler's base lr becomes optim.lr and the current lr is recomputed from it. Unchanged settings give
    the saved values back exactly."""
    scheduler.base_lrs = [cfg.optim.lr for _ in scheduler.base_lrs]
    for group, lam in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group.update(initial_lr=cfg.optim.lr, lr=cfg.optim.lr * lam(scheduler.last_epoch),
                     betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def restore(run: Run, path: Path) -> dict | None:
    """Load a checkpoint into the run (every rank); returns the metrics row saved with it."""
    state, lines = run.checkpointer.restore(path)
    for line in lines:
        run.logger.console(line)
    _apply_optim_config(run.cfg, run.optimizer, run.scheduler)
    run.start_step = state["step"]
    if run.start_step < run.cfg.train.steps:  # the final evaluation ran in the last step: not yet
        run.after = {}
    sync_weights(run)  # the engine (a server too) gets the restored policy under its saved version
    run.logger.console(f"resumed from {path} at step {run.start_step}")
    return state.get("metrics_row")
