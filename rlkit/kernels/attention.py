"""Attention over packed rows, plugged into transformers' attention interface (no model code forked).

``register()`` adds an attention implementation named ``rlkit_varlen`` to transformers'
``AttentionInterface`` (and a matching mask function). Models load with ``sdpa`` (rlkit.models.load_policy) and the
trainer's ``LogprobPolicy`` switches them to ``rlkit_varlen`` (or ``rlkit_ulysses`` under sequence parallelism) at
set-up. Behaviour per call:

- packed call (the forward got ``cu_seq_lens_q``/``cu_seq_lens_k``, see rlkit.kernels.packing):
  causal attention inside each sequence of the row and nothing across sequences, by one of three backends
  (``packed_backend`` says which; ``calls`` counts the calls each one served):
  * ``flash_attn``: CUDA, fp16/bf16, the ``flash_attn`` package installed: ``flash_attn_varlen_func`` on the
    whole row.
  * ``torch_varlen``: CUDA, fp16/bf16, no flash-attn: ``torch.nn.attention.varlen.varlen_attn``
    (FlashAttention's varlen kernel shipped inside torch; 2.11 and 2.13 have it) on the whole row: one kernel
    per layer instead of one SDPA call per sequence. Causal through ``window_size=(-1, 0)`` (``is_causal``
    where a release has that instead); GQA through ``enable_gqa`` where the installed torch has it, else by
    repeating the KV heads; ``cu_seqlens`` go in as int32 on the row's device, as the kernel wants. The
    signature differs between releases (2.11 vs 2.13), so the arguments are chosen by inspecting it.
  * ``sdpa_loop`` (the plain-torch reference, and the path everywhere else: CPU, fp32, no varlen kernel):
    ``scaled_dot_product_attention`` with ``is_causal`` per sequence: exact, and its cost is sum(L_i^2), not
    (sum L_i)^2. FlexAttention with a document BlockMask is the other exact PyTorch option (platform notes);
    on CPU it runs unfused, so the per-sequence loop is the faster choice there.
  Why fp16/bf16 only for the fused kernels: FlashAttention has no fp32 kernel. The choice is made once per
  (device, dtype, head shape): ``torch_varlen`` first runs on a tiny two-sequence problem, forward and
  backward, against the loop; if it raises (unsupported GPU architecture, head dim or dtype) or disagrees,
  the loop serves from then on and a warning says why. Errors of real calls (out of memory) are not caught.
  ``torch_varlen`` and the loop apply no attention dropout (every model rlkit trains has it at 0).
- any other call (generation with a KV cache, left-padded batches): transformers' own SDPA path with
  the mask transformers built. With no 2-D padding mask the mask function returns None and SDPA runs
  causally, which is exact for unpadded or right-padded rows (real tokens never look right).

Reference: the same model with ``attn_implementation="sdpa"`` run on each sample alone; the parity
tests (tests/integration/test_packed_forward.py) compare the two in fp32 on CPU. tests/gpu/test_varlen_attention.py
compares ``torch_varlen`` with the loop in bf16 on CUDA, forward and backward, and checks which backend ran.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from collections import Counter

import torch
import torch.nn.functional as F

NAME = "rlkit_varlen"
BACKENDS = ("flash_attn", "torch_varlen", "sdpa_loop")
_HALF = (torch.float16, torch.bfloat16)
_registered = False

calls: Counter = Counter()  # packed calls served, per backend (read by tests and benchmarks/gpu_check.py)
_decided: dict[tuple, str] = {}  # (device, dtype, heads, kv heads, head dim) -> backend
_forced: str | None = None


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen():
    """torch's ``varlen_attn`` and the names of its parameters, or None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _per_sequence_sdpa(query, key, value, cu: list[int], scaling, n_rep: int) -> torch.Tensor:
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D], causal within each [cu[i], cu[i+1])."""
    outs = []
    for start, end in zip(cu[:-1], cu[1:]):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def _rows(query, key, value):
    """[1, H, T, D] -> [T, H, D], contiguous (the layout of the varlen kernels)."""
    return (x[0].transpose(0, 1).contiguous() for x in (query, key, value))


def _torch_varlen_call(query, key, value, cu_q, cu_k, max_q: int, max_k: int, scaling) -> torch.Tensor:
    """torch's varlen kernel on a packed row: [1, H, T, D] (key/value [1, Hkv, T, D]) -> [1, T, H, D]."""
    fn, params = _torch_varlen()
    q, k, v = _rows(query, key, value)
    kwargs = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # older releases: one KV head per query head
            n_rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal; it must be this tuple (the function compares with ==)
    elif "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        raise NotImplementedError("this torch's varlen_attn has no causal option")
    if scaling is not None:
        if "scale" in params:
            kwargs["scale"] = float(scaling)
        elif not math.isclose(scaling, q.shape[-1] ** -0.5):  # no scale argument: the default is 1/sqrt(D)
            q = q * (scaling * q.shape[-1] ** 0.5)
    cu_q = cu_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_q if cu_k is None else cu_k.to(device=q.device, dtype=torch.int32)
    return fn(q, k, v, cu_q, cu_k, int(max_q), int(max_k), **kwargs).unsqueeze(0)


def _probe_torch_varlen(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
                        head_dim: int) -> str | None:
    """Run ``torch_varlen`` forward and backward on two short sequences against the loop; None when it works
    here, else why not. Runs outside any checkpoint or offload hooks of the caller (identity saved-tensor
    hooks on top of theirs) and with autograd on, so it can be called from inside any model forward."""
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 11]
    total = sum(lengths)
    cu = torch.tensor([0, lengths[0], total], dtype=torch.int32, device=device)
    scale = head_dim ** -0.5

    def make(h):
        return torch.randn(1, h, total, head_dim, generator=gen).to(device, dtype).requires_grad_()

    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        q, k, v = make(heads), make(kv_heads), make(kv_heads)
        try:
            out = _torch_varlen_call(q, k, v, cu, cu, max(lengths), max(lengths), scale)
            grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        except torch.cuda.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError, TypeError, ValueError) as e:
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        with torch.no_grad():
            ref = _per_sequence_sdpa(q.float(), k.float(), v.float(), [0, lengths[0], total], scale,
                                     heads // kv_heads)
        err = (out.float() - ref).abs().max().item()
    if not err < 0.05:  # bf16 rounding of O(1) values is ~1e-2; a wrong mask or scale is O(1)
        return f"its output differs from the per-sequence SDPA loop by {err:.3g}"
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        return "its backward gave non-finite gradients"
    return None


def packed_backend(device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> str:
    """The backend that packed calls with these inputs take (``BACKENDS``); decided once and remembered."""
    device = torch.device(device)
    if _forced is not None:
        return _forced
    if device.type != "cuda" or dtype not in _HALF:
        return "sdpa_loop"
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype, heads, kv_heads, head_dim)
    if key not in _decided:
        if _flash_varlen() is not None:
            _decided[key] = "flash_attn"
        elif _torch_varlen() is None:
            _decided[key] = "sdpa_loop"
        else:
            why = _probe_torch_varlen(device, dtype, heads, kv_heads, head_dim)
            if why is not None:
                warnings.warn(f"rlkit: torch's varlen_attn does not run on {device} in {dtype} with head_dim "
                              f"{head_dim} ({why}); packed attention loops over sequences with SDPA",
                              stacklevel=2)
            _decided[key] = "sdpa_loop" if why else "torch_varlen"
    return _decided[key]


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force every packed call to one backend inside the block (benchmarks and parity tests)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown packed attention backend {name!r}; valid: {', '.join(BACKENDS)}")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def packed_attention(query, key, value, cu_seqlens, max_seqlen: int, scaling=None, backend: str | None = None,
                     cu_seqlens_k=None, max_seqlen_k: int | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention within each sequence of a packed row: query [1, H, T, D], key/value [1, Hkv, T, D],
    ``cu_seqlens`` [n + 1] (int32) -> [1, T, H, D]. ``backend`` overrides the choice of ``packed_backend``."""
    if backend is None:
        backend = packed_backend(query.device, query.dtype, query.shape[1], key.shape[1], query.shape[-1])
    calls[backend] += 1
    max_k = int(max_seqlen_k or max_seqlen)
    if backend == "torch_varlen":
        return _torch_varlen_call(query, key, value, cu_seqlens, cu_seqlens_k, int(max_seqlen), max_k, scaling)
    if backend == "flash_attn":
        q, k, v = _rows(query, key, value)
        out = _flash_varlen()(q, k, v, cu_seqlens, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens,
                              int(max_seqlen), max_k, dropout_p=dropout, softmax_scale=scaling, causal=True)
        return out.unsqueeze(0)
    if backend != "sdpa_loop":
        raise ValueError(f"unknown packed attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return _per_sequence_sdpa(query, key, value, cu_seqlens.tolist(), scaling, query.shape[1] // key.shape[1])


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers attention-interface signature; returns (attn_output [B, T, H, D], None)."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one packed row, got a batch of {query.shape[0]}")
    window = getattr(module, "sliding_window", None)
    if window is not None and window < int(max_length_q or query.shape[2]):
        raise ValueError(f"packed attention does not implement sliding windows (layer window {window})")
    max_q = int(max_length_q) if max_length_q is not None else int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
    return packed_attention(query, key, value, cu_seq_lens_q, max_q, scaling, cu_seqlens_k=cu_seq_lens_k,
                            max_seqlen_k=max_length_k, dropout=dropout), None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for unpadded or packed rows (the kernel is causal per sequence); SDPA's mask otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register ``rlkit_varlen`` with transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, varlen_attention)
        AttentionMaskInterface.register(NAME, _mask)
        _registered = True
    return NAME
