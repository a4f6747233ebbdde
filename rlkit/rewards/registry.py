"""The reward face of the one registry (``rlkit.registry``): the plugin API's register / resolve / build.

Rewards are found by registered name, ``"package.module:function"``, or the ``rlkit.rewards`` entry-point
group. A class, a function named ``get_*`` (TRL's reward factories) or a term marked ``factory: true`` is
called once with the term's ``kwargs`` and its result is the reward; any other function is the reward and
its keyword options are bound.
"""

from __future__ import annotations

from collections.abc import Callable

from rlkit import registry
from rlkit.registry import Entry


def register_reward(name: str, *, factory: bool | None = None, verifier: bool = False,
                    options: tuple | None = None, shape: str = "scalar", reports: tuple = ()) -> Callable:
    """Decorator: ``@register_reward("my_reward")`` on a reward function, or on a class / function whose call
    with the config's ``kwargs`` returns the reward (``factory=True``; classes are factories by default).
    ``verifier=True`` marks a verifier: its 0/1 values reach the other terms as ``correct`` (a config term can also
    be marked with ``correctness: true``).
    ``options``: the keyword parameters that are options (default: every keyword parameter with a default).
    ``shape``: what it returns per sample: "scalar" (one number), "tokens" (one number per completion token) or
    "chunks" (a list of (start, end, value) token spans); token and chunk rewards reach the loss through an
    estimator and a loss that declare ``tokens`` (e.g. decs with ppo_clip), checked when the config is parsed.
    ``reports``: keys of per-sample values it reports besides its reward; it then returns
    ``rlkit.rewards.Reported(values, {key: [number or None per sample]})`` (rlkit.rewards.combine.Reported)."""
    flags = {"reports": tuple(reports)} if reports else {}
    return registry.register("reward", name, factory=factory, options=options, verifier=verifier, shape=shape,
                             **flags)


def resolve_reward(name: str, factory: bool | None = None) -> Entry:
    return registry.resolve("reward", name, factory=factory)


def build_reward(name: str, kwargs: dict | None = None, factory: bool | None = None) -> Callable:
    """Resolve, check the options and build a reward callable (for scripts and tests; the trainer builds
    from the already checked config)."""
    entry = resolve_reward(name, factory)
    return registry.build(entry, registry.check_options(entry, dict(kwargs or {}), f"{name}.kwargs", "reward"))


def list_rewards() -> list[tuple[str, str]]:
    """(name, one-line doc) of every registered and entry-point reward."""
    return registry.listing("reward")
