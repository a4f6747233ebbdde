"""Run under torchrun: one update per loss family on a fixed synthetic batch with sequence parallelism over
``sp`` ranks (1 on one process), old and reference logprobs scored under the same layout; rank 0 saves the
updated parameters of each family. SGD (not Adam) so scale errors show.

argv: model_dir out sp mode (fixed | adaptive) budget
"""

import copy
import os
import sys

import torch
from accelerate import Accelerator

from rlkit import registry
from rlkit.algorithms.losses import drpo_loss, kl_cov_loss, kl_cov_select, ppo_clip_loss
from rlkit.config import AlgorithmConfig
from rlkit.models import load_policy
from rlkit.records import Sample, StepBatch
from rlkit.trainers import dist
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.update import (
    LossSpec,
    MicroBatching,
    balance_ranks,
    prepare_tokens,
    score_all,
    update_policy,
)

# prompt, completion lengths: a sample of 2 tokens (shorter than the SP degree's shard of anything), long
# ones that cross the shard boundary of any packed row, and short ones for side-by-side steps in adaptive mode
SHAPES = [(1, 1), (3, 40), (5, 7), (4, 33), (2, 3), (6, 12), (3, 25), (4, 2)]
FAMILIES = {
    "ppo_token_mean": (LossSpec(ppo_clip_loss), dict(aggregation="token-mean"), ()),
    "ppo_seq_mean": (LossSpec(ppo_clip_loss), dict(aggregation="seq-mean-token-mean"), ()),
    "ppo_dr_grpo": (LossSpec(ppo_clip_loss), dict(aggregation="seq-mean-token-sum-norm"), ()),
    "ppo_kl": (LossSpec(lambda inp: ppo_clip_loss(inp, kl_coef=0.5)), dict(kl_coef=0.5), ()),
    "ppo_dmmpt": (LossSpec(ppo_clip_loss), {}, ("dmmpt",)),
    "kl_cov": (LossSpec(lambda inp: kl_cov_loss(inp, kl_cov_ratio=0.1),
                        prepare=lambda mb: kl_cov_select(mb, kl_cov_ratio=0.1)), {}, ()),
    "drpo": (LossSpec(lambda inp: drpo_loss(inp, max_len=48), whole_groups=True), {}, ()),
}


def batch_for(acc) -> StepBatch:
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i, (p, c) in enumerate(SHAPES):
        ids = torch.randint(5, 400, (p + c,), generator=gen).tolist()
        samples.append(Sample(ids[:p], ids[p:], torch.randn(c, generator=gen).mul(0.1).sub(6).tolist(), "stop", "",
                              i // 2))
    advantages = torch.randn(len(SHAPES), generator=gen)
    correct = torch.tensor([float(i % 2) for i in range(len(SHAPES))])
    share = len(SHAPES) // acc.num_processes  # contiguous whole groups: the gathered order is the 1-process order
    mine = list(range(acc.process_index * share, (acc.process_index + 1) * share))
    return StepBatch([], [samples[i] for i in mine], advantages=advantages[mine], correct=correct[mine])


def main(model_dir: str, out: str, sp: int, mode: str, budget: int) -> None:
    acc = Accelerator(cpu=True)
    layout = dist.make_layout(acc, sp)
    mbs = MicroBatching(micro_batch_tokens=budget, cost_b=0.01, layout=layout, sp_mode=mode)
    dmmpt = registry.build(registry.resolve("token_mask", "dmmpt"), dict(tau=0.002, sigma=100.0))
    base = load_policy(model_dir, torch.float32)
    results = {}
    for name, (loss, algo, masks) in FAMILIES.items():
        batch = prepare_tokens(balance_ranks(batch_for(acc), acc, whole_groups=loss.whole_groups, cost_b=0.01,
                                             layout=layout))
        policy = LogprobPolicy(copy.deepcopy(base), sp_group=layout.sp_group)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        prepared, opt = acc.prepare(policy, opt)
        score = dict(samples=batch.samples, pad_id=0, acc=acc, temperature=1.0, mbs=mbs, width=batch.mask.shape[1])
        batch.old_logprobs = score_all(prepared, **score)
        if algo.get("kl_coef"):
            batch.ref_logprobs = score_all(LogprobPolicy(copy.deepcopy(base), sp_group=layout.sp_group), **score)
        stats = update_policy(prepared, opt, None, acc, batch, loss=loss, algorithm=AlgorithmConfig(minibatches=2, **algo),
                              pad_id=0, temperature=1.0, mbs=mbs, max_new_tokens=48, max_grad_norm=0.0, seed=0,
                              forward_masks=[("dmmpt", dmmpt)] if masks else [])
        state = {k: v.detach().clone() for k, v in acc.unwrap_model(prepared).state_dict().items()}
        results[name] = {"params": state, "old": batch.old_logprobs, "entropy": stats.entropy / stats.tokens,
                         "masked": stats.masked.get("dmmpt", 0.0), "tokens": stats.tokens}
    if acc.is_main_process:
        torch.save(results, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    # leave without interpreter teardown (see update_check.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
