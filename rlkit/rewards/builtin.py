"""Built-in per-sample rewards: math correctness (math-verify) and answer format.

Length-aware terms and group/batch shaping (DLER, LASER, DOT, ...) build on the same API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlkit.rewards.pool import shared_pool
from rlkit.rewards.registry import register_reward

# a committed answer: \boxed{...} with something in it. The default prompt suffix itself says "\boxed{}", and a
# model that copies it empty must not earn the format reward (the 24-step learning check of issue 14 learned to).
BOXED_ANSWER = r"\\boxed\s*\{\s*[^\s}]"
_BOXED = re.compile(BOXED_ANSWER)


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


def _import_math_verify() -> None:
    """Worker warm-up: import math-verify (and sympy) once, before the first sample's deadline starts."""
    import math_verify  # noqa: F401


def _verify_sample(task: tuple[str, str]) -> float:
    """One (gold, completion) pair in a pool worker: 1.0 / 0.0. math-verify's own signal-based timeouts
    work here (a worker runs tasks in its main thread); the pool's deadline backs them up."""
    gold, completion = task
    return float(_verify(gold, completion))


@register_reward("math_correct", factory=True, verifier=True)
class MathCorrect:
    """1.0 if math-verify finds the gold answer (column `answer`) in the completion, else 0.0; None without gold.

    The completion's answer is taken from its last ``\\boxed{}`` when present (math-verify's boxed
    priority), else from the last expression. GSM8K golds (``#### N``) are reduced to N first.
    Samples are verified in a shared pool of worker processes (rlkit.rewards.pool): a sample that takes
    longer than ``sample_timeout`` seconds has its worker killed and raises a SampleTimeout naming the
    sample, which the term's ``on_error`` handles (raise: stop the run; none: mask the sample). That per-sample
    limit replaces the term's whole-batch ``timeout``, which would otherwise have to grow with the batch.
    ``workers``: pool size (0 = min(4, CPU count)).
    """

    verifier = True  # also when named by import path (rlkit.rewards.builtin:math_correct)
    timeouts = "own"  # per-sample deadlines in the pool: the term's whole-batch `timeout` is not applied

    def __init__(self, sample_timeout: float = 10.0, workers: int = 0):
        if sample_timeout < 0 or workers < 0:
            raise ValueError(f"math_correct: sample_timeout and workers must be >= 0, got {sample_timeout} / "
                             f"{workers}")
        self.sample_timeout, self.workers = float(sample_timeout), int(workers)

    def __call__(self, prompts: Sequence, completions: Sequence[str], completion_ids: Sequence, *,
                 answer: Sequence | None = None, **kwargs) -> list[float | None]:
        if answer is None:
            return [None] * len(completions)
        golds = [gold_text(g) for g in answer]
        todo = [i for i, g in enumerate(golds) if g is not None]
        out: list[float | None] = [None] * len(completions)
        if not todo:
            return out
        pool = shared_pool(self.workers, warmup=_import_math_verify)
        try:
            scores = pool.map(_verify_sample, [(golds[i], str(completions[i])) for i in todo], self.sample_timeout)
        except Exception as e:  # a failed sample: report it by its index in this batch
            if hasattr(e, "sample"):
                e.sample = todo[e.sample]
                values = [None] * len(completions)
                for k, i in enumerate(todo):
                    values[i] = e.values[k]
                e.values, e.failed = values, {todo[k]: why for k, why in e.failed.items()}
            raise
        for i, v in zip(todo, scores):
            out[i] = v
        return out


math_correct = MathCorrect  # the registered name, also as an import path


class BoxedFormat:
    """Format reward: 1.0 if the completion matches `pattern` (default: contains a non-empty ``\\boxed{...}``),
    else 0.0."""

    def __init__(self, pattern: str | None = None):
        self.regex = re.compile(pattern, re.DOTALL) if pattern else _BOXED

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [1.0 if self.regex.search(c) else 0.0 for c in completions]


@register_reward("boxed_format", factory=True)
def boxed_format(pattern: str | None = None) -> BoxedFormat:
    """1.0 if the completion has a non-empty \\boxed{...} answer (or matches `pattern`), else 0.0."""
    return BoxedFormat(pattern)
