"""Per-token logprobs and entropy of sampled tokens: the one place they are computed.

`token_logprobs` takes logits for the scored positions and returns log softmax(logits / T)[target]
in fp32, matching vLLM's ``logprobs_mode="processed_logprobs"`` (temperature applied). It works on
row chunks so that only one chunk's fp32 softmax is alive outside autograd's saved tensors.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   chunk_rows: int = 4096, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [..., V], targets [...] -> (logprobs [...], entropy [...] or None; entropy carries no grad)."""
    shape = targets.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    out_lp, out_ent = [], []
    for start in range(0, flat_targets.numel(), chunk_rows):
        chunk = flat_logits[start:start + chunk_rows].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        logz = torch.logsumexp(chunk, dim=-1)
        picked = chunk.gather(-1, flat_targets[start:start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out_lp.append(picked - logz)
        if with_entropy:
            with torch.no_grad():
                p = torch.softmax(chunk.detach(), dim=-1)
                out_ent.append(logz.detach() - (p * chunk.detach()).sum(-1))
    lp = torch.cat(out_lp).reshape(shape) if out_lp else flat_logits.new_zeros(shape, dtype=torch.float32)
    ent = (torch.cat(out_ent).reshape(shape) if out_ent else lp.new_zeros(shape)) if with_entropy else None
    return lp, ent
