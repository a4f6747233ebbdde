"""Reward plugin API.

A reward is a plain callable with TRL's signature::

    f(prompts, completions, completion_ids, **kwargs) -> list[float | None]

`kwargs` carry the dataset columns of each sample (e.g. ``answer``) plus the context ``finish_reason``,
``num_tokens`` (the completion's length as ``rollout.thinking.count`` counts it: every token by default) and
``step``. ``None`` means "not applicable": it is masked, never counted as 0.
Rewards are found by registered name, by import path ``"package.module:function"``, or through the
``rlkit.rewards`` entry-point group of installed packages (rlkit.registry).

The names below are loaded on first access: importing ``rlkit.rewards.pool`` (what a reward worker
process does) must not import torch. The built-in rewards register themselves when the registry first
looks up a reward (rlkit.registry.BUILTIN_MODULES), or when their names are accessed here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "boxed_format": "rlkit.rewards.builtin",
    "math_correct": "rlkit.rewards.builtin",
    "MathCorrect": "rlkit.rewards.builtin",
    "Reported": "rlkit.rewards.combine",
    "RewardError": "rlkit.rewards.combine",
    "RewardSet": "rlkit.rewards.combine",
    "RewardValues": "rlkit.rewards.combine",
    "build_reward": "rlkit.rewards.registry",
    "list_rewards": "rlkit.rewards.registry",
    "register_reward": "rlkit.rewards.registry",
    "resolve_reward": "rlkit.rewards.registry",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from rlkit.rewards.builtin import MathCorrect, boxed_format, math_correct  # noqa: F401
    from rlkit.rewards.combine import Reported, RewardError, RewardSet, RewardValues  # noqa: F401
    from rlkit.rewards.registry import build_reward, list_rewards, register_reward, resolve_reward  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlkit.rewards' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
