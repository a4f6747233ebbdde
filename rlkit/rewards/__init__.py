"""Reward plugin API.

A reward is a plain callable with TRL's signature::

    f(prompts, completions, completion_ids, **kwargs) -> list[float | None]

`kwargs` carry the dataset columns of each sample (e.g. ``answer``) plus the context ``finish_reason``,
``num_tokens`` and ``step``. ``None`` means "not applicable": it is masked, never counted as 0.
Rewards are found by registered name, by import path ``"package.module:function"``, or through the
``rlkit.rewards`` entry-point group of installed packages (rlkit.registry).
"""

from rlkit.rewards import length  # noqa: F401  (registers the length-aware terms)
from rlkit.rewards.builtin import boxed_format, math_correct  # noqa: F401  (registers the built-ins)
from rlkit.rewards.combine import RewardError, RewardSet, RewardValues  # noqa: F401
from rlkit.rewards.registry import build_reward, list_rewards, register_reward, resolve_reward  # noqa: F401
