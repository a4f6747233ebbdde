"""Run under torchrun: one update per loss family on a fixed synthetic batch with sequence parallelism over
``sp`` ranks (1 on one process), old and reference logprobs scored under the same layout; rank 0 saves the
updated parameters of each family. SGD (not Adam) so scale errors show.

argv: model_dir out sp mode (fixed | adaptive | flex) budget

Adaptive and flex plan with a time model in which the exchanges are expensive (1 s per token at degree 4, 0.5 at 2,
against 1 s per token of compute), so their plans mix degrees: each sample runs at the smallest degree that holds it.
The degrees of the plan of each family's update are saved with its results.
"""

import copy
import os
import sys

import torch
from accelerate import Accelerator

from rlkit import registry
from rlkit.algorithms.losses import (
    ClipOptions,
    DRPOOptions,
    KLCovOptions,
    drpo_loss,
    kl_cov_loss,
    kl_cov_select,
    ppo_clip_loss,
)
from rlkit.config import AlgorithmConfig
from rlkit.models import load_policy
from rlkit.parallel import dist, micro
from rlkit.parallel.layout import make_layout
from rlkit.parallel.micro import MicroBatching, plan_rank
from rlkit.parallel.plan import CostModel
from rlkit.records import Sample, StepBatch
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.grpo import update_policy
from rlkit.trainers.update import (
    LossSpec,
    UpdateSettings,
    balance_ranks,
    policy_logprobs,
    prepare_tokens,
    split_minibatches,
)

# prompt, completion lengths: a sample of 2 tokens (shorter than the SP degree's shard of anything), long
# ones that cross the shard boundary of any packed row, and short ones for side-by-side steps in adaptive mode
SHAPES = [(1, 1), (3, 40), (5, 7), (4, 33), (2, 3), (6, 12), (3, 25), (4, 2),
          (2, 2), (3, 1), (1, 4), (2, 6), (3, 3), (2, 1), (5, 5), (1, 2)]
FAMILIES = {
    "ppo_token_mean": (LossSpec(ppo_clip_loss), dict(aggregation="token-mean"), ()),
    "ppo_seq_mean": (LossSpec(ppo_clip_loss), dict(aggregation="seq-mean-token-mean"), ()),
    "ppo_dr_grpo": (LossSpec(ppo_clip_loss), dict(aggregation="seq-mean-token-sum-norm"), ()),
    "ppo_kl": (LossSpec(lambda inp: ppo_clip_loss(inp, ClipOptions(kl_coef=0.5)), reference=0.5), {}, ()),
    "ppo_dmmpt": (LossSpec(ppo_clip_loss), {}, ("dmmpt",)),
    "kl_cov": (LossSpec(lambda inp: kl_cov_loss(inp, KLCovOptions(kl_cov_ratio=0.1)),
                        prepare=lambda mb: kl_cov_select(mb, KLCovOptions(kl_cov_ratio=0.1))), {}, ()),
    # beta 0: DRPO's KL penalty is a token mean per micro-batch (as in the released code), so it depends on how
    # the samples are packed, which differs between 1 process and an SP group; the decoupled objective does not
    "drpo": (LossSpec(lambda inp: drpo_loss(inp, DRPOOptions(beta=0.0)), whole_groups=True), {}, ()),  # C = 48
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
    received = []  # per plan: True when another rank of the SP group made the winner (shared planning, issue 35)
    share = micro._from_member

    def from_member(rounds, lay, maker):
        received.append(rounds is None)
        return share(rounds, lay, maker)

    micro._from_member = from_member
    layout = make_layout(acc, sp, mode)
    cost = CostModel(1.0, 0.01, comm=((2, 0.5, 0.0), (4, 1.0, 0.0)))
    batching = MicroBatching(micro_batch_tokens=budget, cost_b=0.01, layout=layout, cost=cost)
    dmmpt = registry.build(registry.resolve("token_mask", "dmmpt"), dict(tau=0.002, sigma=100.0))
    base = load_policy(model_dir, torch.float32)
    results = {}
    for name, (loss, algo, masks) in FAMILIES.items():
        batch = prepare_tokens(balance_ranks(batch_for(acc), acc, whole_groups=loss.whole_groups, cost_b=0.01,
                                             layout=layout))
        policy = LogprobPolicy(copy.deepcopy(base), sp_groups=layout.groups)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        prepared, opt = acc.prepare(policy, opt)
        score = dict(samples=batch.samples, pad_id=0, acc=acc, temperature=1.0, batching=batching, width=batch.mask.shape[1])
        batch.old_logprobs = policy_logprobs(prepared, **score)
        if loss.reference > 0:
            batch.ref_logprobs = policy_logprobs(LogprobPolicy(copy.deepcopy(base), sp_groups=layout.groups), **score)
        # the update's minibatches (seed 0, 2 minibatches): the plans it runs
        degrees = sorted({m.degree for half in split_minibatches(batch, loss.whole_groups, 2, 0)
                          for m in plan_rank(half, batch.samples, batching, acc) if m.idx})
        degrees = sorted({d for ds in dist.gather_objects(acc, degrees) for d in ds})
        stats = update_policy(
            prepared, opt, None, acc, batch,
            UpdateSettings(loss=loss, algorithm=AlgorithmConfig(minibatches=2, **algo), pad_id=0, temperature=1.0, batching=batching, max_new_tokens=48, max_grad_norm=0.0, forward_masks=[("dmmpt", dmmpt)] if masks else []),
            seed=0)
        state = {k: v.detach().clone() for k, v in acc.unwrap_model(prepared).state_dict().items()}
        results[name] = {"params": state, "old": batch.old_logprobs, "entropy": stats.entropy / stats.tokens,
                         "masked": stats.masked.get("dmmpt", 0.0), "tokens": stats.tokens, "degrees": degrees,
                         "received": sum(sum(r) for r in dist.gather_objects(acc, received))}
        received.clear()
    if acc.is_main_process:
        torch.save(results, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    # leave without interpreter teardown (see update_check.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
