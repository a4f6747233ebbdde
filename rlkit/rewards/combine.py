"""Weighted combination of reward terms, with the checks that stop a bad step early."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlkit import registry
from rlkit.errors import UserError


class RewardError(UserError, RuntimeError):
    """A reward raised, returned the wrong number of values, or returned NaN / a non-number."""


@dataclass
class RewardValues:
    """Per-sample rewards of one batch.

    total: [N] float32, sum of weight * term over the terms that apply (None terms are skipped).
    terms: term name -> [N] float32, NaN where the term returned None.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def _term_label(name: str, taken: set[str]) -> str:
    label = registry.short_name(name)
    base, i = label, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _short(text, n: int = 200) -> str:
    if isinstance(text, list) and text and isinstance(text[-1], dict):
        text = text[-1].get("content", "")
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class Term:
    label: str
    weight: float
    fn: Callable
    format: str = "text"  # "text" | "conversational"
    correctness: bool = False


class RewardSet:
    """The configured reward terms, scored in one call.

    The correctness term (a registered verifier such as ``math_correct``, or a term with
    ``correctness: true``) is scored first; its values reach every other term as the kwarg ``correct``
    (list of 0/1 or None), so length terms can gate on correctness without re-running the verifier.
    format "conversational" hands a term TRL's conversational shapes: each prompt as
    ``[{"role": "user", "content": question}]`` and each completion as ``[{"role": "assistant", "content": text}]``.
    """

    def __init__(self, terms: Sequence[Term | tuple]):
        if not terms:
            raise ValueError("RewardSet needs at least one reward term")
        self.terms = [t if isinstance(t, Term) else Term(*t) for t in terms]
        if sum(t.correctness for t in self.terms) > 1:
            raise ValueError("at most one reward term can be the correctness term, got "
                             + ", ".join(t.label for t in self.terms if t.correctness))

    @classmethod
    def from_config(cls, reward_terms) -> RewardSet:
        taken: set[str] = set()
        built = []
        for term in reward_terms:  # kwargs were checked (and completed) when the config was parsed
            label = _term_label(term.name, taken)
            taken.add(label)
            entry = registry.resolve("reward", term.name, factory=term.factory)
            is_verifier = term.correctness or bool(entry.flag("correctness", False))
            built.append(Term(label, float(term.weight), registry.build(entry, term.kwargs), term.format, is_verifier))
        return cls(built)

    @property
    def correctness_label(self) -> str | None:
        return next((t.label for t in self.terms if t.correctness), None)

    def __call__(self, prompts: Sequence, completions: Sequence[str], completion_ids: Sequence,
                 columns: dict[str, list], **context) -> RewardValues:
        """Score a batch. `columns` maps dataset column -> per-sample list; `context` adds
        finish_reason (list), num_tokens (list) and step (int), all passed through as kwargs."""
        n = len(completions)
        kwargs = {**columns, **context}
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros(n, dtype=torch.float32)
        chat_prompts = [[{"role": "user", "content": q}] for q in columns.get("question", prompts)]
        chat_completions = [[{"role": "assistant", "content": c}] for c in completions]
        for term in sorted(self.terms, key=lambda t: not t.correctness):  # the verifier first
            if term.format == "conversational":
                values = self._call_one(term, chat_prompts, chat_completions, completion_ids, kwargs)
            else:
                values = self._call_one(term, prompts, completions, completion_ids, kwargs)
            if term.correctness:
                kwargs["correct"] = values
            t = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
            terms[term.label] = t
            total += term.weight * torch.nan_to_num(t, nan=0.0)
        return RewardValues(total=total, terms={t.label: terms[t.label] for t in self.terms})

    @staticmethod
    def _call_one(term: Term, prompts, completions, completion_ids, kwargs) -> list:
        n, label, fn = len(completions), term.label, term.fn
        try:
            values = fn(prompts=list(prompts), completions=list(completions),
                        completion_ids=list(completion_ids), **kwargs)
        except Exception as e:  # locate the failing sample, then report it
            idx = _find_failing_sample(fn, prompts, completions, completion_ids, kwargs)
            where = f" at sample {idx} (prompt: {_short(prompts[idx])!r})" if idx is not None else ""
            hint = ""
            if term.format == "text" and isinstance(e, TypeError) and "indices must be integers" in str(e):
                hint = ("; it reads completions as chat messages: set `format: conversational` on this reward "
                        "term (TRL's conversational rewards)")
            raise RewardError(f"reward {label!r} raised {type(e).__name__}: {e}{where}{hint}") from e
        if values is None or len(values) != n:
            got = "None" if values is None else f"{len(values)} values"
            raise RewardError(f"reward {label!r} returned {got} for {n} completions (first prompt: "
                              f"{_short(prompts[0]) if n else ''!r})")
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) and not (
                    isinstance(v, torch.Tensor) and v.numel() == 1):
                raise RewardError(f"reward {label!r} returned {v!r} (not a number or None) at sample {i} "
                                  f"(prompt: {_short(prompts[i])!r})")
            if not math.isfinite(float(v)):
                raise RewardError(f"reward {label!r} returned {float(v)} at sample {i} "
                                  f"(prompt: {_short(prompts[i])!r})")
        return [None if v is None else float(v) for v in values]


def _find_failing_sample(fn, prompts, completions, completion_ids, kwargs) -> int | None:
    per_sample_keys = [k for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)]
    for i in range(len(completions)):
        one = {k: ([v[i]] if k in per_sample_keys else v) for k, v in kwargs.items()}
        try:
            fn(prompts=[prompts[i]], completions=[completions[i]], completion_ids=[completion_ids[i]], **one)
        except Exception:
            return i
    return None
