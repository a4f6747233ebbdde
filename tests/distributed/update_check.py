"""Run under torchrun (1 or 2 processes): for each aggregation given (comma-separated), one update_policy call on a
fixed synthetic batch from the same initial model, each rank taking a strided share; rank 0 saves the updated
parameters to OUT_<aggregation>.pt (``<aggregation>:tokens``: with per-token advantages). SGD (not Adam) so scale
errors show. One launch serves every aggregation."""

import os
import sys

import torch
from accelerate import Accelerator

from rlkit.algorithms.losses import ppo_clip_loss
from rlkit.config import AlgorithmConfig
from rlkit.models import load_policy
from rlkit.parallel.micro import MicroBatching
from rlkit.records import Sample, StepBatch
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.grpo import update_policy
from rlkit.trainers.update import LossSpec, UpdateSettings, balance_ranks, prepare_tokens


def main(model_dir: str, aggregations: str, out: str) -> None:
    acc = Accelerator(cpu=True)
    for aggregation in aggregations.split(","):
        update_once(acc, model_dir, aggregation, f"{out}_{aggregation}.pt")


def update_once(acc, model_dir: str, aggregation: str, out: str) -> None:
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(8):
        p, c = 3 + i % 4, 2 + (5 * i) % 9
        ids = torch.randint(5, 400, (p + c,), generator=gen).tolist()
        samples.append(Sample(ids[:p], ids[p:], [0.0] * c, "stop", "", i // 2))
    advantages = torch.randn(8, generator=gen)
    aggregation, _, variant = aggregation.partition(":")
    # "<aggregation>:tokens": per-token advantages (a token-level estimator's), moved with their samples
    tokens = [torch.randn(s.num_tokens, generator=gen) for s in samples] if variant == "tokens" else None
    mine = list(range(acc.process_index, 8, acc.num_processes))
    batch = StepBatch([], [samples[i] for i in mine], advantages=advantages[mine],
                      token_advantages=[tokens[i] for i in mine] if tokens else None)
    # moves samples between ranks by cost (no-op on one process): the update must not change
    batch = prepare_tokens(balance_ranks(batch, acc, whole_groups=False, cost_b=0.01))
    model = LogprobPolicy(load_policy(model_dir, torch.float32))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    prepared, opt = acc.prepare(model, opt)
    update_policy(
        prepared, opt, None, acc, batch,
        UpdateSettings(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(aggregation=aggregation), pad_id=0, temperature=1.0, batching=MicroBatching(micro_batch_tokens=24), max_new_tokens=16, max_grad_norm=0.0),
        seed=0)
    if acc.is_main_process:
        torch.save({k: v.detach().clone() for k, v in acc.unwrap_model(prepared).state_dict().items()}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    # leave without interpreter teardown: the results are written and every rank is past the barrier, and
    # gloo's threads can abort the process while being torn down ("terminate called without an active
    # exception", seen intermittently on the 2-core CI machine), which would fail a finished check
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
