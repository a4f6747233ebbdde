"""The method stages of a run, resolved once at start-up from the config (architecture rules 4 and 6).

The loop calls these lists the same way whatever method they implement:

    prompt_transforms   (prompts, ctx) -> (prompts, metrics)           e.g. budget_curriculum
    sample_transforms   (batch, ctx) -> metrics, edits the batch        e.g. dot_truncation, zero_truncated
    filter              collect(quota, produce, reduce) -> batch        dynamic_sampling, predictive_sampling
    shapers             (ShapingBatch) -> ShapingResult                 kimi, grpo_lambda, da_dler, laser_d, ...
    advantage           (rewards, group_ids, lengths) -> advantages     grpo, dr_grpo, rloo, batch_norm
                        (+ token_rewards -> per-token advantages)       decs
    batch_masks         keep(MaskInputs) before the normaliser          mask_truncated
    forward_masks       keep(MaskInputs) after each forward             dmmpt
    loss                LossSpec (fn, whole groups, minibatch prepare)  ppo_clip, kl_cov, drpo

Declarations are asked of the registry (rlkit.registry.Capabilities), once: a shaper's ``monitor`` and
``needs_looping`` (its ``needs_columns`` by trainers/collect.shape), a loss's ``whole_groups`` and ``prepare``; a mask's ``kind``. Component state (``state_dict``) is saved in checkpoints by position.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from rlkit import registry
from rlkit.config import (
    COMPONENT_FIELDS,
    Config,
    advantage_options,
    components,
    loss_options,
    reference_coef,
)
from rlkit.registry import ConfigError
from rlkit.rewards.combine import built_reward, reward_columns
from rlkit.trainers.update import LossSpec


def build_components(cfg: Config, source: str = "config", *, rewards: bool = True) -> dict[str, Any]:
    """Every reward term and stage component ``cfg`` names, built from what it says now: {config key: object}
    (``rewards[0]``, ``shaping[1]``, ``filter``, ...). The checks before any model loads (rlkit.preflight) call it,
    so a value a factory refuses fails in seconds, and hand the objects to the run's set-up, so a model-based
    reward loads once per process (``rewards``: False builds the stages only). Raises ConfigError naming the key."""
    built: dict[str, Any] = {}
    for i, term in enumerate(cfg.rewards if rewards else ()):
        where = f"rewards[{i}]"
        built[where] = built_reward(term, registry.resolve("reward", term.name, factory=term.factory), where, source)
    for _, kind, where, comp in components(cfg):
        built[where] = registry.build_entry(registry.resolve(kind, comp.name), comp.kwargs, where, source)
    _check_needs(cfg, built, source)
    if rewards:
        _check_terms(cfg, built, source)
    if "rollout_hook" in built:  # a hook that splits each group needs a group size it divides
        divisor = registry.capabilities(built["rollout_hook"], kind="rollout_hook").group_divisor
        if cfg.rollout.group_size % divisor:
            raise ConfigError(f"{source}: rollout_hook ({cfg.rollout_hook.name}) splits each group into {divisor} "
                              f"parts: 'rollout.group_size' ({cfg.rollout.group_size}) must divide by {divisor}")
    return built


def _check_needs(cfg: Config, built: dict[str, Any], source: str) -> None:
    """A built component that declares it needs a correctness term (the declaration may follow its options, as
    dynamic_sampling's metric) finds one among the reward terms."""
    entries = [(f"rewards[{i}]", registry.resolve("reward", t.name, factory=t.factory), t)
               for i, t in enumerate(cfg.rewards)]
    if any(t.correctness or entry.caps.verifier for _, entry, t in entries):
        return
    entries += [(where, registry.resolve(kind, c.name), c) for _, kind, where, c in components(cfg)]
    for where, entry, c in entries:
        if where in built and registry.capabilities(built[where], entry.flags, kind=entry.kind).needs_verifier:
            prefix = f"{where}: " if entry.kind == "reward" else ""
            raise ConfigError(f"{source}: {prefix}{registry.KINDS[entry.kind][1]} {c.name!r} needs a correctness term "
                              "(e.g. math_correct, weight 0 if it should not add to the reward) in `rewards`")


def _check_terms(cfg: Config, built: dict[str, Any], source: str) -> None:
    """A built filter that reads columns of the reward terms (``needs_terms``: DECS's curriculum reads the ratio
    decs_redundancy reports) finds each among the configured terms and what they report."""
    if "filter" not in built:
        return
    wanted = registry.capabilities(built["filter"], registry.resolve("filter", cfg.filter.name).flags,
                                   kind="filter").needs_terms
    have = reward_columns(cfg.rewards, built_rewards(cfg, built))
    missing = [c for c in wanted if c not in have]
    if missing:
        raise ConfigError(f"{source}: filter ({cfg.filter.name}) reads the reward column(s) {', '.join(missing)}, "
                          f"which no reward term gives (the terms give: {', '.join(have)}); add the reward that "
                          "reports it (e.g. decs_redundancy for decs_redundancy/nrp_ratio) to `rewards`")


def build_loss(cfg: Config) -> LossSpec:
    """The configured loss with its options bound (its typed options object, rlkit.algorithms.losses), its minibatch
    ``prepare`` with the same options, and what it declares."""
    entry = registry.resolve("loss", cfg.algorithm.loss)
    options = loss_options(cfg)
    caps, typed = entry.caps, registry.typed_options(entry, options)
    prepare = caps.prepare
    if prepare is not None:
        prepare = functools.partial(prepare, options=typed) if typed is not None else functools.partial(prepare,
                                                                                                       **options)
    return LossSpec(registry.build(entry, options), bool(caps.whole_groups), prepare, reference_coef(cfg))


def built_rewards(cfg: Config, built: dict[str, Any] | None) -> list | None:
    """The reward functions of ``build_components`` in the order of ``cfg.rewards`` (None: none built)."""
    return None if built is None else [built[f"rewards[{i}]"] for i in range(len(cfg.rewards))]


@dataclass
class Stages:
    prompt_transforms: list[tuple[str, Any]] = field(default_factory=list)
    sample_transforms: list[tuple[str, Any]] = field(default_factory=list)
    filter: Any = None
    shapers: list[tuple[str, Any]] = field(default_factory=list)
    advantage: Any = None
    advantage_caps: registry.AdvantageCaps = field(default_factory=registry.AdvantageCaps)  # tokens, needs_columns
    loss: LossSpec | None = None
    batch_masks: list[tuple[str, Any]] = field(default_factory=list)
    forward_masks: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Config, built: dict[str, Any] | None = None) -> Stages:
        """The stages of ``cfg``: the components of ``built`` (``build_components``), else built now."""
        built = built if built is not None else build_components(cfg, rewards=False)
        lists: dict[str, list[tuple[str, Any]]] = {field_name: [] for field_name in COMPONENT_FIELDS}
        for field_name, _, where, c in components(cfg):
            lists[field_name].append((registry.short_name(c.name), built[where]))
        built = lists
        masks = built["token_masks"]
        return cls(
            prompt_transforms=built["prompt_transforms"], sample_transforms=built["sample_transforms"],
            filter=built["filter"][0][1] if built["filter"] else None, shapers=built["shaping"],
            advantage=registry.build(registry.resolve("advantage", cfg.algorithm.advantage), advantage_options(cfg)),
            advantage_caps=registry.resolve("advantage", cfg.algorithm.advantage).caps,
            loss=build_loss(cfg),
            batch_masks=[(n, m) for n, m in masks if registry.capabilities(m, kind="token_mask").kind == "batch"],
            forward_masks=[(n, m) for n, m in masks if registry.capabilities(m, kind="token_mask").kind == "forward"])

    @property
    def monitored(self) -> list[tuple[str, Any]]:
        """Shapers that declare a monitor set: (every, size, samples)."""
        return [(n, s) for n, s in self.shapers if registry.capabilities(s, kind="shaper").monitor]

    @property
    def needs_looping(self) -> bool:
        return any(registry.capabilities(s, kind="shaper").needs_looping for _, s in self.shapers)

    @property
    def needs_shaped_rounds(self) -> bool:
        """The filter decides on shaped rewards: each generation round is shaped before filtering."""
        return self.filter is not None and bool(registry.capabilities(self.filter, kind="filter").needs_shaped)

    def _stateful(self) -> dict[str, Any]:
        out = {}
        for prefix, items in (("prompt_transforms", self.prompt_transforms),
                              ("sample_transforms", self.sample_transforms), ("shaping", self.shapers),
                              ("token_masks", self.batch_masks + self.forward_masks)):
            out.update({f"{prefix}[{i}].{n}": obj for i, (n, obj) in enumerate(items)
                        if "state_dict" in registry.hooks(obj)})
        if self.filter is not None and "state_dict" in registry.hooks(self.filter):
            out["filter"] = self.filter
        return out

    def state_dict(self) -> dict:
        return {key: obj.state_dict() for key, obj in self._stateful().items()}

    def load_state_dict(self, state: dict) -> None:
        for key, obj in self._stateful().items():
            if key in state:
                obj.load_state_dict(state[key])
