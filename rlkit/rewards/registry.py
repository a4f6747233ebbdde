"""Reward registry: registered names, import paths and entry points (DESIGN rule 4)."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "rlkit.rewards"


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward. ``factory=True`` means ``obj(**kwargs)`` builds the reward callable."""

    name: str
    obj: Callable
    factory: bool
    doc: str
    correctness: bool = False  # its values are handed to the other terms as the `correct` kwarg


_REGISTRY: dict[str, RewardEntry] = {}


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def register_reward(name: str, *, factory: bool = False, correctness: bool = False) -> Callable:
    """Decorator: ``@register_reward("my_reward")`` on a reward function, or with ``factory=True`` on a
    function/class whose call with the config's ``kwargs`` returns the reward callable.
    ``correctness=True`` marks a verifier: its 0/1 values reach the other terms as ``correct``."""

    def deco(obj: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].obj is not obj:
            raise ValueError(f"reward name {name!r} is already registered to {_REGISTRY[name].obj!r}")
        _REGISTRY[name] = RewardEntry(name, obj, factory, _first_line(obj), correctness)
        return obj

    return deco


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _import_path(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KeyError(f"cannot import module {module_name!r} for reward {path!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KeyError(f"module {module_name!r} has no attribute {attr!r} (reward {path!r})")
        obj = getattr(obj, part)
    return obj


def resolve_reward(name: str) -> RewardEntry:
    """Find a reward by registered name, ``module:attr`` import path, or entry point.

    Raises KeyError naming the valid choices. An import-path or entry-point object that is a class is
    treated as a factory; a function is the reward itself.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        obj = _import_path(name)
        return RewardEntry(name, obj, isinstance(obj, type), _first_line(obj))
    eps = _entry_points()
    if name in eps:
        obj = eps[name].load()
        return RewardEntry(name, obj, isinstance(obj, type), _first_line(obj))
    valid = sorted(set(_REGISTRY) | set(eps))
    raise KeyError(
        f"unknown reward {name!r}; registered rewards: {', '.join(valid)} "
        "(or give an import path 'package.module:function')")


def build_reward(name: str, kwargs: dict | None = None) -> Callable:
    """Resolve and instantiate: factories are called with ``kwargs``; plain reward functions get the
    ``kwargs`` bound as fixed keyword arguments."""
    entry = resolve_reward(name)
    kwargs = dict(kwargs or {})
    if entry.factory:
        return entry.obj(**kwargs)
    return functools.partial(entry.obj, **kwargs) if kwargs else entry.obj


def list_rewards() -> list[tuple[str, str]]:
    """(name, one-line doc) of every registered and entry-point reward."""
    out = {name: e.doc for name, e in _REGISTRY.items()}
    for name, ep in _entry_points().items():
        out.setdefault(name, f"(entry point {ep.value})")
    return sorted(out.items())
