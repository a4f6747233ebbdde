"""Rewards for the silent-misread checks (importable as `misread_rewards:<name>`, tests/faults/test_misreads.py)."""


def always_none(prompts, completions, completion_ids, **kwargs):
    """Applies to no sample: None for every completion (masked, never counted as 0)."""
    return [None] * len(completions)
