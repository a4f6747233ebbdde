"""Rewards with the mistakes the corpus checks (importable as `bad_rewards:<name>`)."""


def yields_values(prompts, completions, completion_ids, **kwargs):
    """Uses `yield` where a list was meant: returns a generator."""
    for c in completions:
        yield float(len(c) % 2)


def raises_key_error(prompts, completions, completion_ids, **kwargs):
    """Reads a dataset column that does not exist."""
    return [float(kwargs["difficulty"]) for _ in completions]
