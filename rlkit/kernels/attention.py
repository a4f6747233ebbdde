"""Attention over packed rows, plugged into transformers' attention interface (no model code forked).

``register()`` adds an attention implementation named ``rlkit_varlen`` to transformers'
``AttentionInterface`` (and a matching mask function). Models load with
``attn_implementation="rlkit_varlen"`` (rlkit.models.load_policy does). Behaviour per call:

- packed call (the forward got ``cu_seq_lens_q``/``cu_seq_lens_k``, see rlkit.kernels.packing):
  causal attention inside each sequence of the row and nothing across sequences.
  * CUDA with ``flash_attn`` installed: ``flash_attn_varlen_func`` on the whole row;
  * otherwise (CPU, or CUDA without flash-attn): ``scaled_dot_product_attention`` with ``is_causal``
    per sequence: exact, and its cost is sum(L_i^2), not (sum L_i)^2. FlexAttention with a
    document BlockMask is the other exact PyTorch option (platform notes); on CPU it runs unfused,
    so the per-sequence loop is the faster choice here.
- any other call (generation with a KV cache, left-padded batches): transformers' own SDPA path with
  the mask transformers built. With no 2-D padding mask the mask function returns None and SDPA runs
  causally, which is exact for unpadded or right-padded rows (real tokens never look right).

Reference: the same model with ``attn_implementation="sdpa"`` run on each sample alone; the parity
tests (tests/integration/test_packed_forward.py) compare the two in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "rlkit_varlen"
_registered = False


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _per_sequence_sdpa(query, key, value, cu: list[int], scaling, n_rep: int) -> torch.Tensor:
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D], causal within each [cu[i], cu[i+1])."""
    outs = []
    for start, end in zip(cu[:-1], cu[1:]):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


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
    n_rep = query.shape[1] // key.shape[1]
    flash = _flash_varlen() if query.is_cuda else None
    if flash is not None:
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
        out = flash(q, k, v, cu_seq_lens_q, cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q,
                    int(max_length_q), int(max_length_k or max_length_q), dropout_p=dropout,
                    softmax_scale=scaling, causal=True)
        return out.unsqueeze(0), None
    return _per_sequence_sdpa(query, key, value, cu_seq_lens_q.tolist(), scaling, n_rep), None


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
