"""Run under torchrun: a packed row through a tiny model with Ulysses SP over all ranks (or none on 1 rank).

Writes (rank 0) the per-token logprobs and entropies of the whole row and the parameter gradients of a
weighted logprob sum, for a Qwen2 (4 heads, 2 KV heads: KV heads split) and a Llama shape (4 heads, 1 KV
head: KV heads repeated) and a Qwen2 of 6 heads and 2 KV heads with head_dim 32 (on 4 ranks: 6 heads do not divide
by 4 and are padded), so the test can compare SP = world with one process.
"""

import os
import sys

import torch
import torch.distributed as dist

from rlkit.kernels.logprobs import logprobs_from_logits
from rlkit.kernels.packing import pack_sequences
from rlkit.parallel import ulysses

LENGTHS = [5, 1, 13, 9]  # 28 tokens: the 13-token sample crosses the 2-way shard boundary; one sample of 1


def build(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, attn_implementation=ulysses.register())
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common)).float()
    if kind == "qwen2_6h":
        common.update(hidden_size=192, num_attention_heads=6)
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common)).float()
    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=1, **common)).float()


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world))) if world > 1 else None
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in LENGTHS]
    ids, pos, cu, longest = pack_sequences(seqs)
    labels = torch.roll(ids, -1, dims=1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, cu[1:] - 1] = False  # the last token of each sequence predicts nothing
    weights = torch.randn(ids.shape, generator=gen) * valid
    result = {}
    for kind in ("qwen2", "llama", "qwen2_6h"):
        model = build(kind)
        shard = [ulysses.shard_row(t, world, rank) for t in (ids, pos, labels, weights)]
        logits = model(input_ids=shard[0], position_ids=shard[1], cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                       max_length_q=longest, max_length_k=longest, use_cache=False, sp_group=group).logits[0]
        lp, ent = logprobs_from_logits(logits, shard[2][0], 1.0)
        (lp * shard[3][0]).sum().backward()
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad.clone()
            if world > 1:
                dist.all_reduce(g)
            grads[name] = g
        rows = []
        for t in (lp.detach(), ent.detach()):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            rows.append(torch.cat(parts)[:ids.shape[1]] * valid[0])
        result[kind] = {"logprobs": rows[0], "entropy": rows[1], "grads": grads}
    if rank == 0:
        torch.save(result, out)
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
    # leave without interpreter teardown: the results are written and every rank is past the barrier, and
    # gloo's threads can abort the process while being torn down ("terminate called without an active
    # exception", seen intermittently on the 2-core CI machine), which would fail a finished check
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
