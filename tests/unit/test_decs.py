"""DECS (issue 34 item 7) against its released code: the released core functions are ported below (formulas only,
in the test's own words; each names the source file of github.com/pixas/DECS at 0d12e53 it follows) and compared with
rlkit's chunking, verdict parsing, redundant span and per-column advantages on random batches, degenerate groups
included."""

import random
from itertools import chain

import pytest
import torch

from rlkit.algorithms.advantages import decs_advantages
from rlkit.records import Sample, StepBatch
from rlkit.rewards.combine import RewardContext, RewardSet, Term
from rlkit.rewards.decs import DECSRedundancy, chunk_ends, chunk_types, redundant_span

SPLIT, NEWLINE, THINK_END = {5, 6}, {7, 8}, 9


# ---- ports of the released functions --------------------------------------------------------------------------

def released_split(ids, split_ids, newline_ids, think_end_id):
    """src_valid/reward_manager.py split_based_on_tokens + ChunkAwareGRPO.split_into_chunks: chunk end offsets."""
    segs = []
    if ids:
        cuts = [i for i, t in enumerate(ids) if t in split_ids]
        if not cuts:
            segs = [ids[:ids.index(think_end_id)] if think_end_id in ids else ids]
        else:
            last = 0
            for c in cuts:
                if c > last:
                    segs.append(ids[last:c])
                last = c
            if last < len(ids):
                segs.append(ids[last:])
            if think_end_id in segs[-1]:
                segs[-1] = segs[-1][:segs[-1].index(think_end_id)]

    def multiline(seg):
        nz = [k for k, t in enumerate(seg) if t not in newline_ids]
        nl = [k for k, t in enumerate(seg) if t in newline_ids]
        return bool(nz) and any(k > nz[0] for k in nl) and any(k < nz[-1] for k in nl)

    out, cache = [], []
    for j, seg in enumerate(segs):
        if not multiline(seg) and j < len(segs) - 1:
            cache.append(seg)
        else:
            out.append(list(chain(*cache)) + seg)
            cache = []
    ends, acc = [], 0
    for seg in out:
        acc += len(seg)
        ends.append(acc)
    return ends


def released_types(verdicts):
    """src_valid/reward_manager.py batch_compute_chunk_adv: the chunk labels from the detector's verdicts."""
    first, types = None, []
    for j, v in enumerate(verdicts):
        if "yes" in v and first is None:
            first = j
        if "yes" in v and first == j:
            types.append("a")
        elif "no" in v and first is None:
            types.append("b")
        elif "no" in v:
            types.append("c")
        elif "yes" in v and j > first:
            types.append("d")
        else:
            types.append("b")
    return types


def released_span(ends, types, correct):
    """src_valid/reward_manager.py get_delta + the sign test of valid_ray_trainer.py L311-390: [p, q) or None."""
    if not ends or not correct:
        return None
    a = next((j for j, t in enumerate(types) if t == "a"), -1)
    if a == -1:
        return None
    starts = [0] + ends[:-1]
    neg = [j for j, t in enumerate(types) if t in ("c", "d") and ends[j] > starts[j]]
    return (starts[neg[0]], ends[neg[-1]]) if neg else None


def released_advantages(scores, lengths, spans, group_ids, T, beta=0.1, eps=1e-6):
    """src_valid/valid_ray_trainer.py compute_grpo_proc_length_advantage_return (float32, padded to T)."""
    B = len(scores)
    s = torch.tensor(scores, dtype=torch.float32)
    L = torch.tensor(lengths, dtype=torch.int64)
    mask = (torch.arange(T)[None, :] < L[:, None]).to(torch.int64)
    r = s.unsqueeze(-1).repeat(1, T).clone() * (1 + beta)
    for i in range(B):
        if s[i] > 0 and spans[i] is not None and spans[i][1] > spans[i][0]:
            lr = torch.zeros(T)
            lr[:L[i]] = (1 - L[i] / T) * beta
            p, q = spans[i]
            r[i, p:q] = s[i] + lr[p:q]
    rows = {}
    for i in range(B):
        rows.setdefault(group_ids[i], []).append(i)
    adv = torch.zeros_like(r)
    for idx in rows.values():
        if len(idx) == 1:
            mu, sd = torch.tensor(0.0), torch.tensor(1.0)
        else:
            st = torch.stack([r[i] for i in idx], 0)
            mu, sd = st.mean(dim=0), st.std(dim=0)
        for i in idx:
            adv[i] = (r[i] - mu) / (sd + eps)
    return adv * mask, r


# ---- the comparisons -------------------------------------------------------------------------------------------

def _random_ids(rng, n):
    return [rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9] if rng.random() < 0.3 else [1, 2, 3, 7]) for _ in range(n)]


def test_chunking_verdicts_and_span_match_the_released_code():
    rng = random.Random(0)
    for _ in range(3000):
        ids = _random_ids(rng, rng.randrange(0, 40))
        ends = chunk_ends(ids, SPLIT, NEWLINE, THINK_END)
        assert ends == released_split(ids, SPLIT, NEWLINE, THINK_END), ids
        verdicts = [rng.choice(["yes", "no", "\\boxed{yes}", "maybe", "", "I know", "yesno"]) for _ in ends]
        types = chunk_types(verdicts)
        assert types == released_types(verdicts), verdicts
        assert redundant_span(ends, types) == released_span(ends, types, True)


def _case(rng, cap):
    groups = rng.randrange(1, 5)
    scores, lengths, spans, gids = [], [], [], []
    for g in range(groups):
        size = rng.choice([1, 2, 4, 8])
        kind = rng.choice(["mixed", "all", "none"])
        for _ in range(size):
            s = {"all": 1.0, "none": 0.0}.get(kind, float(rng.random() < 0.5))
            n = rng.randrange(1, cap + 1)
            span = None
            if s and rng.random() < 0.7:
                p = rng.randrange(0, n)
                span = (p, rng.randrange(p + 1, n + 1))
            scores.append(s), lengths.append(n), spans.append(span), gids.append(g)
    return scores, lengths, spans, gids


@pytest.mark.parametrize("seed", range(4))
def test_per_column_advantages_match_the_released_code_on_random_batches(seed):
    """The reward (chunk (p, q, -beta L / T) + the 1.1-weighted verifier) and the decs estimator give the released
    advantages on every token, except the float32 artefact of the released code: in a column whose rewards are all
    equal its mean can be one ulp off with std 0, rlkit gives 0 there (documented deviation)."""
    rng = random.Random(seed)
    cap, beta = 48, 0.1
    for _ in range(60):
        scores, lengths, spans, gids = _case(rng, cap)
        want, _ = released_advantages(scores, lengths, spans, gids, cap, beta)
        tokens = []
        for s, n, span in zip(scores, lengths, spans):
            row = torch.zeros(n)
            if s and span is not None:
                row[span[0]:span[1]] = -beta * n / cap
            tokens.append(row)
        got = decs_advantages(torch.tensor(scores) * (1 + beta), torch.tensor(gids), token_rewards=tokens)
        for i, n in enumerate(lengths):
            assert got[i].shape == (n,)
            members = [j for j, g in enumerate(gids) if g == gids[i]]
            for t in range(n):
                column = {float(scores[j] * (1 + beta) + (tokens[j][t] if t < lengths[j] else 0.0)) for j in members}
                if len(column) == 1 and len(members) > 1:  # all equal: exactly 0 here, the released value is noise
                    assert got[i][t] == 0.0 and abs(float(want[i, t])) < 0.2
                else:
                    assert float(got[i][t]) == pytest.approx(float(want[i, t]), rel=1e-4, abs=1e-4)


def test_degenerate_groups_hand_computed():
    # a group of one: R / (1 + eps), as released; an all-wrong group: 0; one redundant token among equals
    one = decs_advantages(torch.tensor([1.1]), torch.tensor([0]), token_rewards=[torch.tensor([0.0, -0.05])])
    assert one[0].tolist() == pytest.approx([1.1 / (1 + 1e-6), 1.05 / (1 + 1e-6)])
    wrong = decs_advantages(torch.zeros(3), torch.tensor([0, 0, 0]), token_rewards=[torch.zeros(2)] * 3)
    assert all(w.abs().sum() == 0 for w in wrong)
    pair = decs_advantages(torch.tensor([1.1, 1.1]), torch.tensor([0, 0]),
                           token_rewards=[torch.tensor([0.0, -0.1]), torch.zeros(2)])
    # column 1: (1.0, 1.1): mean 1.05, unbiased std 0.0707: -+0.707
    assert pair[0].tolist() == pytest.approx([0.0, -0.7071], abs=1e-3)
    assert pair[1].tolist() == pytest.approx([0.0, 0.7071], abs=1e-3)


class FakeDetector:
    """Says yes to a segment holding the answer (a deterministic stand-in for unit tests; the integration test
    serves a real model)."""

    def __init__(self):
        self.prompts = []

    def complete(self, prompts, *, max_new_tokens, temperature=0.0):
        self.prompts += prompts
        return ["\\boxed{yes}" if "42" in p.split("**Reasoning segment**:")[1].split("**Ground Truth**")[0]
                else "\\boxed{no}" for p in prompts]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from rlkit.models import embedded_model_path, load_tokenizer

    return load_tokenizer(str(embedded_model_path()))


def test_the_reward_spans_the_chunks_after_the_answer_and_only_for_correct_samples(smol_tokenizer):
    tok = smol_tokenizer
    reward = DECSRedundancy(engine="det")
    detector = FakeDetector()
    reward.setup(RewardContext(device="cpu", tokenizer=tok, max_new_tokens=200, engines={"det": detector}))
    text = "First I add.\nSo it is 42.\nWait, check again.\nYes 42.\nBut also\nmaybe 40.\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    got = reward(["q", "q"], [text, text], [ids, ids], correct=[1.0, 0.0], answer=["42", "42"], question=["6*7?"] * 2)
    out = got.values
    ends = reward.last["chunks"][0]
    assert len(ends) >= 2 and 1 not in reward.last["chunks"]  # the wrong sample is never sent to the detector
    types = chunk_types(["yes" if "42" in tok.decode(ids[a:b]) else "no" for a, b in zip([0] + ends[:-1], ends)])
    span = redundant_span(ends, types)
    assert span is not None and out[0] == [(span[0], span[1], pytest.approx(-0.1 * len(ids) / 200))]
    assert out[1] == [] and len(detector.prompts) == len(ends)
    assert "**Problem**: 6*7?" in detector.prompts[0] and "**Ground Truth**: 42" in detector.prompts[0]
    # the necessary prefix's share of the chunks (released first_correct_chunk_ratio); none for the wrong sample
    assert types.count("a") == 1 and got.reports == {"nrp_ratio": [(types.index("a") + 1) / len(ends), None]}
    # through the reward set: the chunk lands on its tokens, the term's value is its sum, the ratio a column
    rs = RewardSet([Term("decs", 1.0, reward, shape="chunks", reports=("nrp_ratio",))])
    v = rs(["q"], [text], [ids], {"answer": ["42"]}, correct=[1.0], step=0)
    assert list(v.terms) == ["decs", "decs/nrp_ratio"] and v.terms["decs/nrp_ratio"].tolist() == pytest.approx(
        [(types.index("a") + 1) / len(ends)])
    assert float(v.total[0]) == 0.0  # a report never adds to the reward
    assert v.tokens[0][span[0]:span[1]].tolist() == pytest.approx([-0.1 * len(ids) / 200] * (span[1] - span[0]))
    assert float(v.tokens[0][:span[0]].abs().sum()) == 0.0


def test_a_missing_engine_is_named_in_setup():
    with pytest.raises(KeyError, match=r"no reward engine 'detector' is configured \(reward_engines: none\)"):
        DECSRedundancy().setup(RewardContext(device="cpu", tokenizer=None, max_new_tokens=10))


def test_token_rewards_reach_the_estimator_through_the_step_batch():
    """StepBatch carries the token rewards a filter's selection keeps (checked in test_token_rewards) and the
    decs estimator's output has one value per completion token."""
    samples = [Sample([1], [2] * n, [0.0] * n, "stop", "", 0) for n in (3, 5)]
    batch = StepBatch([], samples, rewards=torch.tensor([1.1, 1.1]),
                      token_rewards=[torch.zeros(3), torch.tensor([0.0, 0.0, -0.1, -0.1, 0.0])])
    adv = decs_advantages(batch.rewards, batch.group_ids, batch.num_tokens, token_rewards=batch.token_rewards)
    assert [a.numel() for a in adv] == [3, 5] and adv[1][2] < 0 < adv[0][2]


@pytest.mark.parametrize("spec, message", [
    ({"engine": "vllm", "model": "m"}, r"'reward_engines.judge'.engine is 'vllm'; valid: hf"),
    ({"engine": "vllm_server", "model": "m"}, r"server_urls must list the http\(s\) URLs"),
    ({"engine": "vllm_server", "server_urls": ["http://h:1"]}, r"'reward_engines.judge'.model must name the model"),
    ({"engine": "hf", "modle": "m"}, r"unknown keys \['modle'\]"),
])
def test_reward_engines_are_checked_when_the_config_is_parsed(spec, message):
    from rlkit.config import ConfigError, load_config
    from rlkit.config.check import validate

    with pytest.raises(ConfigError, match=message):
        validate(load_config(overrides={"reward_engines": {"judge": spec}}))
