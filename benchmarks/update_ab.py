"""A/B of the update phase alone: time update_policy in-process on a fixed batch (16 samples, prompts ~60, completions
~55 tokens) with the embedded SmolLM2 policy and AdamW, for whichever rlkit tree is first on PYTHONPATH (this tree, or
an older checkout with its update_policy keyword signature). Prints the seconds of each call as JSON.

    for tree in . /tmp/rlkit-base . /tmp/rlkit-base; do PYTHONPATH=$tree python benchmarks/update_ab.py 8; done
"""

import json
import sys
import time

import torch
from accelerate import Accelerator

from rlkit.algorithms.losses import ppo_clip_loss
from rlkit.config import AlgorithmConfig
from rlkit.models import load_policy, resolve_model_path
from rlkit.parallel.micro import MicroBatching
from rlkit.records import Sample, StepBatch
from rlkit.trainers.batch import LogprobPolicy
from rlkit.trainers.update import LossSpec, prepare_tokens

try:
    from rlkit.trainers.grpo import update_policy
    from rlkit.trainers.update import UpdateSettings
    new = True
except ImportError:
    from rlkit.trainers.update import update_policy
    new = False
torch.manual_seed(0)
acc = Accelerator(cpu=True)
gen = torch.Generator().manual_seed(0)
samples = []
for i in range(16):
    p, c = 50 + (7 * i) % 20, 30 + (13 * i) % 35
    ids = torch.randint(5, 40000, (p + c,), generator=gen).tolist()
    samples.append(Sample(ids[:p], ids[p:], [-1.0] * c, "stop", "", i // 4))
batch = prepare_tokens(StepBatch([], samples, advantages=torch.randn(16, generator=gen)))
model = LogprobPolicy(load_policy(resolve_model_path("smollm2-135m-instruct"), torch.float32))
opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
prepared, opt = acc.prepare(model, opt)
kw = dict(loss=LossSpec(ppo_clip_loss), algorithm=AlgorithmConfig(aggregation="token-mean"), pad_id=0, temperature=1.0,
          max_new_tokens=64, max_grad_norm=1.0)
kw["batching" if new else "mbs"] = MicroBatching(micro_batch_tokens=8192)
times = []
for k in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
    t = time.perf_counter()
    if new:
        update_policy(prepared, opt, None, acc, batch, UpdateSettings(**kw), seed=k)
    else:
        update_policy(prepared, opt, None, acc, batch, seed=k, **kw)
    times.append(time.perf_counter() - t)
print(json.dumps({"new": new, "times": times}))
