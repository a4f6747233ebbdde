"""transformers-`generate` engine for platforms without vLLM. It samples from the training model
itself (shared weights), so `update_weights` only bumps the version.

Under ZeRO-3 or FSDP2 (``lockstep``) every module call gathers its parameters with a collective, so every process
must run the same forwards: generation uses ``synced_gpus`` (a process that is done keeps stepping until all are)
and every process makes the same number of ``generate`` calls (a process with fewer prompts runs one-token
stand-ins, discarded). ``context`` (FSDP2: the root's own parameters whole) wraps each call."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable

import torch

from rlkit.records import Sample
from rlkit.rollout.base import EngineBase, SamplingSpec, engine_sample, per_prompt_specs


class HFEngine(EngineBase):
    def __init__(self, model, tokenizer, batch_size: int = 64, *, lockstep: bool = False,
                 context: Callable[[], contextlib.AbstractContextManager] | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.lockstep, self.context = lockstep, context or contextlib.nullcontext
        self.version = 0

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        # the calls: chunks of prompts that share a spec (one spec per prompt: one call per prompt, group ids
        # renumbered to the prompt index)
        if isinstance(spec, SamplingSpec):
            per_call = max(1, self.batch_size // max(spec.n, 1))
            calls = [(list(range(s, min(s + per_call, len(prompts)))), spec) for s in range(0, len(prompts), per_call)]
        else:
            calls = [([k], s) for k, s in enumerate(per_prompt_specs(spec, len(prompts)))]
        samples = []
        for idx, s in calls:
            samples += [dataclasses.replace(x, group_id=idx[x.group_id]) for x in self._generate([prompts[k] for k in idx], s)]
        if self.lockstep:  # stand-in calls, so that every process runs as many generate() as the busiest one
            for _ in range(self._most_calls(len(calls)) - len(calls)):
                self._generate([[self.tokenizer.eos_token_id]], SamplingSpec(n=1, max_new_tokens=1, temperature=0.0, logprobs=False))
        return samples

    @staticmethod
    def _most_calls(n: int) -> int:
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()):
            return n
        t = torch.tensor([n])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t)

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        """One generate() call over ``prompts`` (left-padded). Sampling draws from the process's torch RNG (seeded
        per process at start-up, restored on resume): transformers' generate takes no per-request seed."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            att[i, width - len(p):] = 1
        greedy = spec.temperature == 0
        with self.context():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=att.to(device), do_sample=not greedy,
                temperature=None if greedy else spec.temperature, top_p=None if greedy else spec.top_p,
                top_k=None if greedy or spec.top_k <= 0 else spec.top_k, max_new_tokens=spec.max_new_tokens,
                num_return_sequences=spec.n, output_scores=spec.logprobs, return_dict_in_generate=True,
                pad_token_id=pad, eos_token_id=eos, synced_gpus=self.lockstep)
        new = out.sequences[:, width:].cpu()
        scores = torch.stack(out.scores, 1).float().log_softmax(-1).cpu() if spec.logprobs else None
        samples: list[Sample] = []
        for row in range(new.shape[0]):
            toks = new[row].tolist()
            end = toks.index(eos) + 1 if eos in toks else len(toks)
            toks = toks[:end]
            lps = scores[row, torch.arange(end), torch.tensor(toks)].tolist() if scores is not None else []
            k = row // spec.n
            samples.append(engine_sample(prompts[k], toks, lps, stopped=bool(toks) and toks[-1] == eos,
                                         text=self.tokenizer.decode(toks, skip_special_tokens=True), group=k,
                                         version=self.version))
        model.train(was_training)
        return samples

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.version += 1  # weights are shared with the trainer
