"""Long outputs on one device (issue 12): the MLPs in sequence tiles, and checkpointed activations on the CPU.

Tiled MLP (ALST, Bekman et al. arXiv 2506.13996, sec. 3.2; StreamBP's chain-rule split, arXiv 2506.03077 eq. 1).
An MLP is per token, so its output on a row is the concatenation of its outputs on contiguous tiles of the row,
and by the chain rule its parameter gradient is the sum of the tiles' gradients. The forward runs tile by tile
without keeping the intermediate activations (gate, up, act: 3 x intermediate_size per token, the largest
activations of a layer); the backward recomputes each tile with grad enabled and takes its gradient, so only
one tile's intermediates live at a time. Tiles: ceil(tokens / hidden_size), ALST's choice (one tile, i.e. the
plain MLP, below hidden_size tokens). The result is exact up to float summation order of the parameter
gradient over tiles.

Why our own and not DeepSpeed's ``TiledMLP``: rlkit's engines include DDP and FSDP2, where DeepSpeed's version
(which all-reduces the tile count for ZeRO-3) does not apply, and here the MLP parameters are inputs of the
autograd function, so DDP's gradient hooks fire once per parameter as usual. (DeepSpeed itself installs and runs
on every machine rlkit targets, CPU included: ``make setup`` installs it.) With ZeRO-3 / FSDP, whose
hooks gather parameters per module call, ``auto`` leaves the MLPs plain and ``always`` is refused.

Checkpoint offload (ALST sec. 3.3): with gradient checkpointing the tensors kept for backward are the decoder
layers' inputs ([tokens, hidden] each); ``offload_checkpoints`` keeps them in (pinned) CPU memory between
forward and backward. It switches the layers' checkpointing to the re-entrant form, which saves the layer
inputs through ``save_for_backward`` where ``torch.autograd.graph.save_on_cpu`` can move them.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch import nn


class _Tiled(torch.autograd.Function):
    """``fn`` (a per-token module call) over ``tiles`` sequence tiles of ``x`` [..., S, H]; ``params`` are the
    module's trainable parameters, inputs here so that their gradients come out of this function."""

    @staticmethod
    def forward(ctx, fn, tiles: int, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.tiles = fn, tiles
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        # the random state before the first tile: the backward replays the tiles in the same order from it, so a
        # dropout inside the MLP (LoRA dropout) draws the same masks
        ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(x.device) if x.is_cuda else None)
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return torch.cat([fn(t) for t in x.chunk(tiles, dim=-2)], dim=-2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *params = ctx.saved_tensors
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[2] else None
        grad_params = [torch.zeros_like(p) for p in params]
        enabled, dtype = ctx.autocast
        start = 0
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.set_rng_state(ctx.rng[0])
            if x.is_cuda:
                torch.cuda.set_rng_state(ctx.rng[1], x.device)
            for tile, g in zip(x.chunk(ctx.tiles, dim=-2), grad.chunk(ctx.tiles, dim=-2)):
                tile = tile.detach().requires_grad_(grad_x is not None)
                with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
                    out = ctx.fn(tile)
                wrt = ([tile] if grad_x is not None else []) + list(params)
                grads = torch.autograd.grad(out, wrt, g, allow_unused=True)
                if grad_x is not None:
                    grad_x.narrow(-2, start, tile.shape[-2]).copy_(grads[0])
                    grads = grads[1:]
                for total, gp in zip(grad_params, grads):
                    if gp is not None:
                        total.add_(gp)
                start += tile.shape[-2]
        return (None, None, grad_x, *grad_params)


def tiled(fn, x: torch.Tensor, params: list[torch.Tensor], tiles: int) -> torch.Tensor:
    """``fn(x)`` computed in ``tiles`` sequence tiles with a recomputing backward (plain call for one tile). Also
    tiled without grad (a re-entrant checkpoint's first forward), so that its recomputation draws the same
    random numbers in the same order."""
    if tiles <= 1:
        return fn(x)
    return _Tiled.apply(fn, tiles, x, *params)


def _tiled_forward(self, x: torch.Tensor) -> torch.Tensor:
    tiles = -(-x.shape[-2] // self._rlkit_tile)
    params = [p for p in self.parameters() if p.requires_grad]
    return tiled(self._rlkit_plain_forward, x, params, tiles)


def tile_mlps(model: nn.Module, tile_tokens: int | None = None) -> int:
    """Make every decoder layer's ``mlp`` run in tiles of ``tile_tokens`` (default: the hidden size) tokens.
    Returns the number of MLPs changed."""
    config = getattr(model, "config", None)
    tile = tile_tokens or int(config.get_text_config().hidden_size)
    count = 0
    for name, module in model.named_modules():
        if (name == "mlp" or name.endswith(".mlp")) and not hasattr(module, "_rlkit_tile"):
            module._rlkit_tile = tile
            module._rlkit_plain_forward = module.forward
            module.forward = types.MethodType(_tiled_forward, module)
            count += 1
    return count


def offload_context(model: nn.Module):
    """The context to run the forward in: ``save_on_cpu`` when the model offloads checkpointed activations (on a
    CPU-only machine a copy that changes nothing but runs the same path), else nothing."""
    if getattr(model, "_rlkit_offload", False):
        return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
    return contextlib.nullcontext()


def apply(model: nn.Module, cfg, sharded_params: bool = False) -> None:
    """Set up the configured memory savers on a freshly loaded policy. ``sharded_params``: ZeRO-3 / FSDP own the
    parameters (``auto`` then leaves the MLPs plain; ``always`` is refused)."""
    p = cfg.parallel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if p.tiled_mlp == "always" and sharded_params:
        from rlkit.errors import UserError

        raise UserError("'parallel.tiled_mlp: always' cannot run under ZeRO-3 / FSDP (their hooks gather parameters "
                        "per module call); use auto or never")
    if p.tiled_mlp == "always" or (p.tiled_mlp == "auto" and cfg.model.gradient_checkpointing and not sharded_params):
        tile_mlps(base)
    if p.offload_checkpoints:
        if cfg.model.gradient_checkpointing:  # re-entrant: the layer inputs go through save_for_backward
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        base._rlkit_offload = True
