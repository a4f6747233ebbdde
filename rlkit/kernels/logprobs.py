"""Per-token logprobs and entropy of sampled tokens: the one place they are computed.

Convention: logprob = log softmax(z / T)[target] and entropy = -sum_j p_j log p_j with p = softmax(z / T),
z = h W^T (+ b); that is vLLM's ``logprobs_mode="processed_logprobs"`` (temperature applied). All math
in fp32 whatever the model dtype.

Two implementations of the same function:

- ``reference_logprobs``: plain torch on materialised logits [K, V]; autograd does the backward.
- ``chunked_logprobs``: a custom autograd function that never holds more than ``chunk`` x V logits.
  Forward keeps only logZ and the entropy per row; backward recomputes each chunk's logits and uses
  the closed-form gradients (StreamBP's LM-head decomposition, methods.md section 9.1, exact because the
  loss is a sum over positions):

      d logprob_t / dz = (onehot(target) - p) / T
      d entropy / dz   = -p * (log p + H) / T

  then dh = dz W and dW = dz^T h, accumulated chunk by chunk. Peak extra memory is O(chunk x V)
  instead of O(K x V) (19 GB in fp32 for 32k tokens x 151k vocabulary).

Parity (values and gradients) is tested in tests/unit/test_logprobs.py; memory and time in
benchmarks/logprobs.py. A Triton version is not written yet: on CUDA the chunked torch version runs
(cuBLAS matmuls + fused elementwise ops).
"""

from __future__ import annotations

import torch


def reference_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [K, H], weight [V, H], targets [K] -> (logprobs [K], entropy [K]), full logits in memory."""
    return logprobs_from_logits(_chunk_logits(hidden, weight, bias, 1.0), targets, temperature)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [K, V] -> (logprobs [K], entropy [K]) in fp32 (fp64 for fp64 input), differentiable."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp = torch.log_softmax(z, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when the input is fp64


def _chunk_logits(h, weight, bias, temperature):
    """Logits of a chunk in the compute dtype; the matmul runs in the hidden states' dtype (bf16 models
    keep a bf16 matmul, the softmax math is fp32)."""
    dt = _compute_dtype(h)
    w = weight if weight.dtype == h.dtype else weight.to(h.dtype)
    z = (h @ w.t()).to(dt)
    if bias is not None:
        z.add_(bias.to(dt))
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk):
        weight_in = weight
        weight = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)  # cast once, not per chunk
        n, dt = hidden.shape[0], _compute_dtype(hidden)
        lp = torch.empty(n, dtype=dt, device=hidden.device)
        ent = torch.empty(n, dtype=dt, device=hidden.device)
        logz = torch.empty(n, dtype=dt, device=hidden.device)
        for s in range(0, n, chunk):  # two chunk x V buffers alive at a time (the logits and p)
            z = _chunk_logits(hidden[s:s + chunk], weight, bias, temperature)
            lz = torch.logsumexp(z, dim=-1)
            logz[s:s + chunk] = lz
            logp = z.sub_(lz[:, None])
            lp[s:s + chunk] = logp.gather(-1, targets[s:s + chunk, None]).squeeze(-1)
            ent[s:s + chunk] = -(logp.exp().mul_(logp)).sum(-1)
            del z, logp
        ctx.set_materialize_grads(False)  # an unused output (often the entropy) then costs nothing
        ctx.save_for_backward(hidden, weight_in, bias, targets, logz, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, logz, ent = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(hidden) if need_h else None
        dt = _compute_dtype(hidden)
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        g_w = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
        g_b = torch.zeros(bias.shape, dtype=dt, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            logp = _chunk_logits(h, w, bias, t).sub_(logz[s:s + chunk, None])  # in place: 2 buffers alive
            p = logp.exp()
            gz = logp  # reuses the buffer: dL/dz is built where log p was
            if g_ent is not None:  # dH/dz = -p (log p + H)
                gz.add_(ent[s:s + chunk, None]).mul_(p).mul_(-g_ent[s:s + chunk, None])
            else:
                gz.zero_()
            if g_lp is not None:  # dlp/dz = onehot - p
                g = g_lp[s:s + chunk, None]
                gz.sub_(p.mul_(g))
                gz.scatter_add_(-1, targets[s:s + chunk, None], g.to(gz.dtype))
            del p
            if t != 1.0:
                gz.div_(t)
            if need_h:
                g_h[s:s + chunk] = (gz.to(w.dtype) @ w).to(hidden.dtype)
            if need_w:
                g_w += gz.t() @ h.to(dt)
            if need_b:
                g_b += gz.sum(0)
            del logp, gz
        return (g_h, g_w.to(weight.dtype) if need_w else None, g_b.to(bias.dtype) if need_b else None,
                None, None, None)


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                     temperature: float = 1.0, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as ``reference_logprobs`` with O(chunk x V) extra memory in forward and backward."""
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=_compute_dtype(hidden))
        return empty + 0 * hidden.sum(), empty
    if chunk < 1:
        raise ValueError(f"chunked_logprobs: chunk must be >= 1, got {chunk}")
    return _ChunkedLogprobs.apply(hidden, weight, bias, targets, float(temperature), int(chunk))
