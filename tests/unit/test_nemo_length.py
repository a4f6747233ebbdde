"""NeMo-RL's length penalties (rlkit/shaping/nemo.py) against the released hook.

The reference below restates NVIDIA-NeMo/RL ``nemo_rl/utils/length_penalty.py`` (PR #3852) for the total
channel: ``apply_group_length_penalties`` with ``_apply_length_penaltyes_and_penalties``,
``_compute_length_weights``, ``_zmad_local_outliers``, ``_group_length_profile_gate_info``,
``_profile_band_numeric_value``, ``_merged_profile_band``, ``_apply_profile_band_multipliers`` and
``_band_multiplier``, following the released control flow step by step, called one prompt group at a time (the
released async path; its metrics are per-row means, so they add up over groups). Each shaper is compared with it
on hundreds of seeded random batches, degenerate groups included. The hand-computed cases are the released unit
tests' (tests/unit/utils/test_length_penalty.py in NeMo-RL).
"""

import random
import statistics
from types import SimpleNamespace

import pytest
import torch

from rlkit import registry
from rlkit.config import ConfigError, load_config, resolve
from rlkit.records import Prompt, Sample, ShapingBatch, StepBatch

# --- the released hook, restated ------------------------------------------------------------------------------


def ref_is_binary(v):  # length_penalty.py _is_binary_reward
    return abs(float(v)) <= 1e-6 or abs(float(v) - 1.0) <= 1e-6


def ref_weights(lengths):  # length_penalty.py _compute_length_weights
    hi, lo = max(lengths), min(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    span = hi - lo
    raw = [1.0 - ((x - lo) / span) for x in lengths]
    mean_w = sum(raw) / len(raw)
    return [w - mean_w for w in raw]


def ref_zmad(lengths, z_thresh, min_mad_rel=0.015):  # length_penalty.py _zmad_local_outliers
    if len(lengths) < 2:
        return set()
    med = statistics.median(lengths)
    mad = statistics.median([abs(x - med) for x in lengths])
    if mad == 0:
        return set()
    if min_mad_rel > 0 and mad / max(med, 1e-9) < min_mad_rel:
        return set()
    return {k for k, x in enumerate(lengths) if 0.6745 * (x - med) / mad > z_thresh}


def ref_group_adjustments(rewards, total, p):
    """length_penalty.py _apply_length_penaltyes_and_penalties, total channel: the adjustments list."""
    n = len(rewards)
    adjustments = [0.0] * n
    if n < 2:
        return adjustments
    positive = [i for i in range(n) if rewards[i] > 0]
    if len(positive) < 2:
        return adjustments
    adjusted = list(rewards)
    pos_total = [total[i] for i in positive]
    pos_rewards = [rewards[i] for i in positive]
    scores = sorted(pos_rewards, reverse=True)
    top = scores[max(0, int(len(pos_rewards) * p["top_percentile"]) - 1)]
    top_idx = [i for i in positive if rewards[i] >= top]
    if p["total_bonus"] > 0:
        valid = [(pi, pos_total[k]) for k, pi in enumerate(positive) if pos_total[k] > 0]
        if valid:
            s, _ = min(valid, key=lambda x: x[1])
            if adjusted[s] >= top:
                adjusted[s] += p["total_bonus"]
                adjustments[s] += p["total_bonus"]
    if p["longest_total_penalty"] > 0:
        valid = [(pi, total[pi]) for pi in top_idx if total[pi] > 0]
        if len(valid) >= 2:
            j, _ = max(valid, key=lambda x: x[1])
            adjusted[j] += -p["longest_total_penalty"]
            adjustments[j] += -p["longest_total_penalty"]
    if p["group_total_length_penalty_coeff"] > 0:
        w = ref_weights(pos_total)
        for k, i in enumerate(positive):
            combined = 0.0 + 0.0 + w[k] * p["group_total_length_penalty_coeff"]
            if combined != 0:
                adjusted[i] += combined
                adjustments[i] += combined
    if p["total_zmad_threshold"] > 0 and p["total_zmad_penalty"] != 0:
        for k in ref_zmad(pos_total, p["total_zmad_threshold"]):
            adjustments[positive[k]] -= p["total_zmad_penalty"]
    return adjustments


def ref_band_value(band, channel, field):  # length_penalty.py _profile_band_numeric_value
    if not isinstance(band, dict):
        return None
    block = band.get(channel)
    if not isinstance(block, dict):
        return None
    v = block.get(field)
    if isinstance(v, bool):
        return None
    return float(v) if isinstance(v, (int, float)) else None


def ref_merged(row_band, global_band):  # length_penalty.py _merged_profile_band
    if not global_band:
        return row_band
    if not row_band:
        return dict(global_band)
    merged = dict(global_band)
    merged.update(row_band)
    return merged


def ref_band_multiplier(rl, ch):  # length_penalty.py _band_multiplier
    if not ch:
        return 1.0
    a, b, f = ch.get("a"), ch.get("b"), ch.get("f")
    if a is None or b is None or f is None or b <= a:
        return 1.0
    if rl <= a:
        return 1.0
    if rl >= b:
        return float(f)
    return 1.0 - (rl - a) / (b - a) * (1.0 - float(f))


def ref_apply_group(rewards, total, row, p, global_band):
    """length_penalty.py apply_group_length_penalties on one prompt group (phases 1, 3, 4 and the metrics'
    counts): (final rewards, binary_ok)."""
    n = len(rewards)
    if any(not ref_is_binary(r) for r in rewards):
        return list(rewards), False
    p = dict(p)
    band = ref_merged(row.get("profile_band"), global_band)
    if p["group_length_penalty_profile_gate"]:  # _group_length_profile_gate_info
        limit = ref_band_value(band, "total", p["group_length_penalty_profile_gate_field"])
        if p["group_length_penalty_profile_gate_positive_only"]:
            lengths = [x for r, x in zip(rewards, total) if r > 0]
        else:
            lengths = list(total)
        open_ = limit is not None and bool(lengths) and float(statistics.mean(lengths)) > limit
        if not open_:
            p["group_total_length_penalty_coeff"] = 0.0
    adjustments = ref_group_adjustments(rewards, total, p)
    profiled = [0.0] * n
    plp = p["profiled_length_penalty"]
    if plp > 0.0 and row.get("profiled_rewards") is not None and row.get("profiled_output_lengths") is not None:
        passing = [x for r, x in zip(row["profiled_rewards"], row["profiled_output_lengths"]) if r > 0]
        if len(passing) >= int(p["profiled_length_min_samples"]):
            std = statistics.stdev(passing) if len(passing) >= 2 else 0.0
            threshold = statistics.mean(passing) + float(p["profiled_length_n_std"]) * std
            for k in range(n):
                if total[k] >= threshold:
                    profiled[k] = -plp
    pass_adj = [0.0] * n
    w = p["pass_rate_length_penalty_weight"]
    if w > 0.0:
        rate = sum(1 for k in range(n) if rewards[k] > 0) / float(n)
        if rate > 0.0:
            l_max = float(max(total[k] for k in range(n) if rewards[k] > 0))
            if l_max > 0.0:
                for k in range(n):
                    if rewards[k] > 0:
                        pass_adj[k] = -w * rate * total[k] / l_max
    base = [0.0] * n
    for i in range(n):
        prof = profiled[i] if adjustments[i] >= 0 else 0.0
        base[i] = rewards[i] + (adjustments[i] + prof + pass_adj[i])
        if base[i] < 0:
            base[i] = 0.0
    final = list(base)
    if p["profile_band_total"] and band:  # _apply_profile_band_multipliers
        ch = band.get("total")
        for i in range(n):
            if rewards[i] <= 0 or base[i] <= 0:
                continue
            cur = base[i]
            cur += cur * ref_band_multiplier(total[i], ch) - cur
            final[i] = cur
    return final, True


def ref_apply(groups, default, global_band=None):
    """The released hook over a batch of groups: (final rewards, its length_penalty/* metrics)."""
    p = {"total_bonus": 0.0, "longest_total_penalty": 0.0, "top_percentile": 0.5,
         "group_total_length_penalty_coeff": 0.0, "total_zmad_threshold": 0.0, "total_zmad_penalty": 0.0,
         "profiled_length_penalty": 0.0, "profiled_length_n_std": 1.0, "profiled_length_min_samples": 2,
         "pass_rate_length_penalty_weight": 0.0, "profile_band_total": False,
         "group_length_penalty_profile_gate": False, "group_length_penalty_profile_gate_field": "a",
         "group_length_penalty_profile_gate_positive_only": True, **default}
    if global_band and "profile_band_total" not in default:  # channels under profile_band.defaults: implicitly on
        p["profile_band_total"] = True
    orig, final, ok = [], [], []
    for g in groups:
        out, binary = ref_apply_group(g["rewards"], g["lengths"], g["row"], p, global_band or {})
        orig += g["rewards"]
        final += out
        ok += [binary] * len(out)
    n = len(orig)
    return final, {
        "env_reward_mean": sum(orig) / n,
        "reward_delta_mean": sum(f - o for f, o in zip(final, orig)) / n,
        "wiped_correct_frac": sum(1 for i in range(n) if ok[i] and orig[i] > 0 and final[i] <= 0.0) / n,
        "adjusted_frac": sum(1 for f, o in zip(final, orig) if f != o) / n,
        "skipped_non_binary_frac": sum(1 for b in ok if not b) / n,
    }


# --- random batches ---------------------------------------------------------------------------------------------

KINDS = ("all_correct", "none_correct", "mixed", "equal_lengths", "single", "non_binary", "long_tight")


def random_row(rng):
    row = {}
    if rng.random() < 0.7:
        k = rng.randint(0, 6)
        row["profiled_rewards"] = [rng.randint(0, 1) for _ in range(k)]
        row["profiled_output_lengths"] = [rng.randint(0, 50) for _ in range(k)]
    if rng.random() < 0.6:
        a = rng.randint(0, 30)
        ch = {"a": a, "b": a + rng.randint(1, 20), "f": rng.choice([0.0, 0.25, 0.5, 0.9, 1.0])}
        roll = rng.random()
        if roll < 0.08:
            ch["b"] = a - rng.randint(0, 3)  # malformed (b <= a): multiplier 1, but the gate still reads a
        elif roll < 0.14:
            del ch["f"]
        elif roll < 0.18:
            ch["a"] = True  # not a number for the gate
        row["profile_band"] = {"total": ch}
    return row


def random_group(rng, kind):
    size = 1 if kind == "single" else rng.choice([2, 3, 4, 5, 8])
    lengths = [rng.randint(0, 40) if rng.random() < 0.9 else 0 for _ in range(size)]
    if kind == "equal_lengths":
        lengths = [rng.randint(0, 40)] * size
    if kind == "long_tight":  # a small spread around a long length (zMAD's MAD / median floor), one far outlier
        base = rng.choice([300, 2000])
        lengths = [base + rng.randint(0, 4) for _ in range(size)]
        lengths[rng.randrange(size)] += rng.choice([0, 50, 3000])
    rewards = {"all_correct": [1.0] * size, "none_correct": [0.0] * size}.get(
        kind, [float(rng.randint(0, 1)) for _ in range(size)])
    if kind == "non_binary":
        rewards[rng.randrange(size)] = rng.choice([0.5, -1.0, 2.0])
    return {"rewards": rewards, "lengths": lengths, "row": random_row(rng), "kind": kind}


def random_batch(rng):
    groups = [random_group(rng, rng.choice(KINDS)) for _ in range(rng.randint(1, 6))]
    return groups, to_batch(groups, rng)


def to_batch(groups, rng=None, correct=None):
    """The rlkit ShapingBatch of ``groups``: correct = reward > 0 (the released reading of a binary reward); the
    group ids are distinct and, with ``rng``, not in order."""
    ids = list(range(len(groups)))
    if rng is not None:
        rng.shuffle(ids)
    rewards = [r for g in groups for r in g["rewards"]]
    return ShapingBatch(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        correct=torch.tensor([float(r > 0) for r in rewards] if correct is None else correct),
        lengths=torch.tensor([float(x) for g in groups for x in g["lengths"]]),
        truncated=torch.zeros(len(rewards), dtype=torch.bool),
        group_ids=torch.tensor([10 * ids[k] + 3 for k, g in enumerate(groups) for _ in g["rewards"]]),
        step=0, columns=[g["row"] for g in groups for _ in g["rewards"]])


def random_options(rng, name):
    """(shaper kwargs, the released default block, the released profile_band.defaults) of one draw."""
    band = rng.choice([None, {"total": {"a": 8.0, "b": 20.0, "f": 0.5}}, {"total": {"a": 0.0, "b": 35.0, "f": 0.0}}])
    field = rng.choice(["a", "b", "f"])
    pos_only = rng.random() < 0.5
    draws = {
        "total_bonus": rng.choice([0.05, 0.1, 0.5, 1.5]),
        "longest_total_penalty": rng.choice([0.1, 0.2, 1.2]),
        "top_percentile": rng.choice([0.0, 0.2, 0.5, 1.0]),
        "group_total_length_penalty_coeff": rng.choice([0.05, 0.1, 0.3]),
        "total_zmad_threshold": rng.choice([0.5, 1.0, 2.0, 3.5]),
        "total_zmad_penalty": rng.choice([0.1, 0.5, -0.2]),
        "profiled_length_penalty": rng.choice([0.1, 0.3, 1.5]),
        "profiled_length_n_std": rng.choice([0.0, 0.5, 1.0, 2.0]),
        "profiled_length_min_samples": rng.choice([1, 2, 3]),
        "pass_rate_length_penalty_weight": rng.choice([0.1, 0.2, 0.5, 1.5]),
    }

    def pick(*keys):
        return {k: draws[k] for k in keys}

    if name == "nemo_shortest_bonus":
        kw = pick("total_bonus", "top_percentile")
        return kw, kw, None
    if name == "nemo_longest_penalty":
        kw = pick("longest_total_penalty", "top_percentile")
        return kw, kw, None
    if name == "nemo_group_length":
        kw = pick("group_total_length_penalty_coeff")
        return kw, kw, None
    if name == "nemo_zmad":
        kw = pick("total_zmad_threshold", "total_zmad_penalty")
        return kw, kw, None
    if name == "nemo_profiled_length":
        kw = pick("profiled_length_penalty", "profiled_length_n_std", "profiled_length_min_samples")
        return kw, kw, None
    if name == "nemo_profile_band":
        return {"profile_band": band}, {"profile_band_total": True}, band
    if name == "nemo_gated_group_length":
        kw = {**pick("group_total_length_penalty_coeff"), "profile_band": band,
              "group_length_penalty_profile_gate_field": field,
              "group_length_penalty_profile_gate_positive_only": pos_only}
        default = {**pick("group_total_length_penalty_coeff"), "group_length_penalty_profile_gate": True,
                   "group_length_penalty_profile_gate_field": field,
                   "group_length_penalty_profile_gate_positive_only": pos_only, "profile_band_total": False}
        return kw, default, band
    if name == "nemo_pass_rate":
        kw = pick("pass_rate_length_penalty_weight")
        return kw, kw, None
    # nemo_length: any subset of the channels, stacked
    kw = {k: v for k, v in draws.items() if rng.random() < 0.5}
    kw.setdefault("group_total_length_penalty_coeff", draws["group_total_length_penalty_coeff"])
    default = dict(kw)
    if rng.random() < 0.5:
        kw["group_length_penalty_profile_gate"] = default["group_length_penalty_profile_gate"] = True
        kw["group_length_penalty_profile_gate_field"] = default["group_length_penalty_profile_gate_field"] = field
    if rng.random() < 0.5:
        kw["profile_band_total"] = default["profile_band_total"] = rng.random() < 0.7
    if band is not None and rng.random() < 0.5:
        kw["profile_band"] = band
    else:
        band = None
    return kw, default, band


NAMES = ["nemo_shortest_bonus", "nemo_longest_penalty", "nemo_group_length", "nemo_zmad", "nemo_profiled_length",
         "nemo_profile_band", "nemo_gated_group_length", "nemo_pass_rate", "nemo_length"]


def build(name, kwargs):
    return registry.build(registry.resolve("shaper", name), kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_released_hook_on_random_batches(name):
    rng = random.Random(1000 + NAMES.index(name))
    seen, changed = set(), 0
    for _ in range(400):
        groups, b = random_batch(rng)
        kwargs, default, band = random_options(rng, name)
        want, want_metrics = ref_apply(groups, default, band)
        out = build(name, kwargs)(b)
        # rlkit sorts groups by id; the expected rewards are in the batch's own order, which shaping keeps
        assert out.rewards.dtype == torch.float32
        assert torch.allclose(out.rewards.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6), \
            (name, kwargs, groups, out.rewards.tolist(), want)
        assert out.metrics == pytest.approx(want_metrics, abs=1e-9), (name, kwargs, groups)
        seen |= {g["kind"] for g in groups}
        changed += want_metrics["adjusted_frac"] > 0
    assert seen == set(KINDS) and changed > 40  # every degenerate kind met, and the shaper did something


# --- the released unit tests' cases -----------------------------------------------------------------------------


def shaped(name, kwargs, rewards, lengths, rows=None):
    groups = [{"rewards": rewards, "lengths": lengths, "row": rows or {}}]
    out = build(name, kwargs)(to_batch(groups))
    return out.rewards.tolist(), out.metrics


def test_hand_computed_cases_of_the_released_tests():
    coeff = {"group_total_length_penalty_coeff": 0.1}
    assert shaped("nemo_group_length", coeff, [1.0, 1.0], [10, 30])[0] == pytest.approx([1.05, 0.95])
    assert shaped("nemo_group_length", coeff, [1.0, 1.0, 1.0], [10, 20, 30])[0] == pytest.approx([1.05, 1.0, 0.95])
    assert shaped("nemo_group_length", coeff, [1.0, 0.0, 1.0], [10, 2000, 30])[0] == pytest.approx([1.05, 0.0, 0.95])
    assert shaped("nemo_group_length", coeff, [1.0, 1.0], [10, 10])[0] == [1.0, 1.0]
    assert shaped("nemo_longest_penalty", {"longest_total_penalty": 0.2}, [1.0, 1.0], [10, 20])[0] == \
        pytest.approx([1.0, 0.8])
    profile = {"profiled_rewards": [1, 1, 0], "profiled_output_lengths": [10, 14, 100]}  # threshold 12 + 2.83
    plp = {"profiled_length_penalty": 0.3}
    assert shaped("nemo_profiled_length", plp, [1.0, 1.0], [10, 20], profile)[0] == pytest.approx([1.0, 0.7])
    one_pass = {"profiled_rewards": [1, 0, 0], "profiled_output_lengths": [10, 100, 120]}
    assert shaped("nemo_profiled_length", plp, [1.0, 1.0], [20, 100], one_pass)[0] == [1.0, 1.0]
    assert shaped("nemo_profiled_length", {**plp, "profiled_length_min_samples": 1}, [1.0, 1.0], [8, 20],
                  {"profiled_rewards": [1, 0], "profiled_output_lengths": [10, 100]})[0] == pytest.approx([1.0, 0.7])
    w = {"pass_rate_length_penalty_weight": 0.2}
    assert shaped("nemo_pass_rate", w, [1.0, 1.0], [10, 20])[0] == pytest.approx([0.9, 0.8])
    assert shaped("nemo_pass_rate", w, [1.0, 0.0], [20, 10])[0] == pytest.approx([0.9, 0.0])
    assert shaped("nemo_pass_rate", w, [1.0, 0.0], [20, 40])[0] == pytest.approx([0.9, 0.0])  # l_max: correct only
    assert shaped("nemo_pass_rate", w, [0.0, 0.0], [10, 20])[0] == [0.0, 0.0]
    band = {"profile_band": {"total": {"a": 10, "b": 20, "f": 0.5}}}
    assert shaped("nemo_profile_band", {}, [1.0, 1.0], [10, 20], band)[0] == pytest.approx([1.0, 0.5])
    assert shaped("nemo_profile_band", {}, [0.0, 1.0], [20, 20], band)[0] == pytest.approx([0.0, 0.5])
    assert shaped("nemo_profile_band", {}, [1.0, 1.0], [15, 30])[0] == [1.0, 1.0]  # no band anywhere: no-op
    assert shaped("nemo_profile_band", band, [1.0, 1.0], [10, 30])[0] == pytest.approx([1.0, 0.5])  # configured
    generous = {"profile_band": {"total": {"a": 100, "b": 200, "f": 0.5}}}
    assert shaped("nemo_profile_band", band, [1.0, 1.0], [10, 30], generous)[0] == [1.0, 1.0]  # the prompt's wins


def test_clamp_metrics_and_binary_skip_as_released():
    profile = {"profiled_rewards": [1, 1], "profiled_output_lengths": [10, 10]}
    rewards, m = shaped("nemo_profiled_length", {"profiled_length_penalty": 1.5}, [1.0, 1.0, 1.0, 0.0],
                        [8, 20, 20, 20], profile)
    assert rewards == [1.0, 0.0, 0.0, 0.0]  # wiped out, never negative; the wrong one stays 0
    assert m == pytest.approx({"env_reward_mean": 0.75, "reward_delta_mean": -0.5, "wiped_correct_frac": 0.5,
                               "adjusted_frac": 0.5, "skipped_non_binary_frac": 0.0})
    coeff = {"group_total_length_penalty_coeff": 0.1}
    for graded in ([-1.0, 1.0], [0.5, 1.0]):
        rewards, m = shaped("nemo_group_length", coeff, graded, [10, 20])
        assert rewards == graded and m["skipped_non_binary_frac"] == 1.0
    # a band multiplier never raises a reward the additive penalties wiped out
    both = {"profiled_rewards": [1, 1], "profiled_output_lengths": [5, 5],
            "profile_band": {"total": {"a": 1, "b": 2, "f": 0.1}}}
    rewards, _ = shaped("nemo_length", {"profiled_length_penalty": 1.5, "profile_band_total": True}, [1.0, 1.0],
                        [10, 20], both)
    assert rewards == [0.0, 0.0]


def test_shortest_bonus_zmad_and_gate_hand_computed():
    # shortest correct non-empty sample: length 5 (the empty and the wrong ones do not count)
    assert shaped("nemo_shortest_bonus", {"total_bonus": 0.1}, [1.0, 1.0, 0.0, 1.0], [0, 9, 2, 5])[0] == \
        pytest.approx([1.0, 1.0, 0.0, 1.1])
    # lengths 10, 11, 12, 40: median 11.5, MAD median(1.5, 0.5, 0.5, 28.5) = 1.0 -> z(40) = 0.6745 * 28.5 = 19.2
    assert shaped("nemo_zmad", {"total_zmad_threshold": 3.5, "total_zmad_penalty": 0.5}, [1.0] * 4,
                  [10, 11, 12, 40])[0] == pytest.approx([1.0, 1.0, 1.0, 0.5])
    gated = {"group_total_length_penalty_coeff": 0.1, "profile_band": {"total": {"a": 15, "b": 30, "f": 0.5}}}
    assert shaped("nemo_gated_group_length", gated, [1.0, 1.0], [10, 30])[0] == pytest.approx([1.05, 0.95])  # 20 > 15
    assert shaped("nemo_gated_group_length", gated, [1.0, 1.0], [10, 14])[0] == [1.0, 1.0]  # mean 12 <= 15: closed
    assert shaped("nemo_gated_group_length", {"group_total_length_penalty_coeff": 0.1}, [1.0, 1.0],
                  [10, 30])[0] == [1.0, 1.0]  # no band: the gate fails closed


def test_unknown_correctness_keeps_its_reward_and_leaves_the_group():
    groups = [{"rewards": [1.0, 1.0, 1.0], "lengths": [10, 500, 30], "row": {}}]
    b = to_batch(groups, correct=[1.0, float("nan"), 1.0])
    out = build("nemo_group_length", {"group_total_length_penalty_coeff": 0.1})(b)
    assert out.rewards.tolist() == pytest.approx([1.05, 1.0, 0.95])  # as if the group were lengths 10 and 30
    w = build("nemo_pass_rate", {"pass_rate_length_penalty_weight": 0.2})
    b = to_batch([{"rewards": [1.0, 0.0, 0.0], "lengths": [10, 10, 10], "row": {}}], correct=[1.0, 0.0, float("nan")])
    assert w(b).rewards.tolist() == pytest.approx([0.9, 0.0, 0.0])  # pass rate 1/2 over the known samples


def test_degenerate_groups_hand_computed():
    coeff = {"group_total_length_penalty_coeff": 0.3}
    assert shaped("nemo_group_length", coeff, [1.0], [10])[0] == [1.0]  # a single sample: nothing to compare
    assert shaped("nemo_pass_rate", {"pass_rate_length_penalty_weight": 0.2}, [1.0], [7])[0] == pytest.approx([0.8])
    assert shaped("nemo_group_length", coeff, [0.0, 0.0, 0.0], [1, 5, 9])[0] == [0.0, 0.0, 0.0]  # none correct
    assert shaped("nemo_group_length", coeff, [1.0, 0.0, 0.0], [1, 5, 9])[0] == [1.0, 0.0, 0.0]  # one correct
    assert shaped("nemo_group_length", coeff, [1.0, 1.0, 1.0], [4, 4, 4])[0] == [1.0, 1.0, 1.0]  # equal lengths
    assert shaped("nemo_pass_rate", {"pass_rate_length_penalty_weight": 0.2}, [1.0, 1.0], [0, 0])[0] == [1.0, 1.0]
    empty = ShapingBatch(rewards=torch.zeros(0), correct=torch.zeros(0), lengths=torch.zeros(0),
                         truncated=torch.zeros(0, dtype=torch.bool), group_ids=torch.zeros(0, dtype=torch.long), step=0)
    assert build("nemo_length", coeff)(empty).rewards.numel() == 0


# --- configuration ----------------------------------------------------------------------------------------------

CONFIGS = {
    "nemo_shortest_bonus": ({"total_bonus": 0.1}, {"top_percentile": 0.5}),
    "nemo_longest_penalty": ({"longest_total_penalty": 0.2}, {"top_percentile": 0.5}),
    "nemo_group_length": ({"group_total_length_penalty_coeff": 0.1}, {}),
    "nemo_zmad": ({"total_zmad_threshold": 2.5, "total_zmad_penalty": 0.1}, {}),
    "nemo_profiled_length": ({"profiled_length_penalty": 0.1},
                             {"profiled_length_n_std": 1.0, "profiled_length_min_samples": 2}),
    "nemo_profile_band": ({"profile_band": {"total": {"a": 10000, "b": 20000, "f": 0.5}}}, {}),
    "nemo_gated_group_length": ({"group_total_length_penalty_coeff": 0.1},
                                {"profile_band": None, "group_length_penalty_profile_gate_channel": "total",
                                 "group_length_penalty_profile_gate_field": "a",
                                 "group_length_penalty_profile_gate_positive_only": True}),
    "nemo_pass_rate": ({"pass_rate_length_penalty_weight": 0.2}, {}),
    "nemo_length": ({"group_total_length_penalty_coeff": 0.1, "total_bonus": 0.1},
                    {"longest_total_penalty": 0.0, "top_percentile": 0.5, "total_zmad_threshold": 0.0,
                     "total_zmad_penalty": 0.0, "profiled_length_penalty": 0.0, "profiled_length_n_std": 1.0,
                     "profiled_length_min_samples": 2, "pass_rate_length_penalty_weight": 0.0,
                     "profile_band_total": None, "profile_band": None, "group_length_penalty_profile_gate": False,
                     "group_length_penalty_profile_gate_channel": "total",
                     "group_length_penalty_profile_gate_field": "a",
                     "group_length_penalty_profile_gate_positive_only": True}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_shaper_loads_from_a_config_with_its_options(name):
    from rlkit.trainers.stages import build_components

    given, defaults = CONFIGS[name]
    cfg = load_config(overrides={"rewards": [{"name": "math_correct"}], "shaping": [{"name": name, "kwargs": given}]})
    assert [(s.name, s.kwargs) for s in cfg.shaping] == [(name, given)]
    assert resolve(cfg).shaping[0].kwargs == {**given, **defaults}  # the released defaults made explicit
    shaper = build_components(cfg)["shaping[0]"]
    caps = registry.capabilities(shaper, kind="shaper")
    assert caps.needs_verifier and isinstance(shaper, registry.resolve("shaper", name).obj)
    with pytest.raises(ConfigError, match=f"reward shaper '{name}' has no option 'length_type'"):
        load_config(overrides={"shaping": [{"name": name, "kwargs": {**given, "length_type": "tokens"}}]})
    with pytest.raises(ConfigError, match=f"reward shaper '{name}' needs a correctness term"):
        build_components(load_config(overrides={"rewards": ["boxed_format"],
                                                "shaping": [{"name": name, "kwargs": given}]}))


@pytest.mark.parametrize("name, kwargs, message", [
    ("nemo_group_length", {}, "needs option 'group_total_length_penalty_coeff'"),
    ("nemo_group_length", {"group_total_length_penalty_coeff": 0.0}, "must be > 0"),
    ("nemo_zmad", {"total_zmad_threshold": 2.0, "total_zmad_penalty": 0.0}, "must not be 0"),
    ("nemo_length", {}, "no length penalty is switched on"),
    ("nemo_length", {"total_bonus": 0.1, "top_percentile": 1.5}, r"top_percentile must be in \[0, 1\]"),
    ("nemo_profiled_length", {"profiled_length_penalty": 0.1, "profiled_length_min_samples": 0}, "must be >= 1"),
    ("nemo_profile_band", {"profile_band": {"total": {"a": 20, "b": 10, "f": 0.5}}}, "requires b > a"),
    ("nemo_profile_band", {"profile_band": {"total": {"a": 10, "b": 20, "f": 1.5}}}, r"f in \[0, 1\]"),
    ("nemo_profile_band", {"profile_band": {"reasoning": {"a": 1, "b": 2, "f": 0.5}}}, "not mapped"),
    ("nemo_gated_group_length", {"group_total_length_penalty_coeff": 0.1,
                                 "group_length_penalty_profile_gate_field": "x"}, "valid choices: a, b, f"),
    ("nemo_gated_group_length", {"group_total_length_penalty_coeff": 0.1,
                                 "group_length_penalty_profile_gate_channel": "answer"}, "valid choices: total"),
])
def test_bad_options_are_config_errors(name, kwargs, message):
    from rlkit.trainers.stages import build_components

    with pytest.raises(ConfigError, match=message):
        build_components(load_config(overrides={"rewards": [{"name": "math_correct"}],
                                                "shaping": [{"name": name, "kwargs": kwargs}]}))


def test_declared_columns_follow_the_options():
    assert build("nemo_length", {"total_bonus": 0.1}).needs_columns == ()
    assert build("nemo_length", {"profiled_length_penalty": 0.1}).needs_columns == \
        ("profiled_rewards", "profiled_output_lengths")
    assert build("nemo_length", {"group_total_length_penalty_coeff": 0.1,
                                 "group_length_penalty_profile_gate": True}).needs_columns == ("profile_band",)
    assert registry.capabilities(build("nemo_pass_rate", {"pass_rate_length_penalty_weight": 0.1}),
                                 kind="shaper").needs_columns == ()


def test_the_trainer_hands_the_declared_prompt_columns_to_the_shaper():
    """trainers/collect.shape gathers the columns a shaper declares from each sample's prompt."""
    from accelerate import Accelerator

    from rlkit.trainers.collect import shape

    profile = {"profiled_rewards": [1, 1], "profiled_output_lengths": [10, 10]}
    prompts = [Prompt([1], "q0", {"source": "f:0", **profile, "other": "x"}), Prompt([1], "q1", {"source": "f:1"})]
    lengths = [8, 20, 20, 20]
    samples = [Sample([1], [5] * n, [-1.0] * n, "stop", "", g) for n, g in zip(lengths, [0, 0, 1, 1])]
    r = torch.tensor([1.0, 1.0, 1.0, 1.0])
    batch = StepBatch(prompts, samples, rewards=r, terms={"math_correct": r.clone()}, correct=r.clone())
    shaper = build("nemo_profiled_length", {"profiled_length_penalty": 0.3})
    seen = []

    def spy(b):
        seen.append(b.columns)
        return shaper(b)

    spy.needs_columns = shaper.needs_columns
    run = SimpleNamespace(acc=Accelerator(cpu=True),
                          stages=SimpleNamespace(shapers=[("nemo_profiled_length", spy)], needs_looping=False))
    shape(run, batch, 0)
    assert seen[0] == [profile, profile, {"profiled_rewards": None, "profiled_output_lengths": None},
                       {"profiled_rewards": None, "profiled_output_lengths": None}]
    assert batch.shaped.tolist() == pytest.approx([1.0, 0.7, 1.0, 1.0])  # prompt 1 has no profile: no penalty
    assert batch.metrics["shaping/nemo_profiled_length/adjusted_frac"] == pytest.approx(0.25)


def test_the_recipe_uses_group_relative_scaling_with_math_correct():
    cfg = load_config(recipes=["nemo_length"])
    assert [t.name for t in cfg.rewards] == ["math_correct"]
    assert [(s.name, s.kwargs) for s in cfg.shaping] == [("nemo_group_length",
                                                          {"group_total_length_penalty_coeff": 0.1})]
    assert cfg.train.steps == 1000 and cfg.rollout.prompts_per_step * cfg.rollout.group_size == 1024
