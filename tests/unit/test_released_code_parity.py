"""rlkit against the authors' released code, hand-computed (issue: "Fidelity"). Each case either follows the
released code or pins the documented difference:

- DOT (U-rara/DOT): PDS factor with the population std; padded groups carry zero loss weight and count in no
  mean (the update equals training on the surviving groups alone); int(margin); no truncation without a correct
  answer.
- Kimi (hkust-nlp/Laser compute_kimi_penalty): no length term for a badly formatted sample (format_term).
- cosine (eddycmu/demystify-long-cot): r_exceed once L + 16 >= T.
- documented, kept: LASER-D's candidate grid when lower < interval; the CAMPO loop ratio.
"""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlkit import registry
from rlkit.algorithms.advantages import batch_norm_advantages, grpo_advantages
from rlkit.algorithms.filters import DynamicSampling, PredictiveOversampling
from rlkit.algorithms.losses import KLCovOptions, kl_cov_loss, kl_cov_select, ppo_clip_loss
from rlkit.records import Prompt, Sample, ShapingBatch, StepBatch
from rlkit.registry import AdvantageCaps
from rlkit.rewards.length import loop_start
from rlkit.rewards.registry import build_reward
from rlkit.shaping.laser import candidates
from rlkit.shaping.transforms import outlier_cuts


def _no_reduce(t, op):  # one process
    return t


# --- DOT: Predictive Dynamic Sampling factor -------------------------------------------------------------------


def test_pds_factor_uses_the_population_std_as_dot():
    """h = [0.2, 0.6]: mean 0.4, np.std 0.2 -> f = (1 / 0.4) * 1.2 = 3.000, int(128 * 3) = 384 prompts.
    The sample std (0.2828) would give 3.207 and 410 prompts."""
    p = PredictiveOversampling(f_max=5.0)
    p.load_state_dict({"history": [0.2, 0.6]})
    assert p.factor() == pytest.approx(3.0, abs=1e-12)
    assert p.prompts_for(128, 128) == 384
    sample_std = (1 / 0.4) * (1 + math.sqrt(0.08))
    assert sample_std == pytest.approx(3.2071, abs=1e-4) and int(128 * sample_std) == 410
    assert p.factor() != pytest.approx(sample_std)
    p.load_state_dict({"history": [0.5]})  # one entry: std 0 -> f = 2
    assert p.factor() == pytest.approx(2.0)


# --- DOT: padded groups carry zero weight ----------------------------------------------------------------------

VOCAB = 12


class _Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(VOCAB, 6, generator=gen) * 0.5)
        self.head = nn.Parameter(torch.randn(6, VOCAB, generator=gen) * 0.5)


class _TinyPolicy(nn.Module):
    """The LogprobPolicy contract on a bigram model: ``forward(micro_batch) -> (logprobs [B, C], entropy)``, each
    scored token predicted from the token before it (any packing gives the same values)."""

    def __init__(self):
        super().__init__()
        self.model = _Bigram()

    def forward(self, batch, temperature=1.0, with_entropy=False):
        prev = batch.input_ids[batch.score_rows, batch.score_pos - 1]
        logp = torch.log_softmax(self.model.emb[prev] @ self.model.head / temperature, -1)
        lp = logp.gather(-1, batch.score_targets[:, None]).squeeze(-1)
        shape, at = batch.completion_mask.shape, (batch.score_sample, batch.score_cols)
        out = lp.new_zeros(shape).index_put(at, lp)
        if not with_entropy:
            return out, None
        ent = -(logp.exp() * logp).sum(-1).detach()
        return out, ent.new_zeros(shape).index_put(at, ent)


def _round(n_prompts: int, round_idx: int) -> StepBatch:
    """n prompts x 2 completions; groups 0-2 have signal (rewards differ), the others not. Lengths differ."""
    prompts, samples, rewards = [], [], []
    gen = torch.Generator().manual_seed(7)
    for g in range(n_prompts):
        prompts.append(Prompt([1, 2 + g], f"q{g}", {"source": f"f:{g}"}))
        for k in range(2):
            n = 2 + (3 * g + 5 * k) % 6
            ids = torch.randint(1, VOCAB, (n,), generator=gen).tolist()
            samples.append(Sample([1, 2 + g], ids, [-1.0] * n, "stop", "", g))
            rewards.append(float(k == 0) + 0.25 * g if g < 3 else 0.5)
    r = torch.tensor(rewards)
    return StepBatch(prompts, samples, rewards=r, terms={"r": r.clone()}, correct=(r >= 1).float())


def _run(estimator):
    from accelerate import Accelerator

    stages = SimpleNamespace(advantage=estimator, advantage_caps=AdvantageCaps(), shapers=[], needs_looping=False)
    return SimpleNamespace(acc=Accelerator(cpu=True), stages=stages)


def _update(batch: StepBatch, run, *, aggregation: str, minibatches: int, loss: str) -> dict:
    """Shaping, advantages and one update_policy call (SGD, lr 1): the parameters after it."""
    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.micro import MicroBatching
    from rlkit.trainers.collect import advantages, shape
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    shape(run, batch, 0)
    batch.advantages = advantages(run, batch)
    prepare_tokens(batch)
    # a fixed old policy per sample (copies share their source's), so kl_cov's |logp - logp_old| has a gradient
    batch.old_logprobs = torch.stack([-1.5 - 0.1 * torch.arange(batch.mask.shape[1], dtype=torch.float32)
                                      * (1 + (s.completion_ids[0] % 3)) for s in batch.samples])
    spec = LossSpec(ppo_clip_loss) if loss == "ppo_clip" else LossSpec(
        functools.partial(kl_cov_loss, options=KLCovOptions(kl_cov_ratio=0.2, ppo_kl_coef=1.0)), False,
        functools.partial(kl_cov_select, options=KLCovOptions(kl_cov_ratio=0.2)))
    policy = _TinyPolicy()
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    update_policy(
        policy, opt, None, run.acc, batch,
        UpdateSettings(loss=spec, algorithm=AlgorithmConfig(aggregation=aggregation, minibatches=minibatches), pad_id=0, temperature=1.0, batching=MicroBatching(micro_batch_tokens=20), max_new_tokens=8, max_grad_norm=0.0),
        seed=3)
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


def _close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


@pytest.mark.parametrize("aggregation,minibatches,loss", [
    ("seq-mean-token-mean", 1, "kl_cov"),  # DOT's recipe
    ("seq-mean-token-mean", 2, "ppo_clip"),
    ("token-mean", 1, "ppo_clip"),
    ("seq-mean-token-sum-norm", 2, "ppo_clip"),
])
def test_quota_4_with_3_survivors_updates_exactly_as_training_on_the_3(aggregation, minibatches, loss):
    """PDS generates 6 prompts, 3 have signal; quota 4 -> the batch is g0, g1, g2 + a padded copy of g0. The update
    (loss, gradient, parameters) equals the update on g0-g2 alone; the old repeat (the copy trained as an
    ordinary group: g0 twice, 2/4 of the weight) gives another one."""
    run = _run(grpo_advantages)
    padded = PredictiveOversampling(metric="reward").collect(4, _round, _no_reduce)
    assert len(padded.prompts) == 4 and padded.metrics["sampling/padded_groups"] == 1
    assert padded.padding.tolist() == [False] * 6 + [True] * 2
    assert [p.text for p in padded.prompts] == ["q0", "q1", "q2", "q0"]
    alone = _round(6, 0).select_groups([0, 1, 2])
    assert alone.padding is None
    kw = dict(aggregation=aggregation, minibatches=minibatches, loss=loss)
    after_padded = _update(padded, run, **kw)
    after_alone = _update(alone, run, **kw)
    assert _close(after_padded, after_alone)
    assert float(padded.mask[6:].sum()) == 0.0 and padded.advantages[6:].tolist() == [0.0, 0.0]
    # the old behaviour: the same batch with the copy as an ordinary row
    repeat = PredictiveOversampling(metric="reward").collect(4, _round, _no_reduce)
    repeat.padding = None
    after_repeat = _update(repeat, run, **kw)
    assert not _close(after_repeat, after_alone)
    start = {k: v.detach().clone() for k, v in _TinyPolicy().named_parameters()}
    assert not _close(after_alone, start)  # the update moved the parameters


def test_padded_copies_are_left_out_of_the_advantage_statistics_and_the_shapers():
    """Batch-normalised advantages (DLER) whiten over the whole step: a copy of g0 would shift the batch mean and
    variance. A batch-level shaper (PALU's per-question budget) would compress g0's budget twice."""
    from rlkit.trainers.collect import advantages, shape

    padded = DynamicSampling(metric="reward", max_rounds=1).collect(4, _round, _no_reduce)
    alone = _round(4, 0).select_groups([0, 1, 2])
    for b in (padded, alone):
        b.shaped = b.rewards.clone()
    run = _run(batch_norm_advantages)
    adv_padded, adv_alone = advantages(run, padded), advantages(run, alone)
    assert torch.allclose(adv_padded[:6], adv_alone) and adv_padded[6:].tolist() == [0.0, 0.0]
    repeat = DynamicSampling(metric="reward", max_rounds=1).collect(4, _round, _no_reduce)
    repeat.shaped, repeat.padding = repeat.rewards.clone(), None
    assert not torch.allclose(advantages(run, repeat)[:6], adv_alone)

    def palu_run():
        palu = registry.build(registry.resolve("shaper", "palu"), {"max_tokens": 100, "C": 0.5, "tau": 0.5})
        stages = SimpleNamespace(advantage=grpo_advantages, advantage_caps=AdvantageCaps(), shapers=[("palu", palu)],
                                 needs_looping=False)
        return SimpleNamespace(acc=_run(grpo_advantages).acc, stages=stages), palu

    for b in (padded, alone):
        b.shaped = None
    (run_p, palu_p), (run_a, palu_a) = palu_run(), palu_run()
    shape(run_p, padded, 0)
    shape(run_a, alone, 0)
    assert palu_p.budgets == palu_a.budgets and torch.allclose(padded.shaped[:6], alone.shaped)


def test_step_metrics_leave_padded_copies_out():
    from rlkit.records import UpdateStats
    from rlkit.trainers.metrics import step_metrics

    padded = DynamicSampling(metric="reward", max_rounds=1).collect(4, _round, _no_reduce)
    alone = _round(4, 0).select_groups([0, 1, 2])
    acc = _run(grpo_advantages).acc
    got = [step_metrics(b, UpdateStats(), trained_mask=torch.ones(1, 1), mu=1, lr=1.0, timers={}, version=0, acc=acc)
           for b in (padded, alone)]
    for key in ("reward/mean", "reward/std", "reward/r", "accuracy", "completion/mean_tokens", "completion/samples",
                "completion/total_tokens"):
        assert got[0][key] == pytest.approx(got[1][key]), key
    assert got[0]["completion/samples"] == 6.0


# --- DOT: truncation edge rules --------------------------------------------------------------------------------


def test_dot_margin_is_truncated_to_an_int_and_groups_without_a_correct_answer_are_skipped():
    # mean 28, sample std sqrt(1620) = 40.25; alpha 1 -> T = floor(68.25) = 68; the outlier is 100 - 68 = 32 over
    lengths = [10, 10, 10, 10, 100]
    assert outlier_cuts(lengths, [1] * 5, [0] * 5, alpha=1.0, margin=32.9) == {4: 68}  # DOT: int(32.9) = 32 <= 32
    assert outlier_cuts(lengths, [1] * 5, [0] * 5, alpha=1.0, margin=33) == {}
    # success_threshold 0: every group qualifies by rate, but DOT skips one with no correct response
    assert outlier_cuts(lengths, [0] * 5, [0] * 5, alpha=1.0, margin=32, success_threshold=0.0) == {}
    assert outlier_cuts(lengths, [0, 0, 0, 0, 1], [0] * 5, alpha=1.0, margin=32, success_threshold=0.0) == {4: 68}
    assert outlier_cuts(lengths, [None] * 5, [0] * 5, alpha=1.0, margin=32, success_threshold=0.0) == {}


# --- Kimi: LASER's compute_kimi_penalty ------------------------------------------------------------------------


def _shaping_batch(rewards, correct, lengths, fmt):
    c = torch.tensor(correct, dtype=torch.float32)
    return ShapingBatch(rewards=torch.tensor(rewards), correct=c, lengths=torch.tensor(lengths, dtype=torch.float32),
                        truncated=torch.zeros(len(c), dtype=torch.bool), group_ids=torch.zeros(len(c), dtype=torch.long),
                        step=0, terms={"boxed_format": torch.tensor(fmt, dtype=torch.float32)})


def test_kimi_adds_nothing_to_a_badly_formatted_sample_as_laser():
    """LASER scores +1 / -0.5 / -1; [correct short (L 10), badly formatted long (L 30)]: lambda = 0.5, -0.5;
    LASER adds 0.4 * 0.5 to the first and nothing to the -1 sample: [1.2, -1.0] (without format_term: -1.2)."""
    b = _shaping_batch([1.0, -1.0], [1, 0], [10, 30], [1, 0])
    laser = registry.build(registry.resolve("shaper", "kimi"), {"coef": 0.4, "format_term": "boxed_format"})
    assert laser(b).rewards.tolist() == pytest.approx([1.2, -1.0])
    plain = registry.build(registry.resolve("shaper", "kimi"), {"coef": 0.4})
    assert plain(b).rewards.tolist() == pytest.approx([1.2, -1.2])
    # a wrong, well-formatted long answer (-0.5) still gets min(0, lambda): -0.5 - 0.2
    wrong = _shaping_batch([1.0, -0.5, -1.0], [1, 0, 0], [10, 30, 20], [1, 1, 0])
    assert laser(wrong).rewards.tolist() == pytest.approx([1.2, -0.7, -1.0])
    with pytest.raises(ValueError, match="format_term 'fmt' is not a reward term"):
        registry.build(registry.resolve("shaper", "kimi"), {"format_term": "fmt"})(b)


def test_kimi_recipe_follows_laser():
    from rlkit.config import load_config

    cfg = load_config(recipes=["kimi"])
    assert [(t.name, t.weight) for t in cfg.rewards] == [("math_correct", 1.5), ("boxed_format", 0.5)]
    assert cfg.shaping[0].kwargs["format_term"] == "boxed_format"


# --- cosine: the released 16-token margin ----------------------------------------------------------------------


def test_cosine_gives_r_exceed_once_L_plus_16_reaches_T():
    def cos(kw, L, c):
        return build_reward("cosine", kw)(["p"], ["x"], [[1] * L], num_tokens=[L], finish_reason=["stop"],
                                          correct=[c])[0]

    kw = {"max_tokens": 100}
    assert cos(kw, 84, 1) == -10.0 and cos(kw, 84, 0) == -10.0  # 84 + 16 >= 100
    assert cos(kw, 83, 1) == pytest.approx(1 + 0.5 * (1 + math.cos(0.83 * math.pi)))  # 1.0216
    assert cos({**kw, "margin": 0}, 84, 1) == pytest.approx(1 + 0.5 * (1 + math.cos(0.84 * math.pi)))
    assert cos({**kw, "margin": 0}, 100, 1) == -10.0
    with pytest.raises(ValueError, match="0 <= margin < max_tokens"):
        build_reward("cosine", {"max_tokens": 10})


# --- documented differences (kept) -----------------------------------------------------------------------------


def test_laser_candidates_equal_the_released_grid_at_interval_1024_and_stay_a_grid_otherwise():
    # released get_length_threshold(lower, upper, 1024): lower < 1024 -> [lower] + range(1024, upper + 1024, 1024)
    assert candidates(512, 4096, 1024) == [512, 1024, 2048, 3072, 4096]
    assert candidates(1024, 4096, 1024) == [1024, 2048, 3072, 4096]
    assert candidates(4096, 16384, 1024)[:3] == [4096, 5120, 6144] and candidates(4096, 16384, 1024)[-1] == 16384
    # another interval: rlkit [100, 200, 300, 400]; the released rule would give [100] (range(1024, 500) is empty)
    assert candidates(100, 400, 100) == [100, 200, 300, 400]
    assert candidates(300, 2048, 512) == [300, 512, 1024, 1536, 2048]  # released: [300, 1024, 1536, 2048]


def _campo_has_loop(tokens, min_repeats=2):
    """CAMPO's existence test (find_infinite_loop_start > 0), restated: some period p whose last `min_repeats`
    blocks of p tokens are equal."""
    n = len(tokens)
    return any(all(tokens[n - (k + 1) * p:n - k * p] == tokens[n - p:] for k in range(1, min_repeats))
               for p in range(1, n // min_repeats + 1))


def test_loop_ratio_differs_from_campo_but_the_released_penalty_is_reproduced():
    tokens = [7, 8, 9] + [3] * 7
    # rlkit: the loop of 3s starts at 3 -> 7/10; CAMPO keeps the largest period with 2 equal blocks (p = 3,
    # blocks [4:7] and [7:10]) -> start 4, 6/10
    assert loop_start(tokens) == 3
    scaled = build_reward("repetition_penalty", {"kappa": 0.1})
    fixed = build_reward("repetition_penalty", {"kappa": 0.1, "scaled": False})

    def pen(fn, ids):
        return fn(["p"], ["x"], [ids], num_tokens=[len(ids)], finish_reason=["length"])[0]

    assert pen(scaled, tokens) == pytest.approx(-0.07)
    assert pen(fixed, tokens) == pytest.approx(-0.1)  # the released code: -0.1 whenever the ratio is > 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # the existence test is the same, so the unscaled penalty is the released one
        n = int(torch.randint(1, 14, (1,), generator=gen))
        ids = torch.randint(0, 3, (n,), generator=gen).tolist()
        assert (loop_start(ids) < n) == _campo_has_loop(ids), ids
        assert (pen(fixed, ids) != 0.0) == _campo_has_loop(ids), ids


def test_a_step_without_any_informative_group_makes_no_update():
    """No group has signal: the filter pads the whole quota from the zero-variance groups, every entry is padding,
    and the parameters do not move (before, the zero-advantage groups still trained the KL-Cov term)."""
    def flat(n, round_idx):
        b = _round(n, round_idx)
        b.rewards[:] = 0.5
        b.terms["r"][:] = 0.5
        return b

    batch = DynamicSampling(metric="reward", max_rounds=1).collect(4, flat, _no_reduce)
    assert bool(batch.padding.all()) and batch.metrics["sampling/padded_groups"] == 4
    # the statistics still describe what was generated (the fallback groups are those samples, not copies)
    from rlkit.records import UpdateStats
    from rlkit.trainers.metrics import step_metrics

    m = step_metrics(batch, UpdateStats(), trained_mask=torch.ones(1, 1), mu=1, lr=1.0, timers={}, version=0,
                     acc=_run(grpo_advantages).acc)
    assert m["reward/mean"] == pytest.approx(0.5) and m["completion/samples"] == float(len(batch.samples))
    after = _update(batch, _run(grpo_advantages), aggregation="seq-mean-token-mean", minibatches=2, loss="kl_cov")
    start = {k: v.detach().clone() for k, v in _TinyPolicy().named_parameters()}
    assert _close(after, start)
    batch.padding = None  # the old behaviour: the zero-advantage groups trained KL-Cov's |logp - logp_old| term
    assert not _close(_update(batch, _run(grpo_advantages), aggregation="seq-mean-token-mean", minibatches=2,
                              loss="kl_cov"), start)
