"""Rewards with the mistakes the corpus checks (importable as `bad_rewards:<name>`)."""

from rlkit.algorithms.losses import ClipOptions


def yields_values(prompts, completions, completion_ids, **kwargs):
    """Uses `yield` where a list was meant: returns a generator."""
    for c in completions:
        yield float(len(c) % 2)


def raises_key_error(prompts, completions, completion_ids, **kwargs):
    """Reads a dataset column that does not exist."""
    return [float(kwargs["difficulty"]) for _ in completions]


NOT_A_FUNCTION = 3.14  # named as a reward: not callable


def exits(prompts, completions, completion_ids, **kwargs):
    """Ends the process from inside the reward."""
    import sys

    sys.exit(3)


def nan_loss(inp, options: ClipOptions = ClipOptions()):
    """ppo_clip whose loss is NaN (as `algorithm.loss`): the run diverges at its first micro-batch."""
    import dataclasses

    from rlkit.algorithms.losses import ppo_clip_loss

    out = ppo_clip_loss(inp, options)
    return dataclasses.replace(out, loss=out.loss * float("nan"))


def varies(prompts, completions, completion_ids, **kwargs):
    """A reward that differs across completions (so advantages are not all zero)."""
    return [float(len(set(ids)) % 3) for ids in completion_ids]
