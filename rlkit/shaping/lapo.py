"""LAPO, length-adaptive policy optimization (Wu et al. arXiv 2507.15758; released code ZJU-REAL/LAPO, an OpenRLHF
fork): two stages.

1. Discovery (``lapo_band`` shaper): within each prompt's group, the correct samples' lengths give a band [P30, P70]
   (numpy's linear percentiles); a correct sample inside it earns ``weight`` (0.7) more, one outside
   ``weight * max(0, 1 - d / margin)`` with d its distance to the nearer edge (margin 100 tokens); nothing when the band
   is empty (one correct sample, or all of one length). The shaper keeps each prompt's median correct length of its
   last visit (released: the last JSON line per prompt of the mapping file wins; 0 when none was correct), in its
   state (saved in every checkpoint).
2. Internalization (``lapo_announce`` prompt transform + ``lapo_target`` shaper): each prompt announces its learned
   length ("I will answer the question with {length} tokens."; a median of 0 announces ``fallback`` = 4096), the
   announced length is the sample's ``target_length`` column, and a correct sample earns
   ``weight * exp(-(L - T)^2 / (2 sigma^2))`` more (weight 0.8, sigma 120), T the announced length, or the group's
   median correct length when the announcement is the fallback.

Lengths are the counted lengths (rollout.thinking.count). Deviations from the released code: statistics are per
prompt group (released: per reward call, which is one group only because micro_rollout_batch_size = n = 8); the first
stage-1 bug (each reward appended twice, which makes the released stage 1 fail) is not reproduced; lengths are the
completion's tokens (released: re-tokenised text with BOS / EOS and 7 or 51 prompt characters); the announcement goes
at the end of the user message (released: after the assistant's opening "<think>"); stage 2 keeps its targets fixed,
as the released stage 2 does in effect (its in-training update writes under a key that is never read).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rlkit.records import Prompt, ShapingBatch, StageContext, group_index
from rlkit.registry import register
from rlkit.shaping.groups import Shaper, ShapingResult


def percentile(values: list[float], q: float) -> float:
    """numpy.percentile's default (linear interpolation between closest ranks)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@register("shaper", "lapo_band")
class LAPOBand(Shaper):
    """LAPO stage 1 (Discovery; released examples/scripts/reward_func_stage1.py): reward + weight * r_len for correct
    samples, r_len 1 inside the group's [P30, P70] of correct lengths, max(0, 1 - distance / margin) outside, 0 when
    the band is empty; records each prompt's median correct length (module doc)."""

    needs_verifier = True

    def __init__(self, weight: float = 0.7, margin: float = 100.0, low: float = 30.0, high: float = 70.0):
        if not margin > 0 or not 0 <= low < high <= 100:
            raise ValueError(f"lapo_band needs margin > 0 and 0 <= low < high <= 100, got {margin}, {low}, {high}")
        self.weight, self.margin, self.low, self.high = float(weight), float(margin), float(low), float(high)
        self.medians: dict[str, float] = {}

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        rewards = b.rewards.clone().double()
        inside = judged = 0
        for idx in group_index(b.group_ids):
            rows = idx.tolist()
            ok = [i for i in rows if b.correct[i] >= 1]
            lengths = [float(b.lengths[i]) for i in ok]
            if b.keys is not None:
                self.medians[str(b.keys[rows[0]])] = statistics.median(lengths) if lengths else 0
            if not lengths:
                continue
            lo, hi = percentile(lengths, self.low), percentile(lengths, self.high)
            if not lo < hi:
                continue
            for i, n in zip(ok, lengths):
                r = 1.0 if lo <= n <= hi else max(0.0, 1.0 - min(abs(n - lo), abs(n - hi)) / self.margin)
                rewards[i] += self.weight * r
                inside += lo <= n <= hi
                judged += 1
        return ShapingResult(rewards.to(b.rewards.dtype), {
            "in_band_frac": inside / judged if judged else math.nan, "prompts_known": float(len(self.medians))})

    def state_dict(self) -> dict:
        return {"medians": dict(self.medians)}

    def load_state_dict(self, state: dict) -> None:
        self.medians = {str(k): float(v) for k, v in state.get("medians", {}).items()}


def load_targets(path: str) -> dict[str, float]:
    """The per-prompt lengths stage 1 learned: a JSON mapping {prompt key: length}, or a checkpoint's
    ``trainer_state.json`` (or its directory) holding a lapo_band shaper's state."""
    p = Path(path)
    if p.is_dir():
        p = p / "trainer_state.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"lapo targets {path}: cannot read a JSON file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("stages"), dict):
        found = [v["medians"] for k, v in data["stages"].items() if k.endswith(".lapo_band") and "medians" in v]
        if not found:
            raise ValueError(f"lapo targets {p}: the checkpoint holds no lapo_band state (stage 1 runs lapo_band)")
        data = found[0]
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ValueError(f"lapo targets {p}: expected {{prompt key: length}}")
    return {str(k): float(v) for k, v in data.items()}


@register("prompt_transform", "lapo_announce")
class LAPOAnnounce:
    """LAPO stage 2's prompt (released openrlhf/datasets/prompts_dataset.py, the commented stage-2 block): each
    prompt announces the length stage 1 learned for it, int(median) (the fallback for a median of 0 or a prompt stage 1
    never saw), and carries it as the ``target_length`` column. ``targets``: stage 1's lengths (``load_targets``);
    prompts are keyed by their ``source`` column."""

    def __init__(self, targets: str = "", template: str = "I will answer the question with {length} tokens.",
                 fallback: int = 4096):
        if not targets:
            raise ValueError("lapo_announce needs targets: stage 1's checkpoint (trainer_state.json) or a JSON map")
        if "{length}" not in template:
            raise ValueError("template must contain {length}")
        self.table, self.template, self.fallback = load_targets(targets), template, int(fallback)

    def __call__(self, prompts: list[Prompt], ctx: StageContext) -> tuple[list[Prompt], dict]:
        out, known = [], 0
        for p in prompts:
            median = self.table.get(str(p.columns.get("source")), 0.0)
            length = self.fallback if median == 0 else int(median)
            known += median != 0
            out.append(ctx.render({**p.columns, "target_length": length}, self.template.format(length=length)))
        return out, {"known_frac": known / max(len(prompts), 1)}


@register("shaper", "lapo_target")
class LAPOTarget(Shaper):
    """LAPO stage 2 (Internalization; released examples/scripts/reward_func_stage2.py): reward + weight *
    exp(-(L - T)^2 / (2 sigma^2)) for correct samples, T the prompt's ``target_length`` (lapo_announce), or the
    group's median correct length when T is the fallback (or missing)."""

    needs_verifier = True
    needs_columns = ("target_length",)

    def __init__(self, weight: float = 0.8, sigma: float = 120.0, fallback: int = 4096):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.weight, self.sigma, self.fallback = float(weight), float(sigma), int(fallback)

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        rewards = b.rewards.clone().double()
        gaps = []
        for idx in group_index(b.group_ids):
            rows = idx.tolist()
            ok = [i for i in rows if b.correct[i] >= 1]
            median = statistics.median([float(b.lengths[i]) for i in ok]) if ok else 0
            for i in ok:
                target = (b.columns[i] or {}).get("target_length") if b.columns is not None else None
                t = median if target is None or int(target) == self.fallback else float(target)
                gap = float(b.lengths[i]) - t
                rewards[i] += self.weight * math.exp(-gap * gap / (2 * self.sigma ** 2))
                gaps.append(abs(gap))
        return ShapingResult(rewards.to(b.rewards.dtype),
                             {"target_gap": sum(gaps) / len(gaps) if gaps else math.nan})

