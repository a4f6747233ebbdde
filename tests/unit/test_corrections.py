"""Importance corrections between the engine and the trainer (rlkit.algorithms.corrections): hand-computed weights,
padding left out, the config's checks, and the trainer applying them to the loss's token weights."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlkit import registry
from rlkit.algorithms.corrections import GeometricRejection, IcePop, MaskedIS, SequenceMaskedIS, SequenceTIS
from rlkit.config import ConfigError, load_config
from rlkit.records import MaskInputs, UpdateStats
from rlkit.trainers.stages import Stages, build_components
from rlkit.trainers.update import MicroRows, UpdateSettings, token_weights

LN = math.log


def _inp(ratios: list[list[float]], mask: list[list[float]] | None = None) -> MaskInputs:
    """Old logprobs log(rho) against behaviour logprobs 0: the ratios are ``ratios`` (masked positions anything)."""
    lr = torch.tensor([[LN(r) for r in row] for row in ratios])
    m = torch.ones_like(lr) if mask is None else torch.tensor(mask, dtype=torch.float32)
    return MaskInputs(mask=m, truncated=torch.zeros(len(ratios), dtype=torch.bool), correct=None,
                      old_logprobs=lr - 1.0, behaviour_logprobs=torch.full_like(lr, -1.0))


def test_icepop_keeps_each_tokens_ratio_inside_the_band_and_zeroes_the_rest():
    w = IcePop().keep(_inp([[0.4, 0.5, 1.5, 5.0, 6.0]]))
    assert w[0].tolist() == pytest.approx([0.0, 0.5, 1.5, 5.0, 0.0], rel=1e-5)
    assert IcePop(0.8, 1.25).keep(_inp([[0.7, 1.2, 1.3]]))[0].tolist() == pytest.approx([0.0, 1.2, 0.0], rel=1e-5)


def test_masked_is_drops_tokens_outside_the_band_without_reweighting():
    assert MaskedIS().keep(_inp([[0.4, 0.5, 1.5, 2.0, 3.0]]))[0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_sequence_tis_weights_every_token_by_the_truncated_product_of_its_ratios():
    # row 0: 1.5 * 1.2 = 1.8; row 1: 2 * 1.5 = 3 -> capped at 2; row 2: 0.5 * 0.5 = 0.25 (no lower bound);
    # row 3: the masked token (ratio 100) is not part of the product
    w = SequenceTIS().keep(_inp([[1.5, 1.2], [2.0, 1.5], [0.5, 0.5], [1.1, 100.0]],
                                mask=[[1, 1], [1, 1], [1, 1], [1, 0]]))
    assert w[:, 0].tolist() == pytest.approx([1.8, 2.0, 0.25, 1.1], rel=1e-5)
    assert torch.equal(w[:, 0], w[:, 1])  # one weight per completion
    far = _inp([[math.exp(15.0), math.exp(15.0)]])  # sum 30 clamped at 20 before exp, then the cap
    assert SequenceTIS(cap=1e9).keep(far)[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-4)


def test_sequence_masked_is_zeroes_completions_whose_product_leaves_the_band():
    w = SequenceMaskedIS(cap=1.5).keep(_inp([[1.5, 1.2], [2.0, 1.5], [0.5, 0.9], [0.9, 1.0]]))
    # products 1.8 (in band, capped at 1.5), 3.0 (out), 0.45 (out), 0.9 (in)
    assert w[:, 0].tolist() == pytest.approx([1.5, 0.0, 0.0, 0.9], rel=1e-5)


def test_geometric_rejection_keeps_completions_whose_mean_log_ratio_is_near_zero():
    # geometric means: sqrt(1.0005 * 1.0005) = 1.0005 (kept), sqrt(1.01 * 1.0) = 1.005 (dropped),
    # sqrt(1.0 * 0.997) = 0.9985 (dropped); a long completion with one far-off token is diluted by its length
    w = GeometricRejection().keep(_inp([[1.0005, 1.0005], [1.01, 1.0], [1.0, 0.997]]))
    assert w[:, 0].tolist() == [1.0, 0.0, 0.0] and torch.equal(w[:, 0], w[:, 1])
    long = _inp([[1.02] + [1.0] * 29])  # geometric mean 1.02^(1/30) = 1.00066
    assert GeometricRejection().keep(long)[0, 0].item() == 1.0
    assert GeometricRejection().keep(_inp([[1.02] + [1.0] * 9]))[0, 0].item() == 0.0  # 1.02^(1/10) = 1.002


def test_corrections_need_the_engines_logprobs_and_a_valid_band():
    inp = _inp([[1.0]])
    with pytest.raises(ValueError, match="needs the old and the engine's"):
        IcePop().keep(MaskInputs(inp.mask, inp.truncated, None, old_logprobs=inp.old_logprobs))
    with pytest.raises(ValueError, match="icepop: need 0 <= lower <= 1 <= upper"):
        IcePop(lower=2.0, upper=5.0)


def test_corrections_are_configured_as_token_masks_with_their_options_checked():
    cfg = load_config(overrides={"token_masks": [{"name": "icepop", "kwargs": {"upper": 3.0}}, "geo_rs"]})
    stages = Stages.from_config(cfg)
    assert [n for n, _ in stages.forward_masks] == ["icepop", "geo_rs"] and stages.forward_masks[0][1].upper == 3.0
    with pytest.raises(ConfigError, match="token mask 'seq_tis' has no option 'upper'; valid options: cap"):
        load_config(overrides={"token_masks": [{"name": "seq_tis", "kwargs": {"upper": 3.0}}]})
    with pytest.raises(ConfigError, match=r"token_masks\[0\]: mis: need 0 <= lower <= 1 <= upper"):
        build_components(load_config(overrides={"token_masks": [{"name": "mis", "kwargs": {"lower": 1.5}}]}))
    for name in ("icepop", "mis", "seq_tis", "seq_mis", "geo_rs"):
        assert registry.resolve("token_mask", name).caps.kind == "forward"


def test_the_trainer_multiplies_the_corrections_into_the_loss_token_weights():
    """token_weights (the update's per-micro-batch weights): the aggregation weights times each correction, the
    removed weight counted for mask/<name>/masked_frac, the engine's logprobs as pi_behaviour."""
    behaviour = torch.zeros(2, 3)
    old = torch.log(torch.tensor([[1.5, 6.0, 1.0], [0.4, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rows = MicroRows(index=[0, 1], live=True, sharded=False, counted=True, tokens=mask, mask=mask,
                     weights=mask / 5, advantages=torch.zeros(2), token_advantages=None, group_ids=torch.zeros(2), correct=None,
                     old_logprobs=old, ref_logprobs=None, behaviour=behaviour, extra={})
    settings = UpdateSettings(loss=None, algorithm=SimpleNamespace(tis_cap=0.0), batching=None,
                              forward_masks=[("icepop", IcePop())])
    stats = UpdateStats(masked={"icepop": 0.0})
    batch = SimpleNamespace(truncated=torch.zeros(2, dtype=torch.bool))
    w = token_weights(batch, rows, old, torch.zeros(2, 3), settings, stats)
    assert w.flatten().tolist() == pytest.approx([1.5 / 5, 0.0, 1 / 5, 0.0, 1 / 5, 0.0], rel=1e-5)
    # removed: 1 - 1.5 (a weight above 1 adds), 1 - 0, 1 - 1, 1 - 0, 1 - 1 over the 5 real tokens
    assert stats.masked["icepop"] == pytest.approx((1 - 1.5) + 1 + 0 + 1 + 0, rel=1e-5)
