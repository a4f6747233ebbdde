"""The verifier an evaluation scores with: the run's correctness term, or the default ``math_correct`` (used by
``rlkit eval`` and the training run's held-out check alike)."""

from __future__ import annotations

from rlkit import registry


def accuracy_reward(cfg, rewards=None):
    """The held-out metric: the configured correctness term (a registered verifier, or a term marked
    ``correctness: true``) with its options, ``timeout``, ``on_error`` and ``format``, else the default
    verifier ``math_correct`` with the default term settings. ``rewards``: the run's RewardSet, whose verifier is
    used as it is (one instance per process)."""
    import dataclasses

    from rlkit.config import RewardTerm
    from rlkit.rewards.combine import GuardedReward, make_term

    found = rewards.verifier() if rewards is not None else None
    if found is None:
        for term in cfg.rewards:
            entry = registry.resolve("reward", term.name, factory=term.factory)
            if term.correctness or entry.caps.verifier:
                break
        else:
            term = RewardTerm("math_correct")
            entry = registry.resolve("reward", term.name)
            term.kwargs = registry.check_options(entry, term.kwargs, "rewards", "the default verifier")
        found = make_term(term, registry.short_name(term.name))
    return GuardedReward(dataclasses.replace(found, weight=1.0, correctness=True), phase="the held-out evaluation")
