"""Rewards defined inline, registered by name and used next to the built-in verifier; then trained and evaluated.

    python examples/custom_reward/train.py [key.sub=value ...]
    accelerate launch --num_processes 2 examples/custom_reward/train.py
"""

import os
import sys

import rlkit


@rlkit.register_reward("brevity_inline")
def brevity(prompts, completions, completion_ids, *, num_tokens, finish_reason, budget: int = 96, **kwargs):
    """1 - tokens / budget for completions that stopped on their own; None (masked) for truncated ones."""
    return [None if r == "length" else max(0.0, 1.0 - n / budget) for n, r in zip(num_tokens, finish_reason)]


@rlkit.register_reward("mentions_units")
class MentionsUnits:
    """Built once from the term's kwargs; 1.0 when the completion names one of the words."""

    def __init__(self, words=("apples", "dollars")):
        self.words = tuple(words)

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [1.0 if any(w in c for w in self.words) else 0.0 for c in completions]


def main(argv: list[str]) -> None:
    from rlkit.config import parse_override

    overrides = {
        "rewards": [{"name": "math_correct", "weight": 1.0},
                    {"name": "brevity_inline", "weight": 0.2, "kwargs": {"budget": 96}},
                    {"name": "mentions_units", "weight": 0.05, "kwargs": {"words": ["seashells", "apples"]}}],
        "train.steps": 4, "output_dir": "runs/custom_reward"}
    overrides.update(parse_override(a) for a in argv)  # the command line wins
    cfg = rlkit.load_config(overrides=overrides)
    result = rlkit.train(cfg, overwrite=True)
    if os.environ.get("RANK", "0") == "0":  # training is over (its process group is gone): one process evaluates
        cfg.model.name_or_path = str(result.run_dir / "checkpoints" / f"step_{result.steps_done:06d}" / "policy")
        rlkit.evaluate(cfg, ["held_out"], rlkit.EvalSettings(k=2))


if __name__ == "__main__":
    main(sys.argv[1:])
