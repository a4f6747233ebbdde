"""Chunked LM-head logprobs/entropy (custom backward) against the plain-torch reference."""

import math

import pytest
import torch

from rlkit.kernels.logprobs import chunked_logprobs, logprobs_from_logits, reference_logprobs


def _inputs(k=23, h=16, v=97, bias=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(k, h, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    targets = torch.randint(0, v, (k,), generator=g)
    return hidden, weight, b, targets


def test_reference_matches_log_softmax_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    lp, ent = logprobs_from_logits(logits, torch.tensor([2, 0]), temperature=0.5)
    z = logits[0] / 0.5
    expect0 = z[2] - torch.log(torch.exp(z).sum())
    assert lp[0].item() == pytest.approx(expect0.item(), abs=1e-12)
    assert lp[1].item() == pytest.approx(-math.log(3.0), abs=1e-12)
    assert ent[1].item() == pytest.approx(math.log(3.0), abs=1e-12)  # uniform


@pytest.mark.parametrize("chunk", [1, 5, 23, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_values_and_grads_equal_reference(chunk, bias):
    hidden, weight, b, targets = _inputs(bias=bias)
    params = [hidden, weight] + ([b] if bias else [])
    g = torch.Generator().manual_seed(1)
    w_lp, w_ent = torch.randn(len(targets), generator=g, dtype=hidden.dtype), torch.randn(len(targets), generator=g,
                                                                                          dtype=hidden.dtype)
    outs = {}
    for name, fn in (("ref", reference_logprobs), ("chunked", lambda *a: chunked_logprobs(*a, chunk=chunk))):
        lp, ent = fn(hidden, weight, b, targets, 0.7)
        grads = torch.autograd.grad((lp * w_lp).sum() + (ent * w_ent).sum(), params)
        outs[name] = (lp.detach(), ent.detach(), grads)
    ref, got = outs["ref"], outs["chunked"]
    assert torch.allclose(got[0], ref[0], atol=1e-10)
    assert torch.allclose(got[1], ref[1], atol=1e-10)
    for g_ref, g_got in zip(ref[2], got[2]):
        assert torch.allclose(g_got, g_ref, atol=1e-9), (g_got - g_ref).abs().max()


def test_chunked_passes_gradcheck_and_handles_one_output_unused():
    hidden, weight, b, targets = _inputs(k=6, h=4, v=11)
    assert torch.autograd.gradcheck(lambda h, w, bb: chunked_logprobs(h, w, bb, targets, 1.3, chunk=4),
                                    (hidden, weight, b))
    lp, _ = chunked_logprobs(hidden, weight, b, targets, chunk=4)  # entropy unused: its gradient is None inside
    g_h, = torch.autograd.grad(lp.sum(), hidden)
    lp_ref, _ = reference_logprobs(hidden, weight, b, targets)
    g_ref, = torch.autograd.grad(lp_ref.sum(), hidden)
    assert torch.allclose(g_h, g_ref, atol=1e-10)


def test_chunked_fp32_against_fp64_reference_and_empty_input():
    hidden, weight, b, targets = _inputs(k=40, h=32, v=300, dtype=torch.float32)
    lp, ent = chunked_logprobs(hidden, weight, b, targets, chunk=7)
    assert lp.dtype == torch.float32
    lp64, ent64 = reference_logprobs(hidden.double(), weight.double(), b.double(), targets)
    assert (lp.double() - lp64).abs().max() < 1e-5 and (ent.double() - ent64).abs().max() < 1e-5
    empty_lp, empty_ent = chunked_logprobs(hidden[:0], weight, b, targets[:0])
    assert empty_lp.shape == (0,) and empty_ent.shape == (0,)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_logprobs(hidden, weight, b, targets, chunk=0)
