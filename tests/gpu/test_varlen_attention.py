"""torch's varlen_attn (FlashAttention varlen) against the per-sequence SDPA loop on CUDA in bf16, forward and
backward, and which backend packed bf16 rows actually take (rlkit.kernels.attention).

bf16 tolerance: both bf16 results are compared with the loop run in fp32 on the same (bf16-rounded) inputs;
the fused kernel's error must stay within a small multiple of the bf16 loop's own error, plus an absolute
bound. A wrong mask, scale or head mapping is off by O(1), far outside either."""

import importlib.util

import pytest
import torch

from rlkit.kernels import attention

pytestmark = pytest.mark.gpu

LENGTHS = [1, 7, 128, 333, 1024, 2049]


@pytest.fixture(autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need CUDA (run them with `make test-gpu` on a GPU machine)")
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")


def _row(heads, kv_heads, head_dim, lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, h, total, head_dim, generator=gen).to("cuda", torch.bfloat16)
               for h in (heads, kv_heads, kv_heads))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return q, k, v, cu.cuda()


def _run(backend, q, k, v, cu, max_len, scale, grad_out, dtype):
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    out = attention.packed_attention(*leaves, cu, max_len, scale, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    return [out.float(), *(g.float() for g in grads)]


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(8, 2, 64), (8, 2, 128), (12, 2, 128), (8, 8, 64)])
def test_torch_varlen_matches_the_sequence_loop_in_bf16(heads, kv_heads, head_dim):
    q, k, v, cu = _row(heads, kv_heads, head_dim, LENGTHS)
    scale = head_dim ** -0.5
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(1, sum(LENGTHS), heads, head_dim, generator=gen).cuda()
    truth = _run("sdpa_loop", q, k, v, cu, max(LENGTHS), scale, grad_out, torch.float32)
    loop = _run("sdpa_loop", q, k, v, cu, max(LENGTHS), scale, grad_out, torch.bfloat16)
    fused = _run("torch_varlen", q, k, v, cu, max(LENGTHS), scale, grad_out, torch.bfloat16)
    for name, t, a, b in zip(("out", "dq", "dk", "dv"), truth, loop, fused):
        assert a.shape == b.shape == t.shape
        err_loop, err_fused = (a - t).abs().max().item(), (b - t).abs().max().item()
        bound = 4 * err_loop + 1e-2 * t.abs().max().item()
        assert err_fused <= bound, f"{name}: |varlen - fp32| = {err_fused:.3g}, |bf16 loop - fp32| = {err_loop:.3g}"
        assert torch.isfinite(b).all()
    # every sequence attends only to itself: a change in sequence 2 leaves the outputs of the others unchanged
    q2 = q.clone()
    start, end = cu[2].item(), cu[3].item()
    q2[:, :, start:end] += 1.0
    with torch.no_grad():
        a = attention.packed_attention(q, k, v, cu, max(LENGTHS), scale, backend="torch_varlen")
        b = attention.packed_attention(q2, k, v, cu, max(LENGTHS), scale, backend="torch_varlen")
    assert torch.equal(a[:, :start], b[:, :start]) and torch.equal(a[:, end:], b[:, end:])
    assert not torch.equal(a[:, start:end], b[:, start:end])


def test_bf16_packed_rows_take_torch_varlen_and_match_the_loop():
    """A bf16 Qwen2 (GQA 8/2 heads, head_dim 64) on a packed row: the varlen kernel serves every layer (when
    flash-attn is not installed), and logprobs and gradients agree with the same model on the SDPA loop."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlkit.parallel.batch import collate
    from rlkit.records import Sample
    from rlkit.trainers.batch import LogprobPolicy

    expected = "flash_attn" if importlib.util.find_spec("flash_attn") else "torch_varlen"
    assert attention.packed_backend(torch.device("cuda"), torch.bfloat16, 8, 2, 64) == expected
    assert attention.packed_backend(torch.device("cuda"), torch.float32, 8, 2, 64) == "sdpa_loop"

    torch.manual_seed(0)
    layers = 3
    cfg = Qwen2Config(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    model = Qwen2ForCausalLM(cfg).to("cuda", torch.bfloat16)
    policy = LogprobPolicy(model)
    gen = torch.Generator().manual_seed(2)
    samples = [Sample(torch.randint(3, 1000, (8,), generator=gen).tolist(),
                      torch.randint(3, 1000, (n,), generator=gen).tolist(), [], "stop", "", i)
               for i, n in enumerate([1, 300, 45, 1500, 9])]
    mb = collate(samples, 0, packed=True).to("cuda")
    results = {}
    for backend in (None, "sdpa_loop"):
        model.zero_grad(set_to_none=True)
        before = attention.calls.copy()
        with attention.use_backend(backend):
            lp, _ = policy(mb, temperature=0.8)
        (lp * mb.completion_mask).sum().backward()
        served = attention.calls - before
        assert served == {backend or expected: layers}, served
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[backend] = (lp.detach().float(), grads)
    (lp_a, g_a), (lp_b, g_b) = results[None], results["sdpa_loop"]
    assert (lp_a - lp_b).abs().max().item() < 5e-2
    assert torch.nn.functional.cosine_similarity(g_a, g_b, dim=0).item() > 0.999
