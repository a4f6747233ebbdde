"""Long-output memory savers (rlkit.kernels.memory): tiled MLPs and checkpoint offload give the same logprobs and
gradients as the plain model."""

import copy
from types import SimpleNamespace

import pytest
import torch

from rlkit.kernels import memory
from rlkit.parallel.batch import collate
from rlkit.records import Sample
from rlkit.trainers.batch import LogprobPolicy


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).float()


def _batch():
    gen = torch.Generator().manual_seed(1)
    samples = []
    for p, c in ((4, 30), (3, 9), (6, 21)):
        ids = torch.randint(1, 64, (p + c,), generator=gen).tolist()
        samples.append(Sample(ids[:p], ids[p:], [0.0] * c, "stop", "", 0))
    return collate(samples, pad_id=0), torch.randn(3, 30, generator=gen)


def _run(model):
    policy = LogprobPolicy(model)
    mb, weights = _batch()
    lp, ent = policy(mb, with_entropy=True)
    (lp * weights[:, :lp.shape[1]]).sum().backward()
    return lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}


def _config(tiled="never", checkpointing=False, offload=False):
    return SimpleNamespace(parallel=SimpleNamespace(tiled_mlp=tiled, offload_checkpoints=offload),
                           model=SimpleNamespace(gradient_checkpointing=checkpointing))


@pytest.mark.parametrize("checkpointing,offload", [(False, False), (True, False), (True, True)])
def test_tiled_mlp_and_offload_give_the_plain_model_gradients(checkpointing, offload):
    plain = _model()
    ref_lp, ref_ent, ref_grads = _run(plain)
    model = copy.deepcopy(plain)
    for p in model.parameters():
        p.grad = None
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    memory.apply(model, _config("auto", checkpointing, offload))
    if not checkpointing:  # auto tiles only with checkpointing: here force tiles of 8 tokens (9 tiles per row)
        assert memory.tile_mlps(model, tile_tokens=8) == 2
    else:
        assert all(getattr(layer.mlp, "_rlkit_tile", 0) == 32 for layer in model.model.layers)
        for layer in model.model.layers:  # smaller tiles than the hidden size, so that the 73-token row has several
            layer.mlp._rlkit_tile = 8
    calls = []
    original = memory._Tiled.backward
    memory._Tiled.backward = staticmethod(lambda ctx, g: calls.append(ctx.tiles) or original(ctx, g))
    try:
        lp, ent, grads = _run(model)
    finally:
        memory._Tiled.backward = staticmethod(original)
    assert calls and all(t == 10 for t in calls)  # the tiled backward ran (73 tokens / 8 = 10 tiles)
    assert torch.allclose(lp, ref_lp, atol=1e-6) and torch.allclose(ent, ref_ent, atol=1e-6)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-6, rtol=1e-5), name


def test_auto_tiles_only_with_checkpointing_and_never_never_tiles():
    for tiled, checkpointing, expect in (("auto", False, False), ("auto", True, True), ("never", True, False),
                                         ("always", False, True)):
        model = _model()
        memory.apply(model, _config(tiled, checkpointing))
        assert hasattr(model.model.layers[0].mlp, "_rlkit_tile") == expect, (tiled, checkpointing)


def test_a_tiled_mlp_with_dropout_replays_the_forward_masks_in_backward():
    """LoRA dropout sits inside the MLP: the backward's recomputed tiles must draw the masks the forward drew."""
    from torch import nn

    torch.manual_seed(0)
    holder = nn.Module()
    holder.mlp = nn.Sequential(nn.Linear(16, 48), nn.Dropout(0.5), nn.GELU(), nn.Linear(48, 16))
    holder.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(hidden_size=16))
    x = torch.randn(1, 40, 16, requires_grad=True)
    w = torch.randn(1, 40, 16)
    plain = copy.deepcopy(holder.mlp)
    assert memory.tile_mlps(holder, tile_tokens=8) == 1
    torch.manual_seed(5)
    (holder.mlp(x) * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    torch.manual_seed(5)  # the same draws, tile by tile, with autograd recording
    (torch.cat([plain(t) for t in x_ref.chunk(5, dim=1)], dim=1) * w).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    for (name, p), q in zip(holder.mlp.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
