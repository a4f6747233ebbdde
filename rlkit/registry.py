"""One registry for every kind of component (DESIGN rule 4).

Kinds: reward, shaper, filter, prompt_transform, sample_transform, advantage, loss, token_mask.
A component is found by

- its registered name (built-ins register themselves when their module is imported; the modules are
  listed in ``BUILTIN_MODULES`` and imported on the first look-up of their kind),
- an import path ``"package.module:attr"``,
- an installed entry point in the kind's group (``rlkit.rewards``, ``rlkit.shapers``, ``rlkit.losses``, ...).

Every component declares its options: the keyword parameters of the factory (class or function) that
builds it, or of the function itself for plain callables (rewards, advantages, losses). ``check_options``
validates a config's ``kwargs`` against them when the config is parsed, with the option's annotation as
its type, so a typo exits before any model loads, naming the option, the component and the valid options.

This module imports only rlkit.errors at import time: every layer may import it.
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.metadata
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlkit.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file, override or component option is invalid; the message names the key and the source."""


KINDS = {
    "reward": ("rlkit.rewards", "reward"),
    "shaper": ("rlkit.shapers", "reward shaper"),
    "filter": ("rlkit.filters", "group filter"),
    "prompt_transform": ("rlkit.prompt_transforms", "prompt transform"),
    "sample_transform": ("rlkit.sample_transforms", "sample transform"),
    "advantage": ("rlkit.advantages", "advantage estimator"),
    "loss": ("rlkit.losses", "policy loss"),
    "token_mask": ("rlkit.token_masks", "token mask"),
}

BUILTIN_MODULES = {
    "reward": ("rlkit.rewards.builtin", "rlkit.rewards.length"),
    "shaper": ("rlkit.shaping.groups", "rlkit.shaping.laser"),
    "filter": ("rlkit.algorithms.filters",),
    "prompt_transform": ("rlkit.data.transforms",),
    "sample_transform": ("rlkit.shaping.transforms",),
    "advantage": ("rlkit.algorithms.advantages",),
    "loss": ("rlkit.algorithms.losses",),
    "token_mask": ("rlkit.algorithms.masks",),
}

# parameters of a reward call that are data, not options
REWARD_DATA = {"prompts", "completions", "completion_ids", "finish_reason", "num_tokens", "step", "correct"}
# the first positional parameters of an advantage / loss call
CALL_DATA = {"advantage": {"rewards", "group_ids", "lengths"}, "loss": {"inp"}}


@dataclass(frozen=True)
class Capabilities:
    """What a component needs from the batch and what it promises, declared by the component (a registration flag
    or an attribute of the function, class or built instance) and read here only: config validation and stage
    resolution ask ``Entry.caps`` / ``capabilities(obj)``, never the component's attributes.

    Attributes that declare each field (first found wins): ``verifier`` <- correctness; ``needs_verifier`` <-
    needs_verifier, needs_correctness, uses_correct (the component reads the batch's ``correct``, so a correctness
    term must be configured); ``whole_groups`` <- needs_whole_groups; the others by their own names."""

    verifier: bool = False  # reward: its value is the correctness signal (math_correct)
    needs_verifier: bool = False  # any kind: reads ``correct``, so `rewards` must hold a correctness term
    whole_groups: bool = False  # loss: not a sum over tokens, micro-batches keep groups whole (DRPO)
    prepare: Any = None  # loss: minibatch-wide inputs computed before any backward (KL-Cov's token choice)
    aggregation: str | None = None  # loss: the aggregation it is defined with (GSPO, CISPO)
    binds: Any = None  # loss: {option: dotted config key} filled in from the config
    handles_timeouts: bool = False  # reward: bounds its own time per sample (no thread watchdog)
    monitor: Any = None  # shaper: (every, size, samples) of a monitor set generated with the current policy
    needs_looping: bool = False  # shaper: the batch must carry the loop detector's flags
    needs_shaped: bool = False  # filter: decides on shaped rewards, so each round is shaped first


_DECLARED = {"verifier": ("correctness",), "needs_verifier": ("needs_verifier", "needs_correctness", "uses_correct"),
             "whole_groups": ("needs_whole_groups",), "prepare": ("prepare",), "aggregation": ("aggregation",),
             "binds": ("binds",), "handles_timeouts": ("handles_timeouts",), "monitor": ("monitor",),
             "needs_looping": ("needs_looping",), "needs_shaped": ("needs_shaped",)}


def capabilities(obj: Any, flags: dict | None = None) -> Capabilities:
    """The declarations of a component: registration ``flags`` first, then the object's attributes."""
    values = {}
    for name, attrs in _DECLARED.items():
        for attr in attrs:
            value = (flags or {}).get(attr, getattr(obj, attr, None))
            if value is not None:
                values[name] = value
                break
    return Capabilities(**values)


@dataclass(frozen=True)
class Entry:
    """A resolved component. ``factory``: ``obj(**options)`` builds the callable; otherwise ``obj`` is the
    callable and its options are bound as keyword arguments. ``flags`` carry declarations such as
    ``correctness`` (a verifier reward)."""

    kind: str
    name: str
    obj: Any
    factory: bool
    doc: str
    flags: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # option name -> inspect.Parameter

    @property
    def caps(self) -> Capabilities:
        """The component's declarations (see Capabilities)."""
        return capabilities(self.obj, self.flags)


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_LOADED: set[str] = set()


def _label(kind: str) -> str:
    return KINDS[kind][1]


def plural(kind: str) -> str:
    """'rewards', 'shapers', 'policy losses' style name of a kind (from its entry-point group)."""
    return KINDS[kind][0].split(".", 1)[1].replace("_", " ")


def short_name(name: str) -> str:
    """The label of a component in metrics: its registered name, or the last part of an import path."""
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def declared_options(kind: str, obj: Any, factory: bool) -> dict[str, inspect.Parameter]:
    """The options a component accepts: the named parameters of its factory, or of the callable itself
    minus the call's data parameters. ``**kwargs`` is not an option."""
    target = obj.__init__ if factory and isinstance(obj, type) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    skip = {"self"} if factory else (REWARD_DATA if kind == "reward" else CALL_DATA.get(kind, set()))
    out = {}
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if not factory and kind == "reward" and p.default is p.empty:
            continue  # a required keyword of a plain reward is a dataset column
        out[name] = p
    return out


def register(kind: str, name: str, *, factory: bool | None = None, options: tuple | None = None,
             **flags) -> Callable:
    """Decorator: register ``obj`` under ``name`` for ``kind``. ``factory`` defaults to True for classes.
    ``options`` restricts the declared options (e.g. ``()`` for a plain reward whose keyword parameters are
    all dataset columns)."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; valid: {', '.join(KINDS)}")

    def deco(obj: Any) -> Any:
        is_factory = isinstance(obj, type) if factory is None else factory
        opts = declared_options(kind, obj, is_factory)
        if options is not None:
            opts = {k: v for k, v in opts.items() if k in options}
        old = _REGISTRY[kind].get(name)
        if old is not None and old.obj is not obj:
            raise ValueError(f"{_label(kind)} {name!r} is already registered to {old.obj!r}")
        _REGISTRY[kind][name] = Entry(kind, name, obj, is_factory, _first_line(obj), dict(flags), opts)
        return obj

    return deco


def _load_builtins(kind: str) -> None:
    if kind in _LOADED:
        return
    _LOADED.add(kind)  # before the imports: a built-in module may look up its own kind while loading
    try:
        for module in BUILTIN_MODULES[kind]:
            importlib.import_module(module)
    except BaseException:
        _LOADED.discard(kind)
        raise


def _entry_points(kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=KINDS[kind][0])}


def _import_path(kind: str, path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise KeyError(f"cannot import module {module_name!r} for {_label(kind)} {path!r}: {e}") from None
    except SyntaxError as e:
        raise KeyError(f"module {module_name!r} of {_label(kind)} {path!r} has a syntax error at "
                       f"{e.filename}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # the module raised while being imported: one line naming it, not its traceback
        raise KeyError(f"importing module {module_name!r} for {_label(kind)} {path!r} raised "
                       f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KeyError(f"module {module_name!r} has no attribute {attr!r} ({_label(kind)} {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise KeyError(f"{_label(kind)} {path!r} is {type(obj).__name__} {obj!r:.60}, not a function or class")
    return obj


def _outside_entry(kind: str, name: str, obj: Any, factory: bool | None) -> Entry:
    """An import-path or entry-point component. A class, a function named ``get_*`` (TRL's reward factories)
    or one marked ``factory=True`` is a factory; any other callable is the component itself."""
    if factory is None:
        factory = isinstance(obj, type) or getattr(obj, "__name__", "").startswith("get_")
    flags = dict(getattr(obj, "rlkit_flags", {}))
    return Entry(kind, name, obj, factory, _first_line(obj), flags, declared_options(kind, obj, factory))


def resolve(kind: str, name: str, *, factory: bool | None = None) -> Entry:
    """Registered name, ``module:attr`` import path, or entry point; KeyError lists the valid names."""
    _load_builtins(kind)
    if name in _REGISTRY[kind]:
        entry = _REGISTRY[kind][name]
        return entry if factory is None or factory == entry.factory else \
            Entry(kind, name, entry.obj, factory, entry.doc, entry.flags, declared_options(kind, entry.obj, factory))
    if ":" in name:
        return _outside_entry(kind, name, _import_path(kind, name), factory)
    eps = _entry_points(kind)
    if name in eps:
        return _outside_entry(kind, name, eps[name].load(), factory)
    valid = sorted(set(_REGISTRY[kind]) | set(eps))
    raise KeyError(f"unknown {_label(kind)} {name!r}; registered {plural(kind)}: {', '.join(valid)} "
                   "(or an import path 'package.module:name')")


def names(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(set(_REGISTRY[kind]) | set(_entry_points(kind)))


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, one-line doc) of every registered and entry-point component of a kind."""
    _load_builtins(kind)
    out = {name: e.doc for name, e in _REGISTRY[kind].items()}
    for name, ep in _entry_points(kind).items():
        out.setdefault(name, f"(entry point {ep.value})")
    return sorted(out.items())


# ---------------------------------------------------------------------------------------------------
# option values


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value or raise ConfigError.
    Unknown annotations (or none) accept any value."""
    if isinstance(tp, str) or tp is inspect.Parameter.empty or tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: invalid value {value!r} for '{key}'; valid choices: "
                              f"{', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        inner = typing.get_args(tp)
        homogeneous = origin is not tuple or (len(inner) == 2 and inner[1] is Ellipsis)
        if inner and homogeneous:
            return [coerce(v, inner[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        if not math.isfinite(number):  # inf / nan (or 1e1000, which YAML reads as inf) would train a NaN model
            raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
    return value


def _hints(obj: Any) -> dict:
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations (a plugin's forward references): accept any value
        return {}


def check_options(entry: Entry, kwargs: dict, where: str, source: str, *, bound: tuple = ()) -> dict:
    """Validate ``kwargs`` (found at the config key ``where``) for ``entry``; return the resolved options,
    defaults included.

    ``bound`` names options the trainer fills in itself (e.g. a loss's ``epsilon_low`` from the algorithm
    section): they are not listed as missing and not returned. Raises ConfigError naming the option, the
    component and the valid options."""
    opts = entry.options
    label = f"{_label(entry.kind)} {entry.name!r}"
    valid = ", ".join(k for k in opts if k not in bound) or "(none)"
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of options of {label}, got {kwargs!r}")
    hints = _hints(entry.obj)
    out = {}
    for key, value in kwargs.items():
        if key not in opts or key in bound:
            raise ConfigError(f"{source}: {where}: {label} has no option {key!r}; valid options: {valid}")
        out[key] = coerce(value, hints.get(key, opts[key].annotation), f"{where}.{key}", source)
    for key, p in opts.items():
        if key in out or key in bound:
            continue
        if p.default is p.empty:
            raise ConfigError(f"{source}: {where}: {label} needs option {key!r}; valid options: {valid}")
        out[key] = p.default
    return out


def build(entry: Entry, options: dict) -> Any:
    """The component: ``factory(**options)``, or the callable with its options bound."""
    if entry.factory:
        return entry.obj(**options)
    if not options:
        return entry.obj
    import functools

    return functools.update_wrapper(functools.partial(entry.obj, **options), entry.obj)
