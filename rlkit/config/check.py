"""Checking a config, and resolving it: both read the tree (rlkit.config.schema) and change nothing in it.

``problems`` lists what is wrong (every key, range, choice, component name and option, and the checks across
sections), ``validate`` raises the first as a ConfigError naming the key and the source; ``resolve`` returns a copy
with every ``auto`` made explicit and every component's options coerced and completed with its defaults: what the
run uses and what its ``config.json`` records. Nothing is built here: the run's set-up builds the components from
the resolved tree (rlkit.trainers.stages.build_components), so a tree edited after loading builds what it says.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from rlkit import registry
from rlkit.config.schema import (
    Config,
    CostModelConfig,
    RolloutConfig,
    components,
    in_range,
    range_words,
    world_size,
)
from rlkit.registry import ConfigError
from rlkit.rewards.combine import RewardError, check_weights


class _Problems(list):
    """The problems found so far, each prefixed with the source."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def need(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.append(f"{self.source}: {msg}")
        return bool(cond)

    def run(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)``; a ConfigError it raises becomes a problem (and the result None)."""
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            self.append(str(e))
            return None


def validate(cfg: Config, source: str = "config") -> None:
    """Raise the first problem of ``cfg`` (``problems``) as a ConfigError; change nothing."""
    found = problems(cfg, source)
    if found:
        raise ConfigError(found[0])


def problems(cfg: Config, source: str = "config") -> list[str]:
    """Every problem of ``cfg`` found before any model loads, in the order of the sections; reads only. A check
    whose inputs already failed (an unknown component, a range) is left out rather than reported twice."""
    out = _Problems(source)
    _check_ranges(cfg, "", out)
    for i, term in enumerate(cfg.rewards):
        _check_ranges(term, f"rewards[{i}].", out)
    if out:
        return out
    r, world = cfg.rollout, world_size()
    out.need(r.prompts_per_step % world == 0, f"'rollout.prompts_per_step' ({r.prompts_per_step}) is the global "
             f"batch and must divide by the {world} processes")
    out.need(r.segments == 1 or cfg.filter is None,
             "'rollout.segments' > 1 cannot be combined with a `filter` (released groups vary per step)")
    if cfg.rollout_hook is not None:
        out.need(not r.budget_forcing.budgets, "'rollout_hook' and 'rollout.budget_forcing.budgets' both set: budget "
                 "forcing is a rollout hook, configure one of them")
        out.need(r.segments == 1, "'rollout_hook' cannot be combined with rollout.segments > 1 (segment rollouts carry "
                 "unfinished samples across steps)")
    out.need(len(cfg.optim.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in cfg.optim.betas),
             f"'optim.betas' must be two numbers in [0, 1), got {cfg.optim.betas}")
    longest_new = max(r.max_new_tokens, cfg.eval.max_new_tokens)
    longest = cfg.data.max_prompt_tokens + longest_new
    out.need(r.max_model_len == 0 or r.max_model_len >= longest,
             f"'rollout.max_model_len' ({r.max_model_len}) is smaller than data.max_prompt_tokens + the longest "
             f"completion ({cfg.data.max_prompt_tokens} + {longest_new} = {longest}); raise it or leave it at 0 (= "
             "their sum)")
    _check_parallel(cfg, world, out)
    engine = out.run(_resolve, "engine", r.engine, "rollout.engine", source)
    if engine is not None:
        out.run(registry.check_options, engine, r.engine_options, "rollout.engine_options", source)
        for problem in engine.caps.validate(cfg) if engine.caps.validate else ():
            out.need(False, problem)
        out.need(r.async_steps == 0 or engine.caps.concurrent,
                 f"'rollout.async_steps' ({r.async_steps}) needs an engine that generates while the trainer trains "
                 f"(e.g. vllm_server); the {r.engine!r} engine shares the device with training and stays synchronous")
    _check_forcing(r, out)
    _check_thinking(r, out)
    _check_reward_engines(cfg, out)
    cap = cfg.eval.max_new_tokens or r.max_new_tokens
    bad = [b for b in cfg.eval.budgets if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b < cap]
    out.need(not bad, f"'eval.budgets' must be whole numbers of tokens from 1 to below the evaluation cap ({cap}), "
             f"got {bad}")
    n_seq = r.group_size * r.prompts_per_step // world
    out.need(n_seq % cfg.algorithm.minibatches == 0, f"'algorithm.minibatches' ({cfg.algorithm.minibatches}) must "
             f"divide the {n_seq} sequences each of the {world} process(es) trains on per step")
    bad_sinks = [s for s in cfg.logging.report_to if s not in ("wandb",)]
    out.need(not bad_sinks, f"'logging.report_to' has unknown sink {bad_sinks}; valid: wandb")
    rewards = _check_components(cfg, out)
    if rewards is not None:
        _check_algorithm(cfg, rewards, world, out)
    return out


def _check_ranges(node: Any, prefix: str, out: _Problems) -> None:
    """Every numeric option against its ``opt(check=...)`` range, naming the key, the value and the range."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{prefix}{f.name}.", out)
        elif f.metadata.get("check") and not in_range(value, f.metadata["check"]):
            out.need(False, f"'{prefix}{f.name}' must be {range_words(f.metadata['check'])}, got {value!r}")


def _check_parallel(cfg: Config, world: int, out: _Problems) -> None:
    sp = cfg.parallel.sp_size
    _check_cost_model(cfg.parallel.cost_model, out)
    out.need(world % sp == 0, f"'parallel.sp_size' ({sp}) must divide the {world} processes (world = data-parallel "
             "x sequence-parallel)")
    out.need(sp == 1 or cfg.optim.packing, "'parallel.sp_size' > 1 shards packed rows: set optim.packing to true")
    out.need(not cfg.parallel.offload_checkpoints or cfg.model.gradient_checkpointing,
             "'parallel.offload_checkpoints' moves the checkpointed layer inputs: set model.gradient_checkpointing "
             "too")


def _check_cost_model(cm: CostModelConfig, out: _Problems) -> None:
    """``parallel.cost_model.comm``: degrees > 1 mapped to finite non-negative seconds (the numbers are checked by
    their ranges)."""
    def ok(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    for key in ("a", "b", "overhead", "backward", "attention"):
        out.need(math.isfinite(getattr(cm, key)), f"'parallel.cost_model.{key}' must be finite, got "
                 f"{getattr(cm, key)!r}")
    for degree, v in cm.comm.items():
        out.need(str(degree).isdigit() and int(degree) > 1, f"'parallel.cost_model.comm' key {degree!r} is not a "
                 "degree > 1")
        values = v if isinstance(v, list) else [v]
        out.need(1 <= len(values) <= 2 and all(ok(x) for x in values), f"'parallel.cost_model.comm.{degree}' must "
                 f"be seconds per token or [seconds per token, seconds per forward], finite and >= 0, got {v!r}")


def _check_forcing(r: RolloutConfig, out: _Problems) -> None:
    """Budget forcing's settings: budgets are whole numbers >= 1 that leave room under max_new_tokens for the answer
    allowance (the phrase's own tokens are checked against the tokenizer in preflight), a phrase with text, and no
    segment rollouts (they carry samples across steps at a fixed segment length, forcing cuts them at a budget)."""
    f = r.budget_forcing
    if not f.budgets:
        return
    bad = [b for b in f.budgets if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if not out.need(not bad, f"'rollout.budget_forcing.budgets' must be whole numbers of tokens >= 1, got {bad}"):
        return
    out.need(max(f.budgets) + f.answer_tokens < r.max_new_tokens,
             f"'rollout.budget_forcing.budgets' up to {max(f.budgets)} + answer_tokens {f.answer_tokens} leave no "
             f"room under rollout.max_new_tokens ({r.max_new_tokens}) for the forcing phrase: lower the budgets or "
             "raise max_new_tokens")
    out.need(bool(f.phrase.strip()), "'rollout.budget_forcing.phrase' is empty: give the text injected at the budget")
    out.need(r.segments == 1, "'rollout.budget_forcing' cannot be combined with rollout.segments > 1 (segments "
             "carry unfinished samples to later steps; forcing ends them at their budget): use one of them")


def _check_thinking(r: RolloutConfig, out: _Problems) -> None:
    """Thinking-aware lengths: counting the thinking or the answer needs the marker that splits them; a marker is
    text (blanks alone would split at whitespace)."""
    t = r.thinking
    out.need(t.count == "all" or bool(t.end), f"'rollout.thinking.count' is {t.count!r} but 'rollout.thinking.end' is "
             "empty: set the marker that ends the thinking (e.g. '</think>') or count all tokens")
    out.need(not t.end or bool(t.end.strip()), f"'rollout.thinking.end' is {t.end!r}: give the marker's text (e.g. "
             "'</think>'), or leave it empty for no split")


def _resolve(kind: str, name: str, where: str, source: str, **kw) -> registry.Entry:
    try:
        return registry.resolve(kind, name, **kw)
    except KeyError as e:
        raise ConfigError(f"{source}: {where}: {e.args[0]}") from None


def _verifiers(cfg: Config, rewards: list) -> int:
    """How many reward terms are correctness terms (marked, or a registered verifier); ``rewards``: their entries."""
    return sum(bool(t.correctness or e.caps.verifier) for t, e in zip(cfg.rewards, rewards))


def _check_components(cfg: Config, out: _Problems) -> list | None:
    """Every reward term and component: its name resolves, its options check against its declaration; at most one
    correctness term, which returns one value per sample. Returns the reward terms' registry entries (None when a
    component could not be resolved)."""
    source, start = out.source, len(out)
    rewards = []
    for i, term in enumerate(cfg.rewards):
        entry = out.run(_resolve, "reward", term.name, f"rewards[{i}].name", source, factory=term.factory)
        if entry is not None:
            out.run(registry.check_options, entry, term.kwargs, f"rewards[{i}].kwargs", source)
        rewards.append(entry)
    for _, kind, where, comp in components(cfg):
        entry = out.run(_resolve, kind, comp.name, f"{where}.name", source)
        if entry is not None:
            out.run(registry.check_options, entry, comp.kwargs, f"{where}.kwargs", source)
    if len(out) > start:
        return None
    try:
        check_weights(cfg.rewards, cfg.shaping)
    except RewardError as e:
        out.need(False, f"rewards: {e}")
    out.need(_verifiers(cfg, rewards) <= 1, "at most one reward term can be the correctness term")
    for i, (t, e) in enumerate(zip(cfg.rewards, rewards)):
        out.need(not t.correctness or e.caps.shape == "scalar",
                 f"rewards[{i}] ({t.name}) returns {e.caps.shape} but is marked correctness: the correctness term "
                 "returns one 0/1 value per sample")
    # a component's need for a correctness term may follow its options (dynamic_sampling's metric): it is checked
    # on the built components (rlkit.trainers.stages.build_components)
    return rewards


def _check_algorithm(cfg: Config, rewards: list, world: int, out: _Problems) -> None:
    """The advantage estimator and the loss: names, options (a loss's typed options: names, types, ranges), the
    aggregation it declares, whole groups per minibatch, a declared need for a correctness term, and what they do
    with token-shaped reward terms (``rewards``: the terms' registry entries)."""
    a, source = cfg.algorithm, out.source
    adv = out.run(_resolve, "advantage", a.advantage, "algorithm.advantage", source)
    if adv is not None:
        out.need(a.scale == "auto" or "scale" in adv.options or a.scale == "none",
                 f"'algorithm.scale' is {a.scale!r} but advantage {a.advantage!r} divides by no std: leave "
                 "algorithm.scale at auto")
        out.need("scale" not in a.advantage_options, "'algorithm.advantage_options' sets scale: use algorithm.scale")
        out.run(registry.check_options, adv, advantage_options(cfg), "algorithm.advantage_options", source)
    loss = out.run(_resolve, "loss", a.loss, "algorithm.loss", source)
    if loss is None:
        return
    out.run(registry.check_options, loss, a.loss_options, "algorithm.loss_options", source)
    declared = loss.caps.aggregation
    out.need(a.aggregation in ("auto", declared) or declared is None,
             f"'algorithm.aggregation' is {a.aggregation!r} but loss {a.loss!r} is defined with {declared!r}: "
             "remove the setting (auto takes the loss's) or pick another loss")
    if loss.caps.whole_groups:
        per_rank = cfg.rollout.prompts_per_step // world
        out.need(per_rank % a.minibatches == 0, f"loss {a.loss!r} keeps groups whole: 'algorithm.minibatches' must "
                 f"divide the {per_rank} prompts of each process")
    out.need(_verifiers(cfg, rewards) > 0 or not loss.caps.needs_verifier,
             f"loss {a.loss!r} needs a correctness term (e.g. math_correct) in `rewards`")
    _check_token_signals(cfg, rewards, adv, loss, out)


REWARD_ENGINE_KEYS = {"engine": str, "model": str, "server_urls": list}


def _check_reward_engines(cfg: Config, out: _Problems) -> None:
    """``reward_engines``: {name: {engine: hf | vllm_server, model, server_urls}}."""
    for name, spec in cfg.reward_engines.items():
        where = f"'reward_engines.{name}'"
        if not isinstance(spec, dict):
            out.need(False, f"{where} must be a mapping {{engine, model, server_urls}}, got {spec!r:.60}")
            continue
        unknown = sorted(set(spec) - set(REWARD_ENGINE_KEYS))
        out.need(not unknown, f"{where} has unknown keys {unknown}; valid: {', '.join(REWARD_ENGINE_KEYS)}")
        bad = [k for k, tp in REWARD_ENGINE_KEYS.items() if k in spec and not isinstance(spec[k], tp)]
        out.need(not bad, f"{where}: {', '.join(bad)} must be "
                 f"{', '.join(REWARD_ENGINE_KEYS[k].__name__ for k in bad)}")
        engine = spec.get("engine", "hf")
        out.need(engine in ("hf", "vllm_server"), f"{where}.engine is {engine!r}; valid: hf (a colocated copy of the "
                 "model), vllm_server (servers at server_urls)")
        urls = spec.get("server_urls") or []
        out.need(engine != "vllm_server" or (urls and all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                                          for u in urls)),
                 f"{where}.server_urls must list the http(s) URLs of the servers for engine vllm_server, got {urls}")
        out.need(engine != "vllm_server" or spec.get("model"), f"{where}.model must name the model the servers run "
                 "(its tokenizer and chat template encode the prompts) for engine vllm_server")


def _check_token_signals(cfg: Config, rewards: list, adv, loss, out: _Problems) -> None:
    """Token- and chunk-shaped reward terms (RewardCaps.shape) reach the loss only through an estimator and a loss
    that declare ``tokens``; an estimator that makes per-token advantages needs a loss that reads them."""
    shaped = [f"rewards[{i}] ({term.name}) returns {entry.caps.shape}"
              for i, (term, entry) in enumerate(zip(cfg.rewards, rewards)) if entry.caps.shape != "scalar"]
    a = cfg.algorithm
    if shaped and adv is not None:
        out.need(bool(adv.caps.tokens), f"{'; '.join(shaped)}, but advantage {a.advantage!r} takes one reward per "
                 "sample: pick an estimator that declares tokens (e.g. decs)")
    if (shaped or (adv is not None and adv.caps.tokens)) and not loss.caps.tokens:
        what = "; ".join(shaped) if shaped else f"advantage {a.advantage!r} makes per-token advantages"
        out.need(False, f"{what}, but loss {a.loss!r} reads one advantage per sequence: pick a loss that declares "
                 "tokens (ppo_clip, kl_cov, cispo)")


# ---------------------------------------------------------------------------------------------------
# resolving: what the run uses


def importance(cfg: Config) -> str:
    """``rollout.importance`` with auto resolved: sais under asynchronous rollouts, else pois."""
    r = cfg.rollout
    return r.importance if r.importance != "auto" else ("sais" if r.async_steps > 0 else "pois")


def aggregation(cfg: Config) -> str:
    """``algorithm.aggregation`` with auto resolved: the one the loss declares, else token-mean."""
    a = cfg.algorithm
    if a.aggregation != "auto":
        return a.aggregation
    return registry.resolve("loss", a.loss).caps.aggregation or "token-mean"


def resolve(cfg: Config, source: str = "config") -> Config:
    """A copy of ``cfg`` (checked first: a ConfigError names the first problem) with every choice explicit:
    ``auto`` resolved (rollout.importance, algorithm.aggregation) and every component's options coerced to their
    declared types and completed with their defaults. ``cfg`` itself is left as it is."""
    validate(cfg, source)
    out = copy.deepcopy(cfg)
    r, a = out.rollout, out.algorithm
    for i, term in enumerate(out.rewards):
        entry = registry.resolve("reward", term.name, factory=term.factory)
        term.kwargs = registry.check_options(entry, term.kwargs, f"rewards[{i}].kwargs", source)
    for _, kind, where, comp in components(out):
        comp.kwargs = registry.check_options(registry.resolve(kind, comp.name), comp.kwargs, f"{where}.kwargs", source)
    r.engine_options = registry.check_options(registry.resolve("engine", r.engine), r.engine_options,
                                              "rollout.engine_options", source)
    r.importance = importance(out)
    a.loss_options = loss_options(out)
    a.aggregation = aggregation(out)
    return out


def loss_options(cfg: Config) -> dict:
    """The configured loss's options (``algorithm.loss_options``), coerced to their types and completed with their
    defaults."""
    entry = registry.resolve("loss", cfg.algorithm.loss)
    return registry.check_options(entry, cfg.algorithm.loss_options, "algorithm.loss_options", "config")


def reference_coef(cfg: Config) -> float:
    """The weight of the configured loss's KL penalty to the reference policy (the option it declares as
    ``reference``, e.g. ppo_clip's kl_coef); 0 when it has none: no reference model is loaded or scored."""
    option = registry.resolve("loss", cfg.algorithm.loss).caps.reference
    return float(loss_options(cfg).get(option, 0.0)) if option else 0.0


def advantage_options(cfg: Config) -> dict:
    """``algorithm.advantage_options``, with ``scale`` for the estimators that have it (auto: the estimator's own
    default)."""
    has_scale = "scale" in registry.resolve("advantage", cfg.algorithm.advantage).options
    scale = {"scale": cfg.algorithm.scale} if has_scale and cfg.algorithm.scale != "auto" else {}
    return {**cfg.algorithm.advantage_options, **scale}
