"""Run under torchrun (1 or 3 processes, gloo): the trainer's collectives with uneven per-rank shares.
Rank 0 writes what it saw to the JSON file given on the command line."""

import json
import math
import sys
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from rlkit.algorithms.filters import DECSCurriculum
from rlkit.algorithms.losses import KLCovOptions, MinibatchInputs, kl_cov_select
from rlkit.config import load_config
from rlkit.parallel import dist
from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rewards import RewardSet
from rlkit.trainers.collect import refresh_monitors
from rlkit.trainers.stages import Stages


class LengthEngine:
    """Deterministic stand-in for the rollout engine: sample j of prompt p has length 4 + (p * 3 + j * 5) % 17."""

    version = 0

    def generate(self, prompts, spec):
        return [Sample(ids, list(range(4 + (ids[0] * 3 + j * 5) % 17)), [], "stop", "", k)
                for k, ids in enumerate(prompts) for j in range(spec.n)]


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    result = {}
    # 1. variable-size gather: ranks hold 2, 0 and 3 values (one process: all five)
    shares = [[0.0, 1.0], [], [20.0, 21.0, 22.0]]
    mine = [x for r in range(rank, 3, world) for x in shares[r]] if world == 1 else shares[rank]
    result["gathered"] = dist.gather_var(acc, torch.tensor(mine)).tolist()
    # 2. metrics: different keys and NaNs on each rank
    per_rank = [{"a": 1.0, "b": math.nan, "rank_only_0": 7.0}, {"a": 3.0, "c": 5.0}, {"a": 2.0, "b": 4.0}]
    result["metrics"] = dist.mean_metrics(acc, per_rank[rank]) if world > 1 else None
    # 3. KL-Cov's token choice over a minibatch whose 7 rows are spread 3 / 1 / 3 over the ranks
    gen = torch.Generator().manual_seed(0)
    lp, adv = -torch.rand(7, 10, generator=gen) * 3, torch.randn(7, generator=gen)
    mask = (torch.arange(10)[None, :] < torch.tensor([10, 3, 7, 9, 2, 10, 5])[:, None]).float()
    rows = {3: [[0, 1, 2], [3], [4, 5, 6]], 1: [list(range(7))]}[world][rank]
    chosen = kl_cov_select(MinibatchInputs(lp[rows], adv[rows], mask[rows],
                                           all_reduce_sum=lambda t: dist.all_reduce(acc, t, "sum"),
                                           all_gather=lambda t: dist.gather_var(acc, t), rank=rank),
                           KLCovOptions(kl_cov_ratio=0.1))
    result["kl_cov_chosen"] = dist.gather_var(acc, chosen["kl_cov_chosen"].int()).tolist()
    # 4. LASER-D monitor: 8 monitor prompts (3 / 3 / 2 per rank), K = 3 rollouts each, gathered and bucketed
    cfg = load_config(overrides={
        "rewards": [{"name": "helpers:even_length_correct", "correctness": True}], "rollout.prompts_per_step": 6,
        "shaping": [{"name": "laser_d", "kwargs": {"monitor_every": 1, "monitor_size": 8, "monitor_samples": 3,
                                                   "lower": 4, "upper": 24, "interval": 4}}]})
    prompts = [Prompt([p + 1], f"q{p}", {"question": f"q{p}"}) for p in range(20)]
    run = SimpleNamespace(cfg=cfg, acc=acc, stages=Stages.from_config(cfg), engine=LengthEngine(),
                          train_set=SimpleNamespace(prompts=prompts), rewards=RewardSet.from_config(cfg.rewards),
                          timers={}, tokenizer=None)
    refresh_monitors(run, 0)
    shaper = run.stages.shapers[0][1]
    result["targets"] = shaper.targets
    result["monitor_sizes"] = dist.rank_sizes(acc, len(range(8)[rank::world]))
    # 5. DECS's curriculum: kappa follows the necessary-prefix ratio's mean over every rank's batch. Rank r holds two
    # groups of 4 whose r + 1 correct samples report the ratio 0.2 + 0.4 r (one process: all six groups)
    mine = [r for r in range(3) if world == 1 or r == rank]
    groups = [(r, [1.0] * (r + 1) + [0.0] * (3 - r)) for r in mine for _ in range(2)]
    samples = [Sample([g], [1, 2], [], "stop", "", g) for g, (_, v) in enumerate(groups) for _ in v]
    correct = torch.tensor([x for _, v in groups for x in v])
    ratio = torch.tensor([0.2 + 0.4 * r if x else math.nan for r, v in groups for x in v])
    batch = StepBatch([Prompt([g], f"q{g}", {}) for g in range(len(groups))], samples, rewards=correct.clone(),
                      terms={"correct": correct, "decs_redundancy/nrp_ratio": ratio}, correct=correct)
    curriculum = DECSCurriculum(kappa_lr=0.2)
    curriculum.collect(len(groups), lambda n, i: batch, lambda t, op: dist.all_reduce(acc, t, op))
    result["kappa"] = dist.gather_objects(acc, curriculum.kappa)
    # ... and at kappa 0.25 the easy groups it adds back are counted and drawn over every rank's groups: rank r holds
    # two informative groups and r + 1 all-correct ones, so 6 informative groups add int(0.25 x 6 / 0.75) = 2 of 6
    texts = [(f"informative {r}.{j}", [1.0, 0.0, 0.0, 0.0]) for r in mine for j in range(2)]
    texts = [x for r in mine for x in [t for t in texts if t[0].startswith(f"informative {r}.")]
             + [(f"easy {r}.{j}", [1.0] * 4) for j in range(r + 1)]]
    c = torch.tensor([x for _, v in texts for x in v])
    batch = StepBatch([Prompt([g], text, {}) for g, (text, _) in enumerate(texts)],
                      [Sample([g], [1, 2], [], "stop", "", g) for g, (_, v) in enumerate(texts) for _ in v],
                      rewards=c.clone(), terms={"correct": c, "decs_redundancy/nrp_ratio": torch.full_like(c, math.nan)},
                      correct=c)
    curriculum = DECSCurriculum(max_rounds=1)
    curriculum.kappa = 0.25
    got = curriculum.collect(len(texts), lambda n, i: batch, lambda t, op: dist.all_reduce(acc, t, op))
    real = got.prompts[:len(got.prompts) - got.metrics["sampling/padded_groups"]]
    result["easy_added"] = dist.gather_objects(acc, got.metrics["sampling/easy_groups"])
    result["easy_chosen"] = sorted(t for texts in dist.gather_objects(acc, [p.text for p in real if "easy" in p.text])
                                   for t in texts)
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # leave without interpreter teardown, as rlkit's own ranks do (rlkit.parallel.dist.leave_world says why): the
    # results are written and every rank is past the barrier
    dist.end_world()
    dist.leave_world(0)
