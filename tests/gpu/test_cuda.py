"""CUDA checks of the trainer's forward/backward (the lent GPU has no vLLM: rollouts use the hf engine)."""

import json

import pytest
import torch

pytestmark = pytest.mark.gpu

def varied_reward(prompts, completions, completion_ids, **kwargs):
    """Distinct-token count of each completion: differs across random completions."""
    return [len(set(ids)) / 16 for ids in completion_ids]


CORPUS = [f"Tom has {i} apples and buys {i + 3} more. How many apples? \\boxed{{{2 * i + 3}}}" for i in range(200)]


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need CUDA (run them with `make test-gpu` on a GPU machine)")
    from rlkit.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", corpus=CORPUS, hidden_size=256, heads=8,
                            kv_heads=4, layers=2)


def test_cuda_logprobs_and_grads_match_cpu(gpu_model_dir):
    from rlkit.models import load_policy
    from rlkit.parallel.batch import collate
    from rlkit.rollout.base import Sample
    from rlkit.trainers.batch import LogprobPolicy

    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(6):
        ids = torch.randint(5, 300, (4 + i + 7 * (i % 3),), generator=gen).tolist()
        samples.append(Sample(ids[:4], ids[4:], [], "stop", "", i))
    out = {}
    for dev in ("cpu", "cuda"):
        policy = LogprobPolicy(load_policy(str(gpu_model_dir), torch.float32)).to(dev)
        mb = collate(samples, 0).to(dev)
        lp, ent = policy(mb, temperature=0.7, with_entropy=True)
        (lp * mb.completion_mask).sum().backward()
        out[dev] = (lp.detach().cpu(), policy.model.lm_head.weight.grad.cpu())
    assert (out["cpu"][0] - out["cuda"][0]).abs().max() < 1e-3
    assert torch.allclose(out["cpu"][1], out["cuda"][1], atol=1e-3, rtol=1e-3)


def test_two_steps_on_cuda_with_bf16_autocast(gpu_model_dir, tmp_path):
    from safetensors.torch import load_file

    from rlkit.api import train
    from rlkit.config import load_config

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": 2 * i}) + "\n" for i in range(40)))
    cfg = load_config(overrides={
        "model.name_or_path": str(gpu_model_dir), "output_dir": str(tmp_path / "run"), "rollout.engine": "hf",
        "data.train": str(data), "eval.data": str(data), "eval.size": 4, "train.steps": 2,
        "eval.before": False, "eval.after": False, "rollout.max_new_tokens": 16, "optim.lr": 1e-3,
        "rewards": [{"name": "test_cuda:varied_reward"}], "logging.progress": False})
    assert cfg.model.dtype == "auto"
    result = train(cfg)
    assert result.last_metrics["optim/grad_norm"] > 0
    init = load_file(str(gpu_model_dir / "model.safetensors"))
    final = load_file(str(tmp_path / "run" / "checkpoints" / "step_000002" / "policy" / "model.safetensors"))
    assert sum(not torch.equal(init[k], final[k]) for k in init) > len(init) // 2


def test_cuda_packed_equals_padded_and_chunked_equals_reference(gpu_model_dir):
    """Packed rows (in fp32 the per-sequence SDPA loop; bf16 is in test_varlen_attention.py) against padded rows,
    and the chunked LM-head kernel against the plain-torch reference, values and gradients, on CUDA in fp32."""
    from rlkit.kernels.logprobs import chunked_logprobs, reference_logprobs
    from rlkit.models import load_policy
    from rlkit.parallel.batch import collate
    from rlkit.rollout.base import Sample
    from rlkit.trainers.batch import LogprobPolicy

    gen = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randint(5, 300, (6,), generator=gen).tolist(),
                      torch.randint(5, 300, (n,), generator=gen).tolist(), [], "stop", "", i)
               for i, n in enumerate([1, 200, 17, 64, 3])]
    policy = LogprobPolicy(load_policy(str(gpu_model_dir), torch.float32)).to("cuda")
    with torch.no_grad():
        packed, _ = policy(collate(samples, 0, packed=True).to("cuda"), temperature=0.7)
        padded, _ = policy(collate(samples, 0, packed=False).to("cuda"), temperature=0.7)
    assert (packed - padded).abs().max() < 1e-4

    h = torch.randn(3000, 256, device="cuda", dtype=torch.float32, requires_grad=True)
    w = (torch.randn(4096, 256, device="cuda") * 0.05).requires_grad_()
    t = torch.randint(0, 4096, (3000,), device="cuda")
    grads = {}
    for name, fn in (("ref", reference_logprobs), ("chunked", lambda *a: chunked_logprobs(*a, chunk=512))):
        lp, ent = fn(h, w, None, t, 0.8)
        grads[name] = (lp.detach(), ent.detach(), *torch.autograd.grad(lp.sum() + 0.5 * ent.sum(), (h, w)))
    for a, b in zip(grads["ref"], grads["chunked"]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
