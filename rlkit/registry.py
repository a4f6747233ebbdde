"""One registry for every kind of component (architecture rule 4).

Kinds: reward, shaper, filter, prompt_transform, sample_transform, advantage, loss, token_mask, engine.
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
import dataclasses
import importlib
import importlib.metadata
import inspect
import math
import re
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
    "engine": ("rlkit.engines", "rollout engine"),
    "rollout_hook": ("rlkit.rollout_hooks", "rollout hook"),
}

BUILTIN_MODULES = {
    "reward": ("rlkit.rewards.builtin", "rlkit.rewards.length", "rlkit.rewards.decs", "rlkit.rewards.budgeted"),
    "shaper": ("rlkit.shaping.groups", "rlkit.shaping.laser", "rlkit.shaping.nemo", "rlkit.shaping.budgets",
               "rlkit.shaping.lapo", "rlkit.shaping.traac"),
    "filter": ("rlkit.algorithms.filters",),
    "prompt_transform": ("rlkit.data.transforms", "rlkit.shaping.lapo"),
    "sample_transform": ("rlkit.shaping.transforms",),
    "advantage": ("rlkit.algorithms.advantages",),
    "loss": ("rlkit.algorithms.losses",),
    "token_mask": ("rlkit.algorithms.masks", "rlkit.algorithms.corrections"),
    "engine": ("rlkit.rollout.engines",),
    "rollout_hook": ("rlkit.rollout.hooks", "rlkit.rollout.forcing", "rlkit.rollout.traac"),
}

# parameters of a reward call that are data, not options
REWARD_DATA = {"prompts", "completions", "completion_ids", "finish_reason", "num_tokens", "step", "correct"}
# the first positional parameters of an advantage / loss call
CALL_DATA = {"advantage": {"rewards", "group_ids", "lengths", "token_rewards", "columns"}, "loss": {"inp"}, "engine": {"ctx"}}


@dataclass(frozen=True)
class Capabilities:
    """What a component needs from the batch and what it promises: the declaration every kind shares. Each kind
    has its own declaration class (``DECLARATIONS``) adding its fields; a component declares them as registration
    flags or as attributes of its function, class or built instance, and they are read here only: config
    validation and stage resolution ask ``Entry.caps`` / ``capabilities(obj, kind=...)``, never the component.

    One spelling each: a declaration is read by its field's name only. A declaration must be a value (a flag, a
    class or instance attribute), never a property, so the class and a built instance answer alike; the spellings of
    before issue 33 (``RENAMED``) are refused with the name to use."""

    needs_verifier: bool = False  # reads the batch's ``correct``, so `rewards` must hold a correctness term


@dataclass(frozen=True)
class RewardCaps(Capabilities):
    verifier: bool = False  # its value is the correctness signal (math_correct)
    # "watchdog": each call runs under the term's `timeout` on a watchdog thread; "own": the reward bounds its
    # own time per sample (math_correct's process pool) and is called inline
    timeouts: Literal["watchdog", "own"] = "watchdog"
    # a failed batch: "per_sample" retries one sample at a time to find the failing one (cheap rewards);
    # "whole_batch" fails the batch as a unit (a scoring model: N single-sample forwards would cost N batches)
    batch_errors: Literal["per_sample", "whole_batch"] = "per_sample"
    # what it returns per sample: one number ("scalar"), one number per completion token ("tokens"), or a list of
    # (start, end, value) token spans ("chunks"); token and chunk rewards need an estimator and a loss that declare
    # ``tokens`` (a parse-time check)
    shape: Literal["scalar", "tokens", "chunks"] = "scalar"
    # keys of per-sample values it reports besides its reward (it returns rlkit.rewards.Reported): each is the batch
    # column "<term>/<key>" (metric reward/<term>/<key>), never added to any reward; stages that declare
    # ``needs_terms`` read them (DECS's curriculum reads decs_redundancy/nrp_ratio)
    reports: tuple = ()


@dataclass(frozen=True)
class AdvantageCaps(Capabilities):
    # consumes the per-token rewards of token / chunk reward terms: called with ``token_rewards`` and returns
    # per-token advantages (rlkit.algorithms.advantages, "Token-level signals")
    tokens: bool = False
    # per-sample columns it reads (a rollout hook's tags such as HBPO's budget, or prompt columns): it is called
    # with ``columns={name: [value per sample]}``
    needs_columns: tuple = ()


@dataclass(frozen=True)
class ShaperCaps(Capabilities):
    monitor: Any = None  # (every, size, samples) of a monitor set generated with the current policy (LASER-D)
    needs_looping: bool = False  # the batch must carry the loop detector's flags
    needs_columns: tuple = ()  # dataset columns of each sample's prompt the batch must carry (ShapingBatch.columns)


@dataclass(frozen=True)
class FilterCaps(Capabilities):
    needs_shaped: bool = False  # decides on shaped rewards, so each generation round is shaped first
    # the per-sample columns of the batch's reward terms it reads: a term's label, or "<term>/<key>" for a value a
    # term reports (RewardCaps.reports); checked against the configured rewards before any model loads
    needs_terms: tuple = ()


@dataclass(frozen=True)
class LossCaps(Capabilities):
    whole_groups: bool = False  # not a sum over tokens: micro-batches keep groups whole (DRPO)
    prepare: Any = None  # minibatch-wide inputs computed before any backward (KL-Cov's token choice)
    aggregation: str | None = None  # the aggregation it is defined with (GSPO, CISPO)
    reference: str | None = None  # the option weighting a KL penalty to the reference policy (> 0: scored)
    tokens: bool = False  # reads per-token advantages (LossInputs.token_advantages) where the estimator makes them


@dataclass(frozen=True)
class MaskCaps(Capabilities):
    kind: Literal["batch", "forward"] = "batch"  # batch: before the normaliser; forward: after each forward


@dataclass(frozen=True)
class EngineCaps(Capabilities):
    """A rollout engine's declaration (``rlkit.rollout.engines`` for the built-ins). Hooks are callables taking the
    config: ``validate`` raises ConfigError at parse time, ``preflight`` checks what it needs before any model loads
    (a server's reachability, memory), ``serve`` starts what the engine talks to (``rlkit serve --engine NAME``)."""

    remote: bool = False  # generates outside the training processes: it gets the run's weights at start-up
    concurrent: bool = False  # may generate while the trainer trains (gates update_weights): async_steps allowed
    weight_sync: bool = True  # takes new policy weights; False: a fixed policy (evaluation, off-policy data)
    uses_policy: bool = False  # generates with the training policy object itself (the hf engine)
    validate: Any = None
    preflight: Any = None
    serve: Any = None


@dataclass(frozen=True)
class HookCaps(Capabilities):
    """A rollout hook's declaration (rlkit.rollout.hooks): ``group_divisor``: rollout.group_size must divide by it
    (the hook splits a group into that many parts: JET's full samples and their branches, HBPO's budgets); it may
    depend on the options (declare it on the instance)."""

    group_divisor: int = 1


DECLARATIONS: dict[str, type[Capabilities]] = {
    "reward": RewardCaps, "advantage": AdvantageCaps, "shaper": ShaperCaps, "filter": FilterCaps, "loss": LossCaps, "token_mask": MaskCaps,
    "engine": EngineCaps, "rollout_hook": HookCaps}
# older spellings of a declaration and the one name each now has (a component that still uses one is an error that
# says so, not a declaration silently lost)
RENAMED = {"needs_correctness": "needs_verifier", "uses_correct": "needs_verifier", "correctness": "verifier",
           "needs_whole_groups": "whole_groups", "handles_timeouts": 'timeouts = "own"'}


def capabilities(obj: Any, flags: dict | None = None, *, kind: str) -> Capabilities:
    """The declaration of a component of ``kind``: registration ``flags`` first, then the object's attributes.
    A declared value outside its choices is a ValueError naming the component."""
    cls = DECLARATIONS.get(kind, Capabilities)
    types_of = typing.get_type_hints(cls)
    values = {}
    name = getattr(obj, "__name__", None) or type(obj).__name__
    for old, now in RENAMED.items():
        if old in (flags or {}) or _declared(obj, old) is not None:
            raise ValueError(f"{_label(kind)} {name!r:.60} declares {old}: the declaration is now {now}")
    for f in dataclasses.fields(cls):
        value = (flags or {}).get(f.name, _declared(obj, f.name))
        if value is None:
            continue
        tp = types_of[f.name]
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        if choices and value not in choices:
            raise ValueError(f"{_label(kind)} {name!r:.60} declares {f.name}={value!r}; "
                             f"valid: {', '.join(map(str, choices))}")
        values[f.name] = value
    return cls(**values)


def _declared(obj: Any, attr: str) -> Any:
    """``obj``'s declaration ``attr`` (None: not declared). A property is refused: asked of the class it is a
    property object, of an instance a value, and the two must agree."""
    owner = obj if isinstance(obj, type) else type(obj)
    if isinstance(getattr(owner, attr, None), property):
        raise ValueError(f"{getattr(obj, '__name__', owner.__name__)!r:.60} declares {attr} as a property; declare a "
                         "value (a class attribute, or one set in __init__ when it depends on the options)")
    return getattr(obj, attr, None)


def hooks(obj: Any) -> dict[str, Callable]:
    """The lifecycle hooks a built component defines (``setup``, ``close``, ``state_dict``, ``load_state_dict``):
    the one place that asks an object which of them it has."""
    out = {}
    for name in ("setup", "close", "state_dict", "load_state_dict"):
        fn = getattr(obj, name, None)
        if callable(fn):
            out[name] = fn
    return out


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
        """The component's declaration (see Capabilities and DECLARATIONS)."""
        return capabilities(self.obj, self.flags, kind=self.kind)


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


def options_class(obj: Any) -> type | None:
    """The typed options of a callable component: the dataclass its ``options`` parameter is annotated with (a
    loss's ``ClipOptions``), else None (options are keyword parameters)."""
    if isinstance(obj, type) or not callable(obj):
        return None
    try:
        if "options" not in inspect.signature(obj).parameters:
            return None
    except (TypeError, ValueError):
        return None
    hint = _hints(obj).get("options")
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def declared_options(kind: str, obj: Any, factory: bool) -> dict[str, inspect.Parameter]:
    """The options a component accepts: the fields of its typed options (``options_class``), or the named
    parameters of its factory, or of the callable itself minus the call's data parameters. ``**kwargs`` is not an
    option."""
    typed = None if factory else options_class(obj)
    if typed is not None:
        hints = typing.get_type_hints(typed)
        return {f.name: inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                          default=f.default if f.default is not dataclasses.MISSING else
                                          inspect.Parameter.empty)
                for f in dataclasses.fields(typed)}
    target = obj.__init__ if factory and isinstance(obj, type) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    data = REWARD_DATA if kind == "reward" else CALL_DATA.get(kind, set())
    skip = {"self"} | (data if kind == "engine" else set()) if factory else data
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


def describe(kinds: list[str]) -> str:
    """The listing of ``rlkit components``: per kind, each component's one-line doc, options (with defaults) and
    the declarations that differ from the kind's defaults."""
    lines = []
    for kind in kinds:
        lines.append(f"{plural(kind)} (entry-point group {KINDS[kind][0]}):")
        for name, doc in listing(kind):
            lines.append(f"  {name:22s} {doc}")
            try:
                entry = resolve(kind, name)
            except Exception as e:  # a broken plugin is listed with why, the rest still print
                lines.append(f"      (cannot load: {e})")
                continue
            opts = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                             for p in entry.options.values())
            if opts:
                lines.append(f"      options: {opts}")
            if declared := declarations(entry):
                lines.append(f"      declares: {', '.join(declared)}")
        lines.append("")
    return "\n".join(lines)


def declarations(entry: Entry) -> list[str]:
    """``name=value`` of each declaration of a component that differs from its kind's default (``rlkit
    components`` and the documentation site's component reference)."""
    caps, default = entry.caps, DECLARATIONS.get(entry.kind, Capabilities)()
    return [f"{f.name}={_shown(getattr(caps, f.name))}" for f in dataclasses.fields(caps)
            if getattr(caps, f.name) != getattr(default, f.name)]


def _shown(value: Any) -> str:
    if isinstance(value, property):  # declared by the built instance, from its options
        return "(from options)"
    return getattr(value, "__name__", None) or repr(value)


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
        if abs(number) > FLOAT32_MAX or 0 < abs(number) < FLOAT32_TINY:
            # every float option ends up in float32 (or bfloat16, with float32's range) tensors: the optimizer's lr,
            # reward weights, clip ranges; 1e300 is finite here and inf (or 1e-50 is 0) at the first step
            raise ConfigError(f"{source}: '{key}' is {number!r}, outside float32's range (magnitudes from "
                              f"{FLOAT32_TINY:.3g} to {FLOAT32_MAX:.3g}, or 0), the precision it is used in")
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


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max (this module does not import torch)
FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: the smallest normal magnitude


def _hints(obj: Any) -> dict:
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations (a plugin's forward references): accept any value
        return {}


def check_options(entry: Entry, kwargs: dict, where: str, source: str) -> dict:
    """Validate ``kwargs`` (found at the config key ``where``) for ``entry``; return the resolved options,
    defaults included.

    Typed options (``options_class``) are also checked against their fields' ranges (``metadata["check"]``).
    Raises ConfigError naming the option, the component and the valid options."""
    opts = entry.options
    label = f"{_label(entry.kind)} {entry.name!r}"
    valid = ", ".join(opts) or "(none)"
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of options of {label}, got {kwargs!r}")
    typed = None if entry.factory else options_class(entry.obj)
    hints = _hints(typed or entry.obj)
    checks = {f.name: f.metadata.get("check", "") for f in dataclasses.fields(typed)} if typed else {}
    out = {}
    for key, value in kwargs.items():
        if key not in opts:
            raise ConfigError(f"{source}: {where}: {label} has no option {key!r}; valid options: {valid}")
        out[key] = coerce(value, hints.get(key, opts[key].annotation), f"{where}.{key}", source)
        if checks.get(key) and not in_range(out[key], checks[key]):
            raise ConfigError(f"{source}: '{where}.{key}' must be {range_words(checks[key])}, got {value!r}")
    for key, p in opts.items():
        if key in out:
            continue
        if p.default is p.empty:
            raise ConfigError(f"{source}: {where}: {label} needs option {key!r}; valid options: {valid}")
        out[key] = p.default
    return out


def typed_options(entry: Entry, options: dict) -> Any:
    """``options`` as the component's typed options object (``options_class``), or None for keyword options."""
    typed = None if entry.factory else options_class(entry.obj)
    return None if typed is None else typed(**options)


def build(entry: Entry, options: dict) -> Any:
    """The component: ``factory(**options)``, or the callable with its options bound (as its typed options object
    where it has one)."""
    if entry.factory:
        return entry.obj(**options)
    import functools

    typed = typed_options(entry, options)
    if typed is not None:
        return functools.update_wrapper(functools.partial(entry.obj, options=typed), entry.obj)
    if not options:
        return entry.obj
    return functools.update_wrapper(functools.partial(entry.obj, **options), entry.obj)


def in_range(value: float, check: str) -> bool:
    """Whether ``value`` satisfies a range spec: ``>0``, ``>=0``, ``[0,1)``, ``(0,1]``, with sentinel values before
    a ``|`` (``-1|>=1``, ``0|>1``)."""
    for part in check.split("|"):
        if m := re.fullmatch(r"(>=|>|<=|<)(-?[\d.]+)", part):
            op, limit = m.group(1), float(m.group(2))
            if {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]:
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


def range_words(check: str) -> str:
    """``-1|>=1`` -> ``-1 or >= 1``; ``[0,1)`` -> ``in [0, 1)``."""
    def word(part: str) -> str:
        if part[0] in "[(":
            lo, hi = part[1:-1].split(",")
            return f"in {part[0]}{lo}, {hi}{part[-1]}"
        m = re.fullmatch(r"(>=|>|<=|<)(.*)", part)
        return f"{m.group(1)} {m.group(2)}" if m else part

    return " or ".join(word(p) for p in check.split("|"))


def build_entry(entry: Entry, kwargs: dict, where: str, source: str = "config") -> Any:
    """The component a config entry at ``where`` describes, built now from its options (checked and completed with
    their defaults); a value its factory refuses (ValueError, TypeError) is a ConfigError naming ``where``."""
    options = check_options(entry, kwargs, f"{where.split(' ')[0]}.kwargs", source)
    try:
        return build(entry, options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {where}: {e}") from None
