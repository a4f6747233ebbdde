"""Sample transforms: they rewrite a rank's scored rollouts before shaping and filtering.

A transform is a registered factory whose object is called as ``transform(batch: StepBatch, ctx: StageContext)
-> metrics``; it edits the batch in place (samples, rewards, terms, correct) and may re-run the reward terms
on samples it changed (``ctx.rescore``).

DOT: Dynamic Outlier Truncation (Wu et al. "Anti-Length Shift", arXiv 2601.03969; methods.md sec. 6).

Inside groups whose success rate is >= success_threshold (1.0: all correct) and that hold at least one correct
response, the cutoff is T(q) = floor(mean(L) + alpha * std(L)) with the sample std (ddof=1); every response
with L_i - T(q) >= m is hard-truncated to T(q) tokens and the rewards are recomputed on the truncated text (the
verifier re-run). m = int(margin) tokens for margin >= 1 (a non-integer margin is truncated: 32.7 -> 32), and
max(int(L_i * margin), 16) for 0 < margin < 1. Runs before dynamic sampling, so the groups it breaks survive
the filter. Paper: alpha 3.0, margin 32, threshold 1.0.

With ``rollout.thinking.count`` the lengths are the counted ones (``Sample.length``): think = the thinking is cut to
T(q) tokens (the answer goes with it), answer = the answer is cut to T(q) tokens after the thinking.

Both edge rules follow DOT's released code (U-rara/DOT projects/dot/length_truncation.py,
``apply_length_truncation``): the margin is ``int(min_truncation_margin)``, and a group without a correct
response is skipped whatever the threshold (with success_threshold = 0 an all-wrong group is not truncated).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from rlkit.records import StageContext, StepBatch, group_index
from rlkit.registry import register


def outlier_cuts(lengths: list[int], correct: list[float | None], group_ids: list[int], *, alpha: float = 3.0,
                 margin: float = 32, success_threshold: float = 1.0) -> dict[int, int]:
    """{sample index: new length} for the responses DOT truncates (DOT arXiv 2601.03969 sec. 3, T(q) =
    floor(mean + alpha * std)). A group of one is never cut (DOT: std 0, so L - T = 0 < m); a group with no
    correct response is skipped (DOT's code, whatever success_threshold); a margin >= 1 is truncated to int."""
    cuts = {}
    for idx in (g.tolist() for g in group_index(group_ids)):
        if len(idx) < 2:
            continue
        n_correct = sum(1 for i in idx if correct[i] is not None and correct[i] >= 1)
        if n_correct == 0 or n_correct / len(idx) < success_threshold:
            continue
        L = [lengths[i] for i in idx]
        cutoff = math.floor(statistics.mean(L) + alpha * statistics.stdev(L))
        for i in idx:
            m = int(margin) if margin >= 1 else max(int(lengths[i] * margin), 16)
            if lengths[i] - cutoff >= m:
                cuts[i] = cutoff
    return cuts


def truncate_sample(sample, length: int, decode):
    """The sample cut to `length` completion tokens (no EOS any more: finish_reason "length")."""
    ids = sample.completion_ids[:length]
    return dataclasses.replace(sample, completion_ids=ids, logprobs=sample.logprobs[:length],
                               versions=sample.versions[:length], segments=sample.segments[:length],
                               finish_reason="length", text=decode(ids))


@register("sample_transform", "dot_truncation")
class DotTruncation:
    """DOT (arXiv 2601.03969): truncate length outliers of groups whose pass rate is >= success_threshold (and
    that hold a correct response) to T(q) = floor(mean + alpha * std) and re-run every reward term on them.
    A margin >= 1 counts int(margin) tokens, as DOT's code. Needs a correctness term.
    Paper: alpha 3.0, margin 32, success_threshold 1.0."""

    needs_verifier = True

    def __init__(self, alpha: float = 3.0, margin: float = 32, success_threshold: float = 1.0):
        if margin <= 0:
            raise ValueError(f"dot_truncation: margin must be > 0, got {margin}")
        self.alpha, self.margin, self.success_threshold = alpha, margin, success_threshold

    def __call__(self, batch: StepBatch, ctx: StageContext) -> dict:
        correct = [None if math.isnan(v) else v for v in batch.correct.tolist()]
        count = batch.length_count  # rollout.thinking.count: the lengths compared and cut are the counted ones
        cuts = outlier_cuts([s.length(count) for s in batch.samples], correct, batch.group_ids.tolist(),
                            alpha=self.alpha, margin=self.margin, success_threshold=self.success_threshold)
        idx = sorted(cuts)
        for i in idx:
            s = batch.samples[i]
            batch.samples[i] = truncate_sample(s, s.counted_from(count) + cuts[i], ctx.decode)
        if idx:
            ctx.rescore(batch, idx)
        return {"truncated_fraction": len(idx) / max(len(batch.samples), 1)}


@register("sample_transform", "zero_truncated")
class ZeroTruncated:
    """UloRL (arXiv 2507.19766 sec. 3): a sample that reached the length cap without EOS gets total reward 0
    (its terms are kept for the metrics). Use it with segment rollouts; leave it out when a length-aware
    reward already handles truncated samples."""

    def __call__(self, batch: StepBatch, ctx: StageContext) -> dict:
        cut = batch.truncated
        batch.rewards[cut] = 0.0
        return {"zeroed": float(cut.sum())}
