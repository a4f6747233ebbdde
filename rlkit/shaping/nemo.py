"""NeMo-RL's correctness-gated length penalties (NVIDIA-NeMo/RL ``nemo_rl/utils/length_penalty.py``, the hook
``apply_group_length_penalties``, PR #3852; its guide ``docs/guides/length-penalty.md``, "Implemented Algorithms"
1-8). Each algorithm is one shaper here, and ``nemo_length`` stacks them in one pass as the released hook does.

The released hook works per prompt group on binary (0/1) rewards, and only the correct samples take part in the
length comparisons. Per group, with C the correct samples, L_i the sample's length and r_i its reward:

    A_i   flat and group-relative adjustments of the correct samples (bonus, longest penalty, group-relative
          scaling, zMAD outliers; each needs at least 2 samples and 2 correct ones)
    P_i   profiled-length penalty (per-prompt profile of a reference model)
    Q_i   pass-rate-scaled penalty
    r'_i = max(0, r_i + (A_i + P_i [A_i >= 0] + Q_i))        a reward is wiped out at worst, never negative
    r''_i = r'_i * m(L_i)  for correct samples with r'_i > 0    profile-band multiplier

How rlkit maps the released hook (the docstrings below say where a shaper differs further):

- correct: the verifier (``ShapingBatch.correct >= 1``; the shapers declare ``needs_verifier``). The released code
  reads ``reward > 0`` of its binary reward, the same thing when the reward is ``math_correct`` alone.
- L: ``ShapingBatch.lengths``, the completion's generated tokens as ``rollout.thinking.count`` counts them. ``all``
  (the default) is the released "total" channel (reasoning + answer tokens, each text re-encoded without special
  tokens: the two can differ by the end-of-sequence token); with ``rollout.thinking.end`` set, ``think`` / ``answer``
  stand for the reasoning / answer channels (rlkit counts generated tokens, the end marker with the thinking and a
  completion without the marker as all thinking: rlkit.rollout.thinking).
- Binary rewards only, as released: a group with any reward that is not 0 or 1 (within 1e-6) is left as it is and
  counted in ``skipped_non_binary_frac`` (one warning per shaper). So a second NeMo shaper after a first one finds
  shaped (non-binary) rewards and skips those groups: to stack algorithms, use ``nemo_length``.
- A sample of unknown correctness (NaN) is left out of its group and keeps its reward (rlkit's rule; the released
  code has no unknown correctness).
- Per-prompt metadata (``profiled_rewards``, ``profiled_output_lengths``, ``profile_band``) are the prompt's
  dataset columns, as the released hook reads them from the data row; the shapers declare them (``needs_columns``).
- Metrics are the released ``length_penalty/*`` ones, per-sample means over the step, logged as
  ``shaping/<name>/<metric>``: ``env_reward_mean`` (before), ``reward_delta_mean``, ``wiped_correct_frac`` (samples
  that were correct with reward > 0 and end with reward <= 0, over all samples), ``adjusted_frac``,
  ``skipped_non_binary_frac``.

Not mapped: the channels as separate settings of a shaper (the run's ``rollout.thinking.count`` picks one for every
length decision) and ``length_type: chars``, ``agent_overrides`` and
``enabled`` (one shaper entry is one agent's block: list it or not), ``verbose`` (the metrics instead), and the
low-effort and multi-component (``reward_components``) skips, which have no counterpart in rlkit.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlkit.records import ShapingBatch, group_index
from rlkit.registry import register
from rlkit.shaping.groups import Shaper, ShapingResult

log = logging.getLogger("rlkit")

BINARY_TOL = 1e-6  # a reward within this of 0 or 1 is binary (released _is_binary_reward)
ZMAD_SCALE = 0.6745  # Iglewicz-Hoaglin modified z = 0.6745 (x - median) / MAD
ZMAD_MIN_MAD_REL = 0.015  # no outliers when MAD / median < 0.015 (fixed in the released code)
PROFILE_COLUMNS = ("profiled_rewards", "profiled_output_lengths")
BAND_COLUMN = "profile_band"


# --- the pieces, one per released helper ------------------------------------------------------------------------


def length_weights(lengths: list[float]) -> list[float]:
    """Group relative-length weights (released ``_compute_length_weights``): raw_i = 1 - (L_i - L_min) / (L_max -
    L_min), shorter is larger, then centred on their mean; all 0 when the lengths are equal."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    raw = [1.0 - (x - lo) / (hi - lo) for x in lengths]
    centre = sum(raw) / len(raw)
    return [x - centre for x in raw]


def zmad_outliers(lengths: list[float], threshold: float) -> set[int]:
    """Long-side outliers (released ``_zmad_local_outliers``): positions with 0.6745 (L - med) / MAD > threshold,
    MAD = median |L - med|; none with fewer than 2 lengths, MAD = 0 or MAD / max(med, 1e-9) < 0.015."""
    if len(lengths) < 2:
        return set()
    med = statistics.median(lengths)
    mad = statistics.median([abs(x - med) for x in lengths])
    if mad == 0 or mad / max(med, 1e-9) < ZMAD_MIN_MAD_REL:
        return set()
    return {k for k, x in enumerate(lengths) if ZMAD_SCALE * (x - med) / mad > threshold}


def band_multiplier(length: float, channel) -> float:
    """Profile-band multiplier (released ``_band_multiplier``) of one {a, b, f} block: 1 up to a, then linearly
    down to f at b, f beyond: m = 1 - (L - a) / (b - a) * (1 - f). 1 when the block is missing or malformed (a, b
    or f missing, b <= a): a per-prompt block is not validated beforehand."""
    if not channel:
        return 1.0
    a, b, f = channel.get("a"), channel.get("b"), channel.get("f")
    if a is None or b is None or f is None or b <= a:
        return 1.0
    if length <= a:
        return 1.0
    if length >= b:
        return float(f)
    return 1.0 - (length - a) / (b - a) * (1.0 - float(f))


def merged_band(row_band, global_band: dict) -> dict | None:
    """The prompt's band (released ``_merged_profile_band``): its ``profile_band`` column over the configured
    defaults, channel by channel (the prompt's channel wins)."""
    if not global_band:
        return row_band
    if not row_band:
        return dict(global_band)
    return {**global_band, **row_band}


def gate_limit(band, field_name: str) -> float | None:
    """The gate's threshold (released ``_profile_band_numeric_value``, total channel): band["total"][field] when it
    is a number (not a bool), else None."""
    block = band.get("total") if isinstance(band, dict) else None
    value = block.get(field_name) if isinstance(block, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_band(band, label: str) -> dict:
    """A configured ``profile_band`` ({total: {a, b, f}}, the released ``profile_band.defaults``) checked as the
    released ``ProfileBandChannel``: numbers a < b, f in [0, 1]. {} when none is given."""
    if band is None:
        return {}
    if not isinstance(band, dict) or set(band) - {"total"}:
        raise ValueError(f"{label}: profile_band takes one channel, {{total: {{a, b, f}}}}, got {band!r} (the "
                         "reasoning and answer channels are not mapped as channels: the lengths are the ones "
                         "rollout.thinking.count counts)")
    if "total" not in band:
        return {}
    ch = band["total"]
    if not isinstance(ch, dict) or set(ch) != {"a", "b", "f"} or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in ch.values()):
        raise ValueError(f"{label}: profile_band.total must be {{a, b, f}} numbers, got {ch!r}")
    if ch["b"] <= ch["a"]:
        raise ValueError(f"{label}: profile band requires b > a, got a={ch['a']}, b={ch['b']}")
    if not 0 <= ch["f"] <= 1:
        raise ValueError(f"{label}: profile band requires f in [0, 1], got f={ch['f']}")
    return {"total": {k: float(v) for k, v in ch.items()}}


# --- one prompt group -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The released ``LengthPenaltyParams`` that map (total channel), with their defaults; ``profile_band`` is the
    configured global band and ``band_on`` the resolved ``profile_band_total``."""

    total_bonus: float = 0.0
    longest_total_penalty: float = 0.0
    top_percentile: float = 0.5
    group_total_length_penalty_coeff: float = 0.0
    total_zmad_threshold: float = 0.0
    total_zmad_penalty: float = 0.0
    profiled_length_penalty: float = 0.0
    profiled_length_n_std: float = 1.0
    profiled_length_min_samples: int = 2
    pass_rate_length_penalty_weight: float = 0.0
    band_on: bool = False
    gate: bool = False
    gate_field: str = "a"
    gate_positive_only: bool = True
    profile_band: dict = field(default_factory=dict)


def flat_adjustments(r: list[float], ok: list[bool], L: list[float], o: Options, coeff: float) -> list[float]:
    """A_i (released ``_apply_length_penaltyes_and_penalties``, total channel): nothing with fewer than 2 samples
    or 2 correct ones. Top scorers: correct samples with r >= the top_percentile score among the correct ones.

    - bonus: + total_bonus to the shortest correct sample of length > 0 (the first on ties), if a top scorer;
    - longest: - longest_total_penalty to the longest top scorer of length > 0 (the first on ties), when there
      are at least 2 such;
    - group-relative: + coeff * length_weights(L over the correct samples);
    - zMAD: - total_zmad_penalty to the correct samples whose L is a zmad_outliers outlier among the correct
      ones (threshold > 0 and penalty != 0)."""
    adj = [0.0] * len(r)
    pos = [i for i, c in enumerate(ok) if c]
    if len(r) < 2 or len(pos) < 2:
        return adj
    ranked = sorted((r[i] for i in pos), reverse=True)
    top = ranked[max(0, int(len(pos) * o.top_percentile) - 1)]
    if o.total_bonus > 0:
        nonempty = [i for i in pos if L[i] > 0]
        if nonempty:
            shortest = min(nonempty, key=lambda i: L[i])
            if r[shortest] >= top:
                adj[shortest] += o.total_bonus
    if o.longest_total_penalty > 0:
        tops = [i for i in pos if r[i] >= top and L[i] > 0]
        if len(tops) >= 2:
            adj[max(tops, key=lambda i: L[i])] -= o.longest_total_penalty
    if coeff > 0:
        for i, w in zip(pos, length_weights([L[i] for i in pos])):
            if w * coeff != 0:
                adj[i] += w * coeff
    if o.total_zmad_threshold > 0 and o.total_zmad_penalty != 0:
        for k in zmad_outliers([L[i] for i in pos], o.total_zmad_threshold):
            adj[pos[k]] -= o.total_zmad_penalty
    return adj


def profiled_penalty(L: list[float], row: dict, o: Options) -> list[float]:
    """P_i (released ``apply_group_length_penalties``, profiled length penalty): with the prompt's profile, the
    lengths of its passing profiled rollouts (profiled reward > 0), when there are at least
    profiled_length_min_samples of them: threshold = mean + profiled_length_n_std * std (sample std, 0 for one);
    every sample with L >= threshold gets - profiled_length_penalty (a wrong one is then clamped back to 0)."""
    none = [0.0] * len(L)
    rewards, lengths = row.get(PROFILE_COLUMNS[0]), row.get(PROFILE_COLUMNS[1])
    if o.profiled_length_penalty <= 0 or rewards is None or lengths is None:
        return none
    passing = [x for pr, x in zip(rewards, lengths) if pr > 0]
    if len(passing) < o.profiled_length_min_samples:
        return none
    spread = statistics.stdev(passing) if len(passing) >= 2 else 0.0
    threshold = statistics.mean(passing) + o.profiled_length_n_std * spread
    return [-o.profiled_length_penalty if x >= threshold else 0.0 for x in L]


def pass_rate_penalty(ok: list[bool], L: list[float], o: Options) -> list[float]:
    """Q_i (released ``apply_group_length_penalties``, pass-rate-scaled penalty, "MAI-style"): for correct samples
    - w * rho * L_i / l_max, rho the group's pass rate, l_max the longest correct length; 0 when rho = 0 or
    l_max = 0."""
    w = o.pass_rate_length_penalty_weight
    out = [0.0] * len(L)
    rho = sum(ok) / float(len(ok))
    if w <= 0 or rho <= 0:
        return out
    l_max = float(max(x for x, c in zip(L, ok) if c))
    if l_max > 0:
        out = [-w * rho * x / l_max if c else 0.0 for x, c in zip(L, ok)]
    return out


def gate_open(ok: list[bool], L: list[float], band, o: Options) -> bool:
    """The profile gate (released ``_group_length_profile_gate_info``, total channel): group-relative scaling
    applies only when mean(L) (over the correct samples with gate_positive_only) > band["total"][gate_field].
    Closed when the limit is missing or there is no length to average."""
    limit = gate_limit(band, o.gate_field)
    lengths = [x for x, c in zip(L, ok) if c] if o.gate_positive_only else list(L)
    if limit is None or not lengths:
        return False
    return float(statistics.mean(lengths)) > limit


def shape_group(r: list[float], ok: list[bool], L: list[float], row: dict, o: Options) -> list[float]:
    """One binary group, all phases of the released hook: r' = max(0, r + (A + P [A >= 0] + Q)), then the
    profile-band multiplier on correct samples with r' > 0 (r' + (r' m - r'), as released)."""
    band = merged_band(row.get(BAND_COLUMN), o.profile_band)
    coeff = o.group_total_length_penalty_coeff
    if o.gate and not gate_open(ok, L, band, o):
        coeff = 0.0
    A = flat_adjustments(r, ok, L, o, coeff)
    P = profiled_penalty(L, row, o)
    Q = pass_rate_penalty(ok, L, o)
    out = []
    for i in range(len(r)):
        delta = A[i] + (P[i] if A[i] >= 0 else 0.0) + Q[i]
        base = max(r[i] + delta, 0.0)
        if o.band_on and band and ok[i] and base > 0:
            base += base * band_multiplier(L[i], band.get("total")) - base
        out.append(base)
    return out


def is_binary(rewards: list[float]) -> bool:
    return all(abs(x) <= BINARY_TOL or abs(x - 1.0) <= BINARY_TOL for x in rewards)


# --- the shapers ------------------------------------------------------------------------------------------------


def _strength(label: str, **values) -> None:
    for key, v in values.items():
        if not v > 0:
            raise ValueError(f"{label}: {key} must be > 0 (0 switches the algorithm off), got {v}")


@register("shaper", "nemo_length")
class NemoLength(Shaper):
    """NeMo-RL's length penalties, any of them stacked in one pass as its released hook does.

    Released: nemo_rl/utils/length_penalty.py ``apply_group_length_penalties`` (PR #3852):

        r' = max(0, r + (A + P [A >= 0] + Q)), then r' * m(L) on correct samples with r' > 0

    (module docstring): the profiled penalty counts only where the other adjustments are >= 0. Options are the
    released ``grpo.length_penalty.default`` keys of the total channel, with the released defaults; 0 switches a
    channel off, and at least one must be on.

    ``profile_band``: the configured band, {total: {a, b, f}} (the released ``profile_band.defaults``); a prompt's
    ``profile_band`` column wins over it. ``profile_band_total``: the multiplier on or off; unset (null), it is on
    when ``profile_band`` is given, as released. Deviations: top_percentile must be in [0, 1] and
    profiled_length_min_samples >= 1 (the released code raises IndexError above 1 and StatisticsError at 0 on a
    prompt with no passing profile; 0 and 1 agree otherwise)."""

    label = "nemo_length"
    needs_verifier = True
    needs_columns = PROFILE_COLUMNS + (BAND_COLUMN,)  # what it may read; a built one declares what its options use

    def __init__(self, total_bonus: float = 0.0, longest_total_penalty: float = 0.0, top_percentile: float = 0.5,
                 group_total_length_penalty_coeff: float = 0.0, total_zmad_threshold: float = 0.0,
                 total_zmad_penalty: float = 0.0, profiled_length_penalty: float = 0.0,
                 profiled_length_n_std: float = 1.0, profiled_length_min_samples: int = 2,
                 pass_rate_length_penalty_weight: float = 0.0, profile_band_total: bool | None = None,
                 profile_band: dict | None = None, group_length_penalty_profile_gate: bool = False,
                 group_length_penalty_profile_gate_channel: Literal["total"] = "total",
                 group_length_penalty_profile_gate_field: Literal["a", "b", "f"] = "a",
                 group_length_penalty_profile_gate_positive_only: bool = True):
        label = self.label
        if not 0 <= top_percentile <= 1:
            raise ValueError(f"{label}: top_percentile must be in [0, 1], got {top_percentile}")
        if profiled_length_min_samples < 1:
            raise ValueError(f"{label}: profiled_length_min_samples must be >= 1, got {profiled_length_min_samples}")
        if group_length_penalty_profile_gate_channel != "total":
            raise ValueError(f"{label}: only the total channel is mapped, got "
                             f"{group_length_penalty_profile_gate_channel!r}")
        band = check_band(profile_band, label)
        self.options = Options(
            total_bonus=total_bonus, longest_total_penalty=longest_total_penalty, top_percentile=top_percentile,
            group_total_length_penalty_coeff=group_total_length_penalty_coeff,
            total_zmad_threshold=total_zmad_threshold, total_zmad_penalty=total_zmad_penalty,
            profiled_length_penalty=profiled_length_penalty, profiled_length_n_std=profiled_length_n_std,
            profiled_length_min_samples=profiled_length_min_samples,
            pass_rate_length_penalty_weight=pass_rate_length_penalty_weight,
            band_on=bool(band) if profile_band_total is None else profile_band_total,
            gate=group_length_penalty_profile_gate, gate_field=group_length_penalty_profile_gate_field,
            gate_positive_only=group_length_penalty_profile_gate_positive_only, profile_band=band)
        o = self.options
        if not (o.total_bonus > 0 or o.longest_total_penalty > 0 or o.group_total_length_penalty_coeff > 0
                or (o.total_zmad_threshold > 0 and o.total_zmad_penalty != 0) or o.profiled_length_penalty > 0
                or o.pass_rate_length_penalty_weight > 0 or o.band_on):
            raise ValueError(f"{label}: no length penalty is switched on (every strength is 0)")
        self.needs_columns = (PROFILE_COLUMNS if o.profiled_length_penalty > 0 else ()) + \
            ((BAND_COLUMN,) if o.band_on or o.gate else ())
        self.warned = False

    def __call__(self, b: ShapingBatch) -> ShapingResult:
        n = b.rewards.numel()
        if n == 0:
            return ShapingResult(b.rewards.clone(), {})
        orig = b.rewards.double()
        final = orig.clone()
        binary_ok = torch.zeros(n, dtype=torch.bool)
        skipped = 0
        for idx in group_index(b.group_ids):
            if not is_binary(orig[idx].tolist()):
                skipped += len(idx)
                continue
            binary_ok[idx] = True
            known = idx[~torch.isnan(b.correct[idx])]  # unknown correctness: out of the group, reward kept
            if known.numel() == 0:
                continue
            row = b.columns[int(known[0])] if b.columns is not None else {}
            out = shape_group(orig[known].tolist(), (b.correct[known] >= 1).tolist(),
                              b.lengths[known].double().tolist(), row, self.options)
            final[known] = torch.tensor(out, dtype=torch.float64)
        if skipped and not self.warned:
            self.warned = True
            log.warning("%s: length penalties need binary (0/1) rewards; %d of %d samples are in groups with other "
                        "rewards and are left as they are (shaping/%s/skipped_non_binary_frac)", self.label, skipped,
                        n, self.label)
        correct = torch.nan_to_num(b.correct, nan=0.0) >= 1
        wiped = binary_ok & correct & (orig > 0) & (final <= 0)
        return ShapingResult(final.to(b.rewards.dtype), {
            "env_reward_mean": float(orig.mean()), "reward_delta_mean": float((final - orig).mean()),
            "wiped_correct_frac": float(wiped.sum()) / n, "adjusted_frac": float((final != orig).sum()) / n,
            "skipped_non_binary_frac": skipped / n})


@register("shaper", "nemo_shortest_bonus")
class NemoShortestBonus(NemoLength):
    """NeMo-RL shortest-rollout bonus: + total_bonus to the group's shortest correct sample.

    Guide algorithm 1; released ``_apply_length_penaltyes_and_penalties``, total channel. Per group, + total_bonus
    to the shortest correct sample of length > 0 (the first on ties) when it is a top scorer (r >= the
    top_percentile score among the correct ones; every correct sample is one with binary rewards). Needs 2 samples
    and 2 correct ones. Then max(0, .) as released."""

    label = "nemo_shortest_bonus"
    needs_columns = ()

    def __init__(self, total_bonus: float, top_percentile: float = 0.5):
        _strength(self.label, total_bonus=total_bonus)
        super().__init__(total_bonus=total_bonus, top_percentile=top_percentile)


@register("shaper", "nemo_longest_penalty")
class NemoLongestPenalty(NemoLength):
    """NeMo-RL longest top-scorer penalty: - longest_total_penalty to the group's longest correct sample.

    Guide algorithm 2; released ``_apply_length_penaltyes_and_penalties``, total channel. Per group, -
    longest_total_penalty to the longest top scorer (correct, r >= the top_percentile score among the correct
    ones, length > 0; the first on ties), when there are at least 2 such. Then max(0, .) as released: a penalty
    above the reward wipes it out."""

    label = "nemo_longest_penalty"
    needs_columns = ()

    def __init__(self, longest_total_penalty: float, top_percentile: float = 0.5):
        _strength(self.label, longest_total_penalty=longest_total_penalty)
        super().__init__(longest_total_penalty=longest_total_penalty, top_percentile=top_percentile)


@register("shaper", "nemo_group_length")
class NemoGroupLength(NemoLength):
    """NeMo-RL group relative-length scaling: a dense, zero-centred shortness bonus over the correct samples.

    Guide algorithm 3; released ``_compute_length_weights`` in ``_apply_length_penaltyes_and_penalties``, total
    channel. Over a group's correct samples C:

        r_i += coeff * (w_i - mean_C(w)),   w_i = 1 - (L_i - min_C L) / (max_C L - min_C L)

    0 when their lengths are equal. Dense and zero-centred: the group's mean reward is unchanged (until the
    max(0, .) clamp). Needs 2 samples and 2 correct ones; wrong samples are untouched."""

    label = "nemo_group_length"
    needs_columns = ()

    def __init__(self, group_total_length_penalty_coeff: float):
        _strength(self.label, group_total_length_penalty_coeff=group_total_length_penalty_coeff)
        super().__init__(group_total_length_penalty_coeff=group_total_length_penalty_coeff)


@register("shaper", "nemo_zmad")
class NemoZmad(NemoLength):
    """NeMo-RL zMAD penalty: - total_zmad_penalty to long outliers (modified z) among the correct samples.

    Guide algorithm 4; released ``_zmad_local_outliers``, total channel. Among a group's correct samples:

        z_i = 0.6745 (L_i - med) / MAD,   MAD = median |L - med|;   z_i > total_zmad_threshold: - total_zmad_penalty

    No outlier when MAD = 0 or MAD / med < 0.015. Long side only; needs 2 samples and 2 correct ones; then
    max(0, .)."""

    label = "nemo_zmad"
    needs_columns = ()

    def __init__(self, total_zmad_threshold: float, total_zmad_penalty: float):
        _strength(self.label, total_zmad_threshold=total_zmad_threshold)
        if total_zmad_penalty == 0:
            raise ValueError(f"{self.label}: total_zmad_penalty must not be 0 (0 switches the algorithm off)")
        super().__init__(total_zmad_threshold=total_zmad_threshold, total_zmad_penalty=total_zmad_penalty)


@register("shaper", "nemo_profiled_length")
class NemoProfiledLength(NemoLength):
    """NeMo-RL profiled length penalty: a flat penalty beyond a per-prompt threshold from offline profiling.

    Guide algorithm 5; released ``apply_group_length_penalties``. From the prompt's offline profile (dataset
    columns ``profiled_rewards`` and ``profiled_output_lengths``), the lengths l of its passing rollouts (profiled
    reward > 0); with at least profiled_length_min_samples of them:

        T = mean(l) + profiled_length_n_std * std(l)   (sample std; 0 for one);   L_i >= T: - profiled_length_penalty

    on every sample, then max(0, .), so only correct samples lose. A prompt without the columns, or with fewer
    passing rollouts, gets nothing. min_samples must be >= 1 (NemoLength's deviation)."""

    label = "nemo_profiled_length"
    needs_columns = PROFILE_COLUMNS

    def __init__(self, profiled_length_penalty: float, profiled_length_n_std: float = 1.0,
                 profiled_length_min_samples: int = 2):
        _strength(self.label, profiled_length_penalty=profiled_length_penalty)
        super().__init__(profiled_length_penalty=profiled_length_penalty, profiled_length_n_std=profiled_length_n_std,
                         profiled_length_min_samples=profiled_length_min_samples)


@register("shaper", "nemo_profile_band")
class NemoProfileBand(NemoLength):
    """NeMo-RL profile-band multiplier: correct rewards scaled down past a per-prompt length band {a, b, f}.

    Guide algorithm 6; released ``_apply_profile_band_multipliers`` and ``_band_multiplier``, total channel. A
    correct sample's reward r > 0 is multiplied by

        m(L) = 1 for L <= a,   1 - (L - a) / (b - a) * (1 - f) for a < L < b,   f for L >= b.

    {a, b, f} is the prompt's ``profile_band`` column ({total: {a, b, f}}, per-prompt bands
    from offline profiling) or, for a prompt without one, ``profile_band`` given here; a malformed per-prompt
    block (b <= a, a value missing) multiplies by 1."""

    label = "nemo_profile_band"
    needs_columns = (BAND_COLUMN,)

    def __init__(self, profile_band: dict | None = None):
        super().__init__(profile_band_total=True, profile_band=profile_band)


@register("shaper", "nemo_gated_group_length")
class NemoGatedGroupLength(NemoLength):
    """NeMo-RL profile-gated group relative-length scaling: on only where a group runs past its prompt's band.

    Guide algorithm 7; released ``_group_length_profile_gate_info`` before ``_compute_length_weights``, total
    channel. ``nemo_group_length`` applies to a group only when the mean length (of its correct samples with
    group_length_penalty_profile_gate_positive_only, else of all) > band["total"][field] (field a, b or f), the
    band being the prompt's ``profile_band`` column over ``profile_band`` given here. The gate fails closed: no
    band, no numeric limit or no length to average means no scaling."""

    label = "nemo_gated_group_length"
    needs_columns = (BAND_COLUMN,)

    def __init__(self, group_total_length_penalty_coeff: float, profile_band: dict | None = None,
                 group_length_penalty_profile_gate_channel: Literal["total"] = "total",
                 group_length_penalty_profile_gate_field: Literal["a", "b", "f"] = "a",
                 group_length_penalty_profile_gate_positive_only: bool = True):
        _strength(self.label, group_total_length_penalty_coeff=group_total_length_penalty_coeff)
        gate = {"group_length_penalty_profile_gate": True,
                "group_length_penalty_profile_gate_channel": group_length_penalty_profile_gate_channel,
                "group_length_penalty_profile_gate_field": group_length_penalty_profile_gate_field,
                "group_length_penalty_profile_gate_positive_only": group_length_penalty_profile_gate_positive_only}
        super().__init__(group_total_length_penalty_coeff=group_total_length_penalty_coeff, profile_band_total=False,
                         profile_band=profile_band, **gate)


@register("shaper", "nemo_pass_rate")
class NemoPassRate(NemoLength):
    """NeMo-RL pass-rate-scaled length penalty: - w * rho * L / l_max on correct samples.

    Guide algorithm 8, "MAI-style"; released ``apply_group_length_penalties``. Correct samples get

        r_i - w * rho * L_i / l_max,   w = pass_rate_length_penalty_weight

    rho the group's pass rate (over the samples of known correctness), l_max the longest correct length in the
    group: the longest correct sample loses exactly w * rho, an all-wrong group nothing. Applies to a group of one
    sample too. Then max(0, .)."""

    label = "nemo_pass_rate"
    needs_columns = ()

    def __init__(self, pass_rate_length_penalty_weight: float):
        _strength(self.label, pass_rate_length_penalty_weight=pass_rate_length_penalty_weight)
        super().__init__(pass_rate_length_penalty_weight=pass_rate_length_penalty_weight)
