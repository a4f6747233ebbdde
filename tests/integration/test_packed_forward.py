"""Packed rows vs per-sample and padded forwards, on the tiny Qwen2 and on SmolLM2 (fp32)."""

import random

import pytest
import torch

from rlkit.algorithms.losses import ClipOptions, LossInputs, aggregation_weights, ppo_clip_loss
from rlkit.parallel.batch import collate
from rlkit.rollout.base import Sample
from rlkit.trainers.batch import LogprobPolicy


def _samples(vocab: int, completion_lengths, seed=0):
    r = random.Random(seed)
    return [Sample([r.randrange(3, vocab) for _ in range(r.randint(2, 12))],
                   [r.randrange(3, vocab) for _ in range(n)], [], "stop", "", i // 2)
            for i, n in enumerate(completion_lengths)]


def _per_sample_reference(model_dir, samples, temperature):
    """Plain transformers + SDPA, one sample at a time, full logits, log_softmax: the unpacked truth."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    out = []
    with torch.no_grad():
        for s in samples:
            logits = model(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0] / temperature
            logp = torch.log_softmax(logits.float(), -1)[len(s.prompt_ids) - 1:-1]
            out.append(logp.gather(-1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1))
    return out


def _policy(model_dir):
    from rlkit.models import load_policy

    return LogprobPolicy(load_policy(str(model_dir), torch.float32), logprob_chunk=16)


def _check_parity(model_dir, samples, tol):
    ref = _per_sample_reference(model_dir, samples, 0.8)
    policy = _policy(model_dir)
    for packed in (True, False):
        mb = collate(samples, 0, packed=packed)
        assert (mb.input_ids.shape[0] == 1) == packed
        with torch.no_grad():
            lp, _ = policy(mb, temperature=0.8)
        worst = max((lp[i, :len(r)] - r).abs().max().item() for i, r in enumerate(ref))
        assert worst < tol, f"packed={packed}: max |logprob - per-sample| = {worst}"
        assert float(lp[0, len(ref[0]):].abs().sum()) == 0.0  # completion-space padding stays zero


def test_packed_logprobs_equal_per_sample_tiny(tiny_model_dir):
    _check_parity(tiny_model_dir, _samples(500, [1, 3, 200, 17, 64, 2, 120]), tol=1e-5)


def test_packed_logprobs_equal_per_sample_smollm2():
    from rlkit.models import embedded_model_path

    path = embedded_model_path()
    _check_parity(path, _samples(49000, [1, 150, 9, 60], seed=1), tol=1e-4)


def test_grpo_loss_gradients_packed_equal_padded(tiny_model_dir):
    samples = _samples(500, [5, 90, 1, 33, 12, 60])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    grads = {}
    for packed in (True, False):
        policy = _policy(tiny_model_dir)
        mb = collate(samples, 0, packed=packed)
        lp, _ = policy(mb, temperature=1.0)
        mask = mb.completion_mask
        weights = aggregation_weights(mask, "token-mean", float(mask.sum()))
        # old logprobs slightly off the current ones so that the ratio and the clipping are exercised
        old = (lp.detach() + 0.1 * torch.sin(torch.arange(lp.numel()).reshape(lp.shape).float())) * mask
        out = ppo_clip_loss(LossInputs(logprobs=lp, old_logprobs=old, advantages=advantages, mask=mask,
                                       token_weights=weights), ClipOptions(epsilon_low=0.05, epsilon_high=0.05))
        out.loss.backward()
        grads[packed] = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        assert out.stats["clip_frac"] > 0
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 10
    for name, g in grads[True].items():
        assert torch.allclose(g, grads[False][name], atol=1e-6, rtol=1e-4), name
    assert max(g.abs().max().item() for g in grads[True].values()) > 1e-4  # the loss really reaches the weights


@pytest.mark.parametrize("packed", [True, False])
def test_update_policy_packed_and_padded_give_the_same_parameters(tiny_model_dir, packed):
    """The full update path (planning, micro-batches, accumulation) with a tiny token budget."""
    from accelerate import Accelerator

    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.micro import MicroBatching
    from rlkit.records import StepBatch
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    acc = Accelerator(cpu=True)
    samples = _samples(500, [5, 90, 1, 33, 12, 60], seed=3)
    batch = prepare_tokens(StepBatch([], samples, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])))
    results = {}
    for budget in (10_000, 40):  # one micro-batch vs many
        policy = _policy(tiny_model_dir)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        update_policy(
            policy, opt, None, acc, batch,
            UpdateSettings(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(), pad_id=0, temperature=1.0, batching=MicroBatching(packing=packed, micro_batch_tokens=budget, micro_batch_size=2), max_new_tokens=128, max_grad_norm=0.0),
            seed=0)
        results[budget] = dict(policy.named_parameters())
    worst = max((results[10_000][k] - results[40][k]).abs().max().item() for k in results[40])
    assert worst < 1e-6


def test_kl_cov_update_does_not_depend_on_the_micro_batch_split(tiny_model_dir):
    """KL-Cov picks its top-covariance tokens over the whole minibatch before any backward pass, so one
    micro-batch or many give the same update (selecting per micro-batch, as verl does, does not: a long
    response alone in a micro-batch has a constant advantage there and covariance 0)."""
    import functools

    from accelerate import Accelerator

    from rlkit.algorithms.losses import KLCovOptions, kl_cov_loss, kl_cov_select
    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.micro import MicroBatching
    from rlkit.records import StepBatch
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    acc = Accelerator(cpu=True)
    samples = _samples(500, [5, 90, 1, 33, 12, 60], seed=3)
    batch = prepare_tokens(StepBatch([], samples, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])))
    # an old policy away from the current one, so |logp - logp_old| on the chosen tokens has a gradient
    batch.old_logprobs = -3.0 + 0.5 * torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(1))
    options = KLCovOptions(kl_cov_ratio=0.05, ppo_kl_coef=1.0)
    loss = LossSpec(functools.partial(kl_cov_loss, options=options), False,
                    functools.partial(kl_cov_select, options=options))
    results = {}
    for budget in (10_000, 40):  # one micro-batch vs many (the 90-token sample alone in one)
        policy = _policy(tiny_model_dir)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        stats = update_policy(
            policy, opt, None, acc, batch,
            UpdateSettings(loss=loss, algorithm=AlgorithmConfig(mu=2), pad_id=0, temperature=1.0, batching=MicroBatching(micro_batch_tokens=budget), max_new_tokens=128, max_grad_norm=0.0),
            seed=0)
        assert stats.sums["kl_cov_frac"] == 2 * 10  # floor(0.05 x 201 tokens) per pass, 2 passes
        results[budget] = dict(policy.named_parameters())
    worst = max((results[10_000][k] - results[40][k]).abs().max().item() for k in results[40])
    assert worst < 1e-5, worst


def test_one_optimizer_step_per_batch_takes_the_current_policy_as_the_old_one(tiny_model_dir):
    """The loop scores no old logprobs when mu x minibatches = 1 (old_logprobs None): the update then equals one
    given the old logprobs scored explicitly from the same policy, and differs from one given other old logprobs
    (the shortcut is the old policy, not something that happens to give the same numbers)."""
    from accelerate import Accelerator

    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.micro import MicroBatching
    from rlkit.records import StepBatch
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, policy_logprobs, prepare_tokens

    acc = Accelerator(cpu=True)
    samples = _samples(500, [5, 40, 12, 30], seed=5)
    batching = MicroBatching(micro_batch_tokens=10_000)
    settings = UpdateSettings(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(), batching=batching, max_new_tokens=64)
    results = {}
    for old in ("none", "scored", "shifted"):
        policy = _policy(tiny_model_dir)
        batch = prepare_tokens(StepBatch([], samples, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5])))
        if old != "none":
            scored = policy_logprobs(policy, samples, 0, acc, temperature=1.0, batching=batching, width=batch.mask.shape[1])
            batch.old_logprobs = scored if old == "scored" else scored - 0.5 * batch.mask
        update_policy(policy, torch.optim.SGD(policy.parameters(), lr=1.0), None, acc, batch, settings, seed=0)
        results[old] = {k: v.detach().clone() for k, v in policy.named_parameters()}
    for k, v in results["none"].items():
        assert torch.allclose(v, results["scored"][k], atol=1e-6), k
    assert max((results["none"][k] - results["shifted"][k]).abs().max().item() for k in results["none"]) > 1e-5


def test_a_loss_sees_the_entropy_and_the_behaviour_logprobs_the_loop_has(tiny_model_dir):
    from accelerate import Accelerator

    from rlkit.algorithms.losses import LossOutputs
    from rlkit.config import AlgorithmConfig
    from rlkit.parallel.micro import MicroBatching
    from rlkit.records import StepBatch
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import LossSpec, UpdateSettings, prepare_tokens

    seen = []

    def probe(inp):
        seen.append((inp.entropy, inp.behaviour_logprobs, inp.mask))
        return LossOutputs(loss=(inp.logprobs * inp.token_weights).sum(), stats={})

    samples = _samples(500, [6, 9], seed=2)
    batch = prepare_tokens(StepBatch([], samples, advantages=torch.tensor([1.0, -1.0])))
    settings = UpdateSettings(loss=LossSpec(probe), algorithm=AlgorithmConfig(), batching=MicroBatching(), max_new_tokens=16)
    policy = _policy(tiny_model_dir)
    update_policy(policy, torch.optim.SGD(policy.parameters(), lr=0.0), None, Accelerator(cpu=True), batch, settings)
    (entropy, behaviour, mask), = seen
    assert entropy is not None and entropy.shape == mask.shape and bool((entropy[mask > 0] > 0).all())
    assert torch.equal(behaviour, batch.behaviour[:, :mask.shape[1]])
