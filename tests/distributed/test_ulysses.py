"""Ulysses sequence parallelism (rlkit.kernels.ulysses) on 2 gloo processes against 1 process."""

import torch
from test_ddp import HERE  # same directory (pytest puts it on sys.path)
from test_ddp import _torchrun as torchrun

from rlkit.kernels.ulysses import shard_bounds, shard_row


def test_shards_cover_the_padded_row_once():
    row = torch.arange(1, 8).unsqueeze(0)  # 7 tokens over 3 ranks: shards of 3, 2 padding tokens at the end
    assert [shard_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 6), (6, 9)]
    parts = [shard_row(row, 3, r, pad=0) for r in range(3)]
    assert torch.cat(parts, dim=1).tolist() == [[1, 2, 3, 4, 5, 6, 7, 0, 0]]


def test_two_process_ulysses_equals_one_process(tmp_path):
    """A packed row of 4 samples (one of 1 token, one crossing the shard boundary) through a Qwen2 with split KV
    heads and a Llama shape with one KV head repeated: logprobs, entropies and parameter gradients equal."""
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"ulysses_{nproc}.pt"
        proc = torchrun(nproc, str(HERE / "ulysses_check.py"), str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[nproc] = torch.load(out)
    for kind in ("qwen2", "llama"):
        one, two = outs[1][kind], outs[2][kind]
        assert (one["logprobs"] - two["logprobs"]).abs().max() <= 1e-5, kind
        assert (one["entropy"] - two["entropy"]).abs().max() <= 1e-5, kind
        worst = max((one["grads"][n] - two["grads"][n]).abs().max().item() for n in one["grads"])
        assert worst <= 1e-5, f"{kind}: gradients differ by {worst}"
        assert all(g.abs().sum() > 0 for n, g in one["grads"].items() if "layers" in n)  # every layer learns
