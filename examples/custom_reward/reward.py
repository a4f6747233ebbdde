"""A reward plugin: plain callables with TRL's signature. Use them by import path in a config."""


def brevity(prompts, completions, completion_ids, *, num_tokens, finish_reason, budget=128, **kwargs):
    """1 - tokens/budget for completions that stopped on their own; None (not applicable) when truncated."""
    return [None if reason == "length" else max(0.0, 1.0 - n / budget) for n, reason in zip(num_tokens, finish_reason)]


class MentionsUnits:
    """A parametrised reward: a callable object built from the config's kwargs."""

    def __init__(self, words=("apples", "dollars")):
        self.words = tuple(words)

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [1.0 if any(w in c for w in self.words) else 0.0 for c in completions]
