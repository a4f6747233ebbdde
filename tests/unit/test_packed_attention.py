"""The packed-attention backend choice and the adapter to torch's varlen_attn, on CPU.

The real kernel needs CUDA (tests/gpu/test_varlen_attention.py); here a stand-in with varlen_attn's semantics
(per-sequence SDPA on [T, H, D] rows) takes its place, in the two signatures torch releases have had, so that
the argument mapping (causal window, GQA, scale, int32 boundaries) and the fallback decision are checked."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from rlkit.kernels import attention


def _fake_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """varlen_attn's contract (2.13's signature) computed by SDPA per sequence."""
    assert cu_seq_q.dtype == torch.int32 and cu_seq_q.device == query.device
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError("GQA shapes without enable_gqa")
    bounds = cu_seq_q.tolist()
    outs = [F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (query, key, value)),
                                           is_causal=window_size == (-1, 0), scale=scale,
                                           enable_gqa=enable_gqa).transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs)


def _fake_varlen_old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """A release with ``is_causal`` and neither ``scale`` nor ``enable_gqa``."""
    if query.shape[1] != key.shape[1]:
        raise ValueError("this release has no GQA")
    return _fake_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                        window_size=(-1, 0) if is_causal else (-1, -1))


@pytest.mark.parametrize("fake", [_fake_varlen, _fake_varlen_old])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_torch_varlen_adapter_equals_the_sequence_loop(monkeypatch, fake, scaling):
    monkeypatch.setattr(attention, "_torch_varlen", lambda: (fake, frozenset(inspect.signature(fake).parameters)))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 16, generator=gen, requires_grad=True) for h in (8, 2, 2))
    cu = torch.tensor([0, 7, 30, 31, 40], dtype=torch.int32)
    out = {}
    for backend in ("torch_varlen", "sdpa_loop"):
        o = attention.packed_attention(q, k, v, cu, 23, scaling, backend=backend)
        out[backend] = (o, *torch.autograd.grad(o.square().sum(), (q, k, v)))
    for a, b in zip(out["torch_varlen"], out["sdpa_loop"]):
        assert torch.allclose(a, b, atol=1e-5)


def test_probe_accepts_a_working_kernel_and_reports_a_failing_one(monkeypatch):
    monkeypatch.setattr(attention, "_torch_varlen",
                        lambda: (_fake_varlen, frozenset(inspect.signature(_fake_varlen).parameters)))
    cpu = torch.device("cpu")
    with torch.inference_mode():  # the probe runs from inside no-grad scoring too
        assert attention._probe_torch_varlen(cpu, torch.bfloat16, 8, 2, 64) is None

    def unsupported(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    monkeypatch.setattr(attention, "_torch_varlen", lambda: (unsupported, frozenset({"window_size"})))
    assert "Ampere" in attention._probe_torch_varlen(cpu, torch.bfloat16, 8, 2, 64)

    def acausal(*args, window_size=(-1, -1), **kwargs):  # a kernel that ignores the causal window
        return _fake_varlen(*args, **kwargs)

    monkeypatch.setattr(attention, "_torch_varlen", lambda: (acausal, frozenset({"window_size", "enable_gqa"})))
    assert "differs" in attention._probe_torch_varlen(cpu, torch.bfloat16, 8, 2, 64)


def test_cpu_and_fp32_take_the_loop_and_calls_are_counted():
    assert attention.packed_backend("cpu", torch.bfloat16, 8, 2, 64) == "sdpa_loop"
    assert attention.packed_backend("cuda", torch.float32, 8, 2, 64) == "sdpa_loop"
    before = attention.calls["sdpa_loop"]
    q, k, v = (torch.randn(1, 4, 10, 8) for _ in range(3))
    attention.packed_attention(q, k, v, torch.tensor([0, 4, 10], dtype=torch.int32), 6)
    assert attention.calls["sdpa_loop"] == before + 1
    with pytest.raises(ValueError, match="valid: flash_attn, torch_varlen, sdpa_loop"):
        with attention.use_backend("triton"):
            pass
