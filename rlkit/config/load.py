"""Loading a config: YAML files (unique keys), built-in recipes, dotted CLI overrides and the translation of old
option names, into the typed tree (rlkit.config.schema), then the checks (rlkit.config.check).

Precedence: defaults <- recipes (in order) <- the YAML file <- overrides. Unknown keys and invalid choices fail here,
naming the key, the file and the valid choices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from rlkit import registry
from rlkit.config.check import validate
from rlkit.config.schema import (
    COMPONENT_FIELDS,
    SINGLE_COMPONENTS,
    Component,
    Config,
    RewardTerm,
    hints,
    to_dict,
)
from rlkit.files import atomic_write_text
from rlkit.registry import ConfigError, coerce

log = logging.getLogger("rlkit")


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    annotations = hints(cls)
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
        tp, value, key = annotations[name], data[name], prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".", source)
        elif cls is Config and name == "rewards":
            kwargs[name] = _build_rewards(value, source)
        elif cls is Config and name in SINGLE_COMPONENTS:
            kwargs[name] = None if value is None else _build(Component, {"name": value} if isinstance(value, str)
                                                             else value, f"{name}.", source)
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


RECIPES_DIR = Path(__file__).parent.parent / "recipes"


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


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                recipes: list[str] | None = None) -> Config:
    """Defaults <- recipes (in order) <- YAML file <- overrides, old option names translated (``RENAMED``); checks
    every key, choice and name (rlkit.config.check). Mappings merge key by key; lists (rewards, shaping) are replaced
    by the later source. The tree returned describes the run as written (``auto`` stays auto, component options as
    given): rlkit.config.check.resolve makes every choice explicit, as the run and its config.json see it."""
    raw: dict = {}
    source = "defaults"
    for name in recipes or []:
        rpath = RECIPES_DIR / f"{name}.yaml"
        if not rpath.exists():
            raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(r[0] for r in list_recipes())}")
        raw = _deep_merge(raw, translate_renamed(_read_yaml(rpath), f"recipe {name}"))
        source = f"recipe {name}"
    if path is not None:
        source = str(path)
        raw = _deep_merge(raw, translate_renamed(_read_yaml(Path(path)), source))
        _build(Config, raw, "", source)  # a mistake in the file is reported against the file alone
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    targets: dict[str, tuple[str, Any]] = {}  # option -> (key as given, value) of the overrides so far
    for key, value in items:
        source = f"{path or 'defaults'} + overrides" if path else "overrides"
        new = _renamed_key(key, source)
        earlier = targets.get(new)
        if earlier is not None and new != key != earlier[0] and earlier[1] != value:  # two old names, one option
            raise ConfigError(f"{source}: {earlier[0]}: {earlier[1]}, {key}: {value} disagree with each other or "
                              f"with {new}: they are one option now, {new}")
        targets[new] = (key, value)
        set_dotted(raw, new, value)
    cfg = _build(Config, raw, "", source)
    validate(cfg, source)
    return cfg


# options that moved: old dotted key -> new dotted key (two old keys naming one new option must agree)
RENAMED = {
    "rollout.segment_importance": "rollout.importance", "rollout.async_importance": "rollout.importance",
    "data.eval": "eval.data", "data.eval_size": "eval.size", "data.eval_offset": "eval.offset",
    "rollout.eval_temperature": "eval.temperature", "rollout.eval_max_new_tokens": "eval.max_new_tokens",
    "train.eval_every": "eval.every", "train.eval_before": "eval.before", "train.eval_after": "eval.after",
    "train.eval_budgets": "eval.budgets", "optim.attention_cost": "parallel.cost_model.attention",
    "algorithm.loss_kwargs": "algorithm.loss_options",
    "algorithm.epsilon_low": "algorithm.loss_options.epsilon_low",
    "algorithm.epsilon_high": "algorithm.loss_options.epsilon_high",
    "algorithm.dual_clip": "algorithm.loss_options.dual_clip", "algorithm.kl_coef": "algorithm.loss_options.kl_coef",
}
# of a checkpoint's saved config: the algorithm-section options that only some losses had (a saved config holds
# them with their defaults whatever the loss): moved only where the saved loss has the option
LOSS_MOVED = ("algorithm.epsilon_low", "algorithm.epsilon_high", "algorithm.dual_clip", "algorithm.kl_coef")


def _renamed_key(key: str, source: str) -> str:
    """An override's key under its current name (one warning line for an old one)."""
    new = RENAMED.get(key)
    if new is None:
        return key
    log.warning("%s: '%s' is now '%s'; read as %s", source, key, new, new)
    return new


def _pop(tree: dict, dotted: str, missing: Any) -> Any:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
    return tree.pop(leaf, missing) if isinstance(tree, dict) else missing


def translate_renamed(raw: dict, source: str, *, saved: bool = False) -> dict:
    """Move the options of a raw config tree that were renamed (``RENAMED``) to their new key, in place; returns
    ``raw``. A user's file gets one warning line per old key, and an old key that disagrees with the new one (or with
    another old key of the same option) is a ConfigError. ``saved``: a checkpoint's full config, which holds every
    old key with its default: silent, and of the two old importance keys the one in effect is kept (sais when
    asynchronous rollouts used it, or segments did)."""
    missing = object()
    old = {k: v for k in RENAMED if (v := _pop(raw, k, missing)) is not missing}
    if saved and set(LOSS_MOVED) & set(old):
        loss = (raw.get("algorithm") or {}).get("loss", "ppo_clip")
        try:
            has = registry.resolve("loss", loss).options
        except KeyError:
            has = {}
        old = {k: v for k, v in old.items() if k not in LOSS_MOVED or k.rsplit(".", 1)[1] in has}
    if saved and {"rollout.segment_importance", "rollout.async_importance"} & set(old):
        rollout = raw.setdefault("rollout", {})
        seg, asy = old.pop("rollout.segment_importance", None), old.pop("rollout.async_importance", None)
        segments, ahead = rollout.get("segments", 1) > 1, rollout.get("async_steps", 0) > 0
        rollout["importance"] = "sais" if (ahead and (asy == "sais" or (segments and seg == "sais"))) or \
            (not ahead and segments and seg == "sais") else "pois"
    by_new: dict[str, dict] = {}
    for key, value in old.items():
        by_new.setdefault(RENAMED[key], {})[key] = value
    for new, given in by_new.items():
        current = _pop(raw, new, missing)
        values = {json.dumps(v, sort_keys=True, default=str) for v in given.values()}
        if not saved and (len(values) > 1 or (current is not missing and
                                              {json.dumps(current, sort_keys=True, default=str)} != values)):
            listed = ", ".join(f"{k}: {v}" for k, v in given.items())
            raise ConfigError(f"{source}: {listed} disagree{'s' if len(given) == 1 else ''} with each other or with "
                              f"{new}: they are one option now, {new}")
        value = next(iter(given.values())) if current is missing else current  # a disagreement was refused above
        for key in given if not saved else ():
            log.warning("%s: '%s' is now '%s'; read as %s: %s", source, key, new, new, value)
        set_dotted(raw, new, value)
    return raw


def save_config(cfg: Config, path: str | Path) -> None:
    """The tree as JSON (``RUN_DIR/config.json``), written atomically."""
    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


