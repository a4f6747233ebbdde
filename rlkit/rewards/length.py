"""Per-sample length-aware reward terms (architecture rule 3, first layer). Spec: shared/refs/methods.md.

Each term is a registered factory: ``{name: laser_step, kwargs: {target_tokens: 4096}}`` in the config.
They read the context kwargs ``num_tokens`` (L: completion tokens, or with ``rollout.thinking.count`` the thinking or
the answer tokens of the completion, rlkit.rollout.thinking) and ``finish_reason`` and, when they
gate on correctness, ``correct``: the values of the run's correctness term (e.g. ``math_correct``),
which ``RewardSet`` scores first. A term returns None where correctness is unknown (no gold answer).

Terms that *replace* plain correctness in their paper (truncation, l1_max: C(y) = 0 in LASER's Table 2)
are meant to be used with the correctness term at weight 0: it is still scored and logged.
Group- and batch-level shaping (Kimi, Arora-Zanette, GRPO-lambda, ...) lives in rlkit.shaping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from rlkit.rewards.builtin import BOXED_ANSWER
from rlkit.rewards.registry import register_reward


def _need_correct(term: str, correct) -> Sequence:
    if correct is None:
        raise ValueError(f"reward {term!r} gates on correctness: list a correctness term (e.g. math_correct, "
                         "weight 0 if it should not add to the reward) in `rewards`")
    return correct


class _Term:
    """Shared plumbing: subclasses implement ``one(L, truncated, correct, completion, ids, extra)``."""

    name = ""
    needs_verifier = True

    def __call__(self, prompts, completions, completion_ids, *, num_tokens, finish_reason, correct=None, **kwargs):
        if self.needs_verifier:
            correct = _need_correct(self.name, correct)
        out = []
        for i, (n, reason) in enumerate(zip(num_tokens, finish_reason)):
            c = correct[i] if self.needs_verifier else None
            if self.needs_verifier and c is None:
                out.append(None)
                continue
            extra = {k: v[i] for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(num_tokens)}
            out.append(self.one(int(n), reason == "length", c, completions[i], completion_ids[i], extra))
        return out


class Truncation(_Term):
    """Vanilla / DLER truncation (DLER arXiv 2510.15110 sec. 3; LASER Table 2 row 1):
    r = R if L <= L_T and the completion stopped on its own, else rho (0 in both papers)."""

    name = "truncation"

    def __init__(self, max_tokens: int, rho: float = 0.0):
        self.max_tokens, self.rho = max_tokens, rho

    def one(self, L, truncated, c, *_):
        return float(c) if L <= self.max_tokens and not truncated else self.rho


class LaserStep(_Term):
    """LASER step reward (Liu et al. arXiv 2505.15612, Table 2 / eq. 2): + alpha * I(R = 1) * I(L <= L_T).
    Added to the correctness term (C(y) = R). alpha = 0.5 in the paper; no penalty above L_T."""

    name = "laser_step"

    def __init__(self, target_tokens: int, alpha: float = 0.5):
        self.target, self.alpha = target_tokens, alpha

    def one(self, L, truncated, c, *_):
        return self.alpha if c >= 1 and L <= self.target else 0.0


class BudgetTriangular(_Term):
    """Train Long, Think Short triangular budget reward (Hammoud et al. arXiv 2508.08940, sec. 3):
    R_len = R_max * L / B on [0, B]; R_max * (1 - (L - B) / B) on (B, 2B]; 0 beyond 2B.
    B is ``budget`` or, when absent, the sample's ``budget`` column (set by a curriculum)."""

    name = "budget_triangular"
    needs_verifier = False

    def __init__(self, budget: int | None = None, r_max: float = 1.0):
        self.budget, self.r_max = budget, r_max

    def one(self, L, truncated, c, completion, ids, extra):
        B = extra.get("budget", self.budget) if self.budget is None else self.budget
        if not B or B <= 0:
            raise ValueError("budget_triangular needs a positive `budget` (kwarg or per-sample column)")
        if L <= B:
            return self.r_max * L / B
        if L <= 2 * B:
            return self.r_max * (1 - (L - B) / B)
        return 0.0


class DapoOverlong(_Term):
    """DAPO soft overlong punishment (Yu et al. arXiv 2503.14476, eq. 13), with L_max = max_tokens and
    L_cache = buffer: 0 if L <= L_max - L_cache; ((L_max - L_cache) - L) / L_cache inside the buffer;
    -1 beyond L_max. DAPO: L_max 20480, L_cache 4096."""

    name = "dapo_overlong"
    needs_verifier = False

    def __init__(self, max_tokens: int, buffer: int):
        if not 0 < buffer <= max_tokens:
            raise ValueError(f"dapo_overlong: need 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
        self.max_tokens, self.buffer = max_tokens, buffer

    def one(self, L, *_):
        free = self.max_tokens - self.buffer
        if L <= free:
            return 0.0
        if L <= self.max_tokens:
            return (free - L) / self.buffer
        return -1.0


class Cosine(_Term):
    """Cosine-scaled correctness (Yeo et al. arXiv 2502.03373, eq. 1):
    CosFn(L, T, eta_min, eta_max) = eta_min + 0.5 (eta_max - eta_min)(1 + cos(L pi / T)),
    correct: eta_max = r0_correct (at L=0), eta_min = rT_correct (at L=T); wrong: r0_wrong -> rT_wrong;
    truncated, or L + margin >= T: r_exceed. Paper values: 2, 1, -10, 0, -10. Replaces the correctness term.

    ``margin`` = 16 follows the released code (eddycmu/demystify-long-cot, openrlhf/reward/cosine.py with
    ``MAX_LEN_MARGIN = 16`` in reward/common.py, "to ensure there are no off-by-one mistakes"): with T = 100 a
    response of 84 tokens already gets r_exceed. ``margin: 0`` gives the paper's L >= T."""

    name = "cosine"

    def __init__(self, max_tokens: int, r0_correct: float = 2.0, rT_correct: float = 1.0, r0_wrong: float = -10.0,
                 rT_wrong: float = 0.0, r_exceed: float = -10.0, margin: int = 16):
        if margin < 0 or margin >= max_tokens:
            raise ValueError(f"cosine: need 0 <= margin < max_tokens, got margin={margin}, max_tokens={max_tokens}")
        self.T, self.r_exceed, self.margin = max_tokens, r_exceed, margin
        self.correct_range, self.wrong_range = (rT_correct, r0_correct), (rT_wrong, r0_wrong)

    def one(self, L, truncated, c, *_):
        if truncated or L + self.margin >= self.T:
            return self.r_exceed
        lo, hi = self.correct_range if c >= 1 else self.wrong_range
        return lo + 0.5 * (hi - lo) * (1 + math.cos(L * math.pi / self.T))


class L1Exact(_Term):
    """L1-Exact (Aggarwal & Welleck arXiv 2503.04697, eq. 1; LASER Table 2): -alpha * |L - L_T|, added to R.
    The target can come per sample from a ``target_tokens`` column. alpha = 0.0003."""

    name = "l1_exact"
    needs_verifier = False

    def __init__(self, target_tokens: int | None = None, alpha: float = 0.0003):
        self.target, self.alpha = target_tokens, alpha

    def one(self, L, truncated, c, completion, ids, extra):
        target = self.target if self.target is not None else extra.get("target_tokens")
        if target is None:
            raise ValueError("l1_exact needs target_tokens (kwarg or per-sample column)")
        return -self.alpha * abs(L - target)


class L1Max(_Term):
    """L1-Max (Aggarwal & Welleck eq. 2): I(R) * clip(alpha * (L_T - L) + delta, 0, 1); replaces R.
    Sign: the L1 paper's (n_gold - n_y), so shorter than the target earns more; LASER's Table 2 prints
    the opposite sign (methods.md sec. 5). alpha = 0.0003, delta = 0.5 (L1 paper)."""

    name = "l1_max"

    def __init__(self, target_tokens: int, alpha: float = 0.0003, delta: float = 0.5):
        self.target, self.alpha, self.delta = target_tokens, alpha, delta

    def one(self, L, truncated, c, *_):
        if c < 1:
            return 0.0
        return min(1.0, max(0.0, self.alpha * (self.target - L) + self.delta))


class FormatLength(_Term):
    """Format-and-length surrogate reward (Xin et al. arXiv 2505.19439, sec. 3; methods.md 10.2), x = L / L_max:
    smooth R_l = 1 - (1 - x/p)^2 on [0, p], 1 - 2 ((x - p)/(1 - p))^2 on (p, 1];
    polyline R_l = x/p on [0, p], 1 - 2 (x - p)/(1 - p) on (p, 1] (the paper's 2x / 3 - 4x at p = 0.5);
    R = R_f + R_l if the format is right, else min(0, R_f + R_l). No ground truth; R_f from `pattern`."""

    name = "format_length"
    needs_verifier = False

    def __init__(self, max_tokens: int, p: float = 0.5, shape: str = "smooth", pattern: str = BOXED_ANSWER):
        if shape not in ("smooth", "polyline"):
            raise ValueError(f"format_length: shape must be smooth or polyline, got {shape!r}")
        if not 0 < p < 1:
            raise ValueError(f"format_length: p must be in (0, 1), got {p}")
        self.max_tokens, self.p, self.shape, self.regex = max_tokens, p, shape, re.compile(pattern, re.DOTALL)

    def one(self, L, truncated, c, completion, *_):
        x, p = min(L / self.max_tokens, 1.0), self.p
        if self.shape == "smooth":
            r_len = 1 - (1 - x / p) ** 2 if x <= p else 1 - 2 * ((x - p) / (1 - p)) ** 2
        else:
            r_len = x / p if x <= p else 1 - 2 * (x - p) / (1 - p)
        r_fmt = 1.0 if self.regex.search(completion) else 0.0
        return r_fmt + r_len if r_fmt else min(0.0, r_fmt + r_len)


def loop_start(tokens: Sequence[int], min_repeats: int = 2) -> int:
    """Index where the terminal repetition loop starts (len(tokens) if there is none): the earliest start, over
    every period p, of a suffix with period p that spans at least `min_repeats` periods.

    Not CAMPO's ratio (MiroMind-M1 arXiv 2507.14683, core_algos.py ``find_infinite_loop_start``): that function
    steps back in whole blocks of p and keeps the *largest* p with >= min_repeats equal blocks, so its start is
    block-aligned and may be later: for [x, y, z, c x 7] it returns 6/10 (p = 3, start 4), rlkit 7/10 (start 3,
    where the loop of c begins). Whether a loop exists is the same in both (some p whose last 2 blocks of p
    tokens are equal), so the released penalty (a fixed kappa when the ratio is > 0: RepetitionPenalty with
    scaled=False) is reproduced exactly. Kept because the earliest start is the loop's true extent, which the
    scaled penalty and LASER-DE's loop flag (``ends_in_loop``) measure."""
    n, best = len(tokens), len(tokens)
    for p in range(1, n // min_repeats + 1):
        j = n - 1
        while j - p >= 0 and tokens[j] == tokens[j - p]:
            j -= 1
        start = 0 if j - p < 0 else j - p + 1
        if n - start >= min_repeats * p and start < best:
            best = start
    return best


def ends_in_loop(tokens: Sequence[int], min_repeats: int = 3, min_share: float = 0.2) -> bool:
    """True when a terminal loop repeated >= min_repeats times covers >= min_share of the completion."""
    n = len(tokens)
    return n > 0 and (n - loop_start(tokens, min_repeats)) / n >= min_share


class RepetitionPenalty(_Term):
    """CAMPO repetition penalty (MiroMind-M1, arXiv 2507.14683 sec. 3; methods.md 10.3), truncated completions
    only: rep_ratio = (n - loop_start) / n; term = -kappa * rep_ratio (scaled, methods.md default) or -kappa when
    rep_ratio > 0 (scaled=False: the released code with kappa = 0.1, reproduced exactly). The scaled ratio is
    rlkit's (``loop_start``: the loop's earliest start), not the released ``find_infinite_loop_start``'s ratio,
    which keeps the largest block-aligned period (see ``loop_start``); the released code never scales."""

    name = "repetition_penalty"
    needs_verifier = False

    def __init__(self, kappa: float = 0.1, scaled: bool = True, min_repeats: int = 2):
        self.kappa, self.scaled, self.min_repeats = kappa, scaled, min_repeats

    def one(self, L, truncated, c, completion, ids, extra):
        if not truncated or not ids:
            return 0.0
        ratio = (len(ids) - loop_start(ids, self.min_repeats)) / len(ids)
        if ratio <= 0:
            return 0.0
        return -self.kappa * ratio if self.scaled else -self.kappa


for _cls in (Truncation, LaserStep, BudgetTriangular, DapoOverlong, Cosine, L1Exact, L1Max, FormatLength,
             RepetitionPenalty):
    register_reward(_cls.name, factory=True)(_cls)
