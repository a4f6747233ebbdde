"""Weighted combination of reward terms, with the checks that stop a bad step early."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlkit.rewards.registry import build_reward


class RewardError(RuntimeError):
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
    label = name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    base, i = label, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _short(text, n: int = 200) -> str:
    if isinstance(text, list) and text and isinstance(text[-1], dict):
        text = text[-1].get("content", "")
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


class RewardSet:
    """The configured reward terms: ``[(label, weight, fn)]`` or ``[(label, weight, fn, format)]``.

    format "conversational" hands the reward TRL's conversational shapes: each prompt as
    ``[{"role": "user", "content": question}]`` and each completion as ``[{"role": "assistant", "content": text}]``.
    """

    def __init__(self, terms: Sequence[tuple]):
        if not terms:
            raise ValueError("RewardSet needs at least one reward term")
        self.terms = [(t[0], t[1], t[2], t[3] if len(t) > 3 else "text") for t in terms]

    @classmethod
    def from_config(cls, reward_terms) -> RewardSet:
        taken: set[str] = set()
        built = []
        for term in reward_terms:
            label = _term_label(term.name, taken)
            taken.add(label)
            built.append((label, float(term.weight), build_reward(term.name, term.kwargs), term.format))
        return cls(built)

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
        for label, weight, fn, fmt in self.terms:
            if fmt == "conversational":
                values = self._call_one(label, fn, chat_prompts, chat_completions, completion_ids, kwargs)
            else:
                values = self._call_one(label, fn, prompts, completions, completion_ids, kwargs)
            t = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
            terms[label] = t
            total += weight * torch.nan_to_num(t, nan=0.0)
        return RewardValues(total=total, terms=terms)

    @staticmethod
    def _call_one(label, fn, prompts, completions, completion_ids, kwargs) -> list:
        n = len(completions)
        try:
            values = fn(prompts=list(prompts), completions=list(completions),
                        completion_ids=list(completion_ids), **kwargs)
        except Exception as e:  # locate the failing sample, then report it
            idx = _find_failing_sample(fn, prompts, completions, completion_ids, kwargs)
            where = f" at sample {idx} (prompt: {_short(prompts[idx])!r})" if idx is not None else ""
            raise RewardError(f"reward {label!r} raised {type(e).__name__}: {e}{where}") from e
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
