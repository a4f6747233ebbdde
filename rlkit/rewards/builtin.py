"""Built-in per-sample rewards: math correctness (math-verify) and answer format.

Length-aware terms and group/batch shaping (DLER, LASER, DOT, ...) build on the same API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlkit.rewards.registry import register_reward

_BOXED = re.compile(r"\\boxed\s*\{")


def gold_text(answer: object) -> str | None:
    """The gold answer as text for math-verify. GSM8K answers end in ``#### N``: keep N.
    MATH solutions carry ``\\boxed{}``: math-verify extracts it. Numbers (MAWPS/SVAMP) become text."""
    if answer is None:
        return None
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def _verify(gold: str, completion: str) -> bool:
    from math_verify import parse, verify  # lazy: keeps `import rlkit.rewards` light

    gold_parsed = parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")
    if not gold_parsed:
        gold_parsed = parse(gold)
    pred = parse(completion)
    return bool(gold_parsed) and bool(pred) and verify(gold_parsed, pred)


@register_reward("math_correct", correctness=True, options=())
def math_correct(prompts: Sequence, completions: Sequence[str], completion_ids: Sequence, *,
                 answer: Sequence | None = None, **kwargs) -> list[float | None]:
    """1.0 if math-verify finds the gold answer (column `answer`) in the completion, else 0.0; None without gold.

    The completion's answer is taken from its last ``\\boxed{}`` when present (math-verify's boxed
    priority), else from the last expression. GSM8K golds (``#### N``) are reduced to N first.
    """
    if answer is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        g = gold_text(gold)
        out.append(None if g is None else float(_verify(g, completion)))
    return out


class BoxedFormat:
    """Format reward: 1.0 if the completion matches `pattern` (default: contains ``\\boxed{...}``), else 0.0."""

    def __init__(self, pattern: str | None = None):
        self.regex = re.compile(pattern, re.DOTALL) if pattern else _BOXED

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [1.0 if self.regex.search(c) else 0.0 for c in completions]


@register_reward("boxed_format", factory=True)
def boxed_format(pattern: str | None = None) -> BoxedFormat:
    """1.0 if the completion has a \\boxed{} answer (or matches `pattern`), else 0.0."""
    return BoxedFormat(pattern)
