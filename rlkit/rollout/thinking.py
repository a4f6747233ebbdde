"""Thinking-aware lengths (``rollout.thinking``): where a reasoning model's thinking ends in each completion.

A reasoning model writes ``<think> ... </think>`` and then its answer; NeMo-RL's length penalties count the tokens
before ``</think>``. With ``rollout.thinking.end`` set, every generated sample gets its split once, when the samples
of a generation are collected (the trainer's rollout rounds and monitor rollouts, rlkit.trainers.collect; the
held-out and `rlkit eval` generations, rlkit.evals.suite), as ``Sample.think_tokens``, and ``Sample.length(count)``
is the one length every length decision reads (``rollout.thinking.count``).

The rule, in this order:

- thinking = the completion's tokens up to and including the **first** end marker, answer = the rest;
- the marker is found as its token ids (the marker encoded once with the run's tokenizer, no special tokens) in the
  completion's ids; failing that, in the decoded completion (special tokens kept): the thinking is then the shortest
  prefix whose decoded text holds the marker (found by bisection: a prefix's text only grows with the prefix). The
  second path catches a marker the model spelled with other tokens than the marker alone encodes to (SmolLM2
  encodes ``"</think>"`` as ``"</" "think" ">"`` but ``"ok </think>"`` as ``"ok" " </" "think" ">"``);
- a completion without the marker never closed its thinking: it is all thinking (answer 0). A sample cut before its
  marker (DOT's truncation) becomes one (``Sample.length`` takes min(think_tokens, num_tokens)).

Budget forcing (rlkit.rollout.forcing) injects its phrase before the split is made, so a phrase that holds the marker
(``rollout.budget_forcing.phrase: "</think>"``) ends the thinking where it is injected; the injected tokens stay out
of the loss as any phrase's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlkit.records import Sample
from rlkit.rollout.base import phrase_ids


@dataclass(frozen=True)
class ThinkingSplit:
    """The end marker as text and as token ids (no special tokens), and ``decode`` (ids -> text, special tokens kept)
    for a marker the model spelled with other tokens."""

    end: str
    end_ids: tuple[int, ...]
    decode: Callable[[list[int]], str] | None = None

    @classmethod
    def for_tokenizer(cls, end: str, tokenizer) -> ThinkingSplit | None:
        """The split at ``end`` with ``tokenizer`` (None for an empty marker: no split)."""
        if not end:
            return None
        return cls(end, tuple(phrase_ids(tokenizer, end)),
                   lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    def think_end(self, ids: Sequence[int]) -> int | None:
        """The number of completion tokens up to and including the first marker; None when there is none."""
        ids, k = list(ids), len(self.end_ids)
        i = -1
        while k:
            try:
                i = ids.index(self.end_ids[0], i + 1)
            except ValueError:
                break
            if tuple(ids[i:i + k]) == self.end_ids:
                return i + k
        if self.decode is None or self.end not in self.decode(ids):
            return None
        lo, hi = 1, len(ids)  # the shortest prefix whose text holds the marker: hi always holds it
        while lo < hi:
            mid = (lo + hi) // 2
            if self.end in self.decode(ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return hi

    def think_tokens(self, ids: Sequence[int]) -> int:
        """Thinking tokens of a completion: up to and including the first marker, all of them without one."""
        end = self.think_end(ids)
        return len(ids) if end is None else end

    def annotate(self, samples: Sequence[Sample]) -> None:
        """Fill ``think_tokens`` of each sample (in place): the one place the split is computed."""
        for s in samples:
            s.think_tokens = self.think_tokens(s.completion_ids)


def annotate(split: ThinkingSplit | None, samples: Sequence[Sample]) -> None:
    """``split.annotate(samples)``, nothing without a split (rollout.thinking.end empty: ``think_tokens`` stays None)."""
    if split is not None:
        split.annotate(samples)
