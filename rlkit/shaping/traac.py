"""TRAAC's difficulty-scaled length reward (Singh et al. arXiv 2510.01581; released
verl/workers/reward_manager/sumLinear.py ``SumLinearRewardManager``): the ``traac_length`` shaper.

Each sample's difficulty class comes from its prompt's pass rate p (the ``difficulty`` tag of the traac_compression
rollout hook: easy p >= 0.8, medium p >= 0.3, hard p >= 0). A history per class keeps the correct samples' lengths of
the last ``window`` steps, the current one included (released: per (data source, class), written to JSON files in the
run directory; here in the shaper's state, saved in every checkpoint). A correct sample of class c earns

    r_len = scale_c * max(clip((L_max - L) / max(L_max - L_min, 1e-6), 0, 1), 1 / (1 + exp((L - med) / (0.1 med))))

over its class's window (L_min, L_max, med), scale 1 / 0.75 / 0.5 for easy / medium / hard, 0 for an unknown class or
an empty window. The recipe's terms give the rest of the released reward (4 x correct; the released 0.25 + 0.25
format points are Qwen-tag checks, left to a format term). Deviations: one history per class (one data source); the
sigmoid is computed without overflow (released: ``math.exp`` raises beyond L ~ 72 med, even for a wrong sample);
lengths are the counted lengths (rollout.thinking.count). The window counts shaping calls: one per step, or one per
generation round under a filter that decides on shaped rewards (the recipe has none).
"""

from __future__ import annotations

import math
import statistics

from rlkit.records import ShapingBatch
from rlkit.registry import register
from rlkit.shaping.groups import Shaper, ShapingResult

SCALE = {"easy": 1.0, "medium": 0.75, "hard": 0.5}


def difficulty_class(p: float | None) -> str:
    """easy (pass rate >= 0.8), medium (>= 0.3), hard (>= 0), unknown (no verdict): released
    vllm_rollout_spmd.py ``get_difficulty_class``."""
    if p is None or p != p:
        return "unknown"
    return "easy" if p >= 0.8 else "medium" if p >= 0.3 else "hard" if p >= 0 else "unknown"


def length_bonus(n: float, window: list[float], scale: float) -> float:
    """scale * max(the linear position in [L_min, L_max], a sigmoid around the median); 0 for an empty window."""
    if not window:
        return 0.0
    lo, hi, med = min(window), max(window), statistics.median(window)
    linear = max(0.0, min(1.0, (hi - n) / max(hi - lo, 1e-6)))
    z = (n - med) / (0.1 * med) if med else (math.inf if n > 0 else 0.0)
    soft = 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
    return scale * max(linear, soft)


@register("shaper", "traac_length")
class TRAACLength(Shaper):
    """TRAAC's length reward by difficulty class over a window of correct lengths (module doc)."""

    needs_verifier = True
    needs_columns = ("difficulty",)

    def __init__(self, window: int = 10, easy: float = 1.0, medium: float = 0.75, hard: float = 0.5):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.scale = int(window), {"easy": float(easy), "medium": float(medium), "hard": float(hard)}
        self.history: dict[str, list[list[float]]] = {}

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        n = len(b.rewards)
        classes = [difficulty_class((b.columns[i] or {}).get("difficulty") if b.columns else None) for i in range(n)]
        current: dict[str, list[float]] = {}
        for i, c in enumerate(classes):
            current.setdefault(c, [])
            if b.correct[i] >= 1:
                current[c].append(float(b.lengths[i]))
        for c, lengths in current.items():
            self.history.setdefault(c, []).append(lengths)
            self.history[c] = self.history[c][-self.window:]
        rewards = b.rewards.clone().double()
        paid = []
        for i, c in enumerate(classes):
            if b.correct[i] >= 1 and c in self.scale:
                window = [x for step in self.history.get(c, [])[-self.window:] for x in step]
                bonus = length_bonus(float(b.lengths[i]), window, self.scale[c])
                rewards[i] += bonus
                paid.append(bonus)
        return ShapingResult(rewards.to(b.rewards.dtype), {
            "bonus_mean": sum(paid) / len(paid) if paid else math.nan,
            **{f"{c}_frac": classes.count(c) / max(n, 1) for c in ("easy", "medium", "hard")}})

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = {str(k): [list(map(float, s)) for s in v] for k, v in state.get("history", {}).items()}
