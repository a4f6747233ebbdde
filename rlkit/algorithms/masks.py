"""Token masks: which completion tokens a step trains on.

A mask is a registered factory whose object has ``kind`` and ``keep(inp: MaskInputs) -> [B, C] in {0, 1}``:

- kind "batch": applied once to the step's loss mask before the aggregation normaliser is computed, so
  the masked tokens leave the loss entirely (``mask_truncated``);
- kind "forward": applied per micro-batch to the token *weights* after the forward pass, when the current
  entropy is known; the normaliser is unchanged (UloRL's DMMPT).

The trainer reports the share of tokens each mask removes as ``mask/<name>/masked_frac``.
"""

from __future__ import annotations

import math

import torch

from rlkit.records import MaskInputs
from rlkit.registry import register


@register("token_mask", "mask_truncated")
class MaskTruncated:
    """Drop completions that hit the length cap (finish_reason "length") from the loss (DAPO's overlong
    filtering, Yu et al. arXiv 2503.14476 sec. 3.4; TRL's mask_truncated_completions)."""

    kind = "batch"

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        return (~inp.truncated).to(inp.mask.dtype)[:, None].expand_as(inp.mask)


@register("token_mask", "dmmpt")
class DMMPT:
    """Dynamic masking of well-mastered positive tokens (UloRL, Du et al. arXiv 2507.19766 eq. 9-10):

        MPT    = {t in sample i : p_old(o_t) >= tau and r_i = 1}
        H_i    = (1/|o_i|) sum_t entropy_t                 (mean token entropy of response i)
        I(i,t) = 1 if H_i < sigma and t in MPT else 0
        keep   = 1 - I                                    (the loss normaliser 1/sum|o_i| is unchanged)

    p comes from the old policy (methods.md: the source is unstated; pi_old is available). Needs a
    correctness term in `rewards`; samples of unknown correctness are never masked. UloRL: tau 0.99, sigma 0.2.
    """

    kind = "forward"
    needs_verifier = True

    def __init__(self, tau: float = 0.99, sigma: float = 0.2):
        if not 0 < tau <= 1:
            raise ValueError(f"dmmpt: tau must be in (0, 1], got {tau}")
        self.tau, self.sigma = tau, sigma

    def keep(self, inp: MaskInputs) -> torch.Tensor:
        n = inp.mask.sum(-1).clamp(min=1.0)
        mean_entropy = (inp.entropy * inp.mask).sum(-1) / n
        gate = (inp.correct == 1) & (mean_entropy < self.sigma)
        mastered = inp.old_logprobs >= math.log(self.tau)
        return 1.0 - (mastered & gate[:, None] & (inp.mask > 0)).to(inp.mask.dtype)
