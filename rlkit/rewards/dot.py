"""DOT: Dynamic Outlier Truncation (Wu et al. "Anti-Length Shift", arXiv 2601.03969; methods.md sec. 6).

Inside groups whose success rate is >= success_threshold (1.0: all correct), the cutoff is
T(q) = floor(mean(L) + alpha * std(L)) with the sample std (ddof=1); every response with L_i - T(q) >= m
(m = margin tokens; 0 < margin < 1 means max(int(L_i * margin), 16)) is hard-truncated to T(q) tokens and
the rewards are recomputed on the truncated text (the verifier re-run). Runs before dynamic sampling,
so the groups it breaks survive the filter. Paper: alpha 3.0, margin 32, threshold 1.0.
"""

from __future__ import annotations

import dataclasses
import math
import statistics


def outlier_cuts(lengths: list[int], correct: list[float | None], group_ids: list[int], *, alpha: float = 3.0,
                 margin: float = 32, success_threshold: float = 1.0) -> dict[int, int]:
    """{sample index: new length} for the responses DOT truncates."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        by_group.setdefault(g, []).append(i)
    cuts = {}
    for idx in by_group.values():
        if len(idx) < 2:
            continue
        rate = sum(1.0 for i in idx if correct[i] is not None and correct[i] >= 1) / len(idx)
        if rate < success_threshold:
            continue
        L = [lengths[i] for i in idx]
        cutoff = math.floor(statistics.mean(L) + alpha * statistics.stdev(L))
        for i in idx:
            m = margin if margin >= 1 else max(int(lengths[i] * margin), 16)
            if lengths[i] - cutoff >= m:
                cuts[i] = cutoff
    return cuts


def truncate_sample(sample, length: int, tokenizer):
    """The sample cut to `length` completion tokens (no EOS any more: finish_reason "length")."""
    ids = sample.completion_ids[:length]
    return dataclasses.replace(sample, completion_ids=ids, logprobs=sample.logprobs[:length],
                               versions=sample.versions[:length], finish_reason="length",
                               text=tokenizer.decode(ids, skip_special_tokens=True))
