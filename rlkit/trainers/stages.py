"""The method stages of a run, resolved once at start-up from the config (architecture rules 4 and 6).

The loop calls these lists the same way whatever method they implement:

    prompt_transforms   (prompts, ctx) -> (prompts, metrics)           e.g. budget_curriculum
    sample_transforms   (batch, ctx) -> metrics, edits the batch        e.g. dot_truncation, zero_truncated
    filter              collect(quota, produce, reduce) -> batch        dynamic_sampling, predictive_sampling
    shapers             (ShapingBatch) -> ShapingResult                 kimi, grpo_lambda, da_dler, laser_d, ...
    advantage           (rewards, group_ids, lengths) -> advantages     grpo, dr_grpo, rloo, batch_norm
    batch_masks         keep(MaskInputs) before the normaliser          mask_truncated
    forward_masks       keep(MaskInputs) after each forward             dmmpt
    loss                LossSpec (fn, whole groups, minibatch prepare)  ppo_clip, kl_cov, drpo

Declarations are asked of the registry (rlkit.registry.Capabilities), once: a shaper's ``monitor`` and
``needs_looping``, a loss's ``whole_groups`` and ``prepare``; a mask's ``kind``. Component state (``state_dict``) is saved in checkpoints by position.
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
)
from rlkit.trainers.update import LossSpec


@dataclass
class Stages:
    prompt_transforms: list[tuple[str, Any]] = field(default_factory=list)
    sample_transforms: list[tuple[str, Any]] = field(default_factory=list)
    filter: Any = None
    shapers: list[tuple[str, Any]] = field(default_factory=list)
    advantage: Any = None
    loss: LossSpec | None = None
    batch_masks: list[tuple[str, Any]] = field(default_factory=list)
    forward_masks: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Config) -> Stages:
        built: dict[str, list[tuple[str, Any]]] = {field_name: [] for field_name in COMPONENT_FIELDS}
        for field_name, kind, _, c in components(cfg):
            built[field_name].append((registry.short_name(c.name), registry.built_component(c, registry.resolve(kind, c.name))))
        masks = built["token_masks"]
        loss_entry = registry.resolve("loss", cfg.algorithm.loss)
        options = loss_options(cfg)
        prepare = loss_entry.caps.prepare
        if prepare is not None:
            prepare = functools.partial(prepare, **options)
        return cls(
            prompt_transforms=built["prompt_transforms"], sample_transforms=built["sample_transforms"],
            filter=built["filter"][0][1] if built["filter"] else None, shapers=built["shaping"],
            advantage=registry.build(registry.resolve("advantage", cfg.algorithm.advantage), advantage_options(cfg)),
            loss=LossSpec(registry.build(loss_entry, options), bool(loss_entry.caps.whole_groups), prepare),
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
