"""A reward module with a syntax error (the corpus checks the one-line error)."""


def broken(prompts, completions:
    return [0.0 for _ in completions]
