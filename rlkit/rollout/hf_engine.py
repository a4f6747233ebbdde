"""transformers-`generate` engine for platforms without vLLM. It samples from the training model
itself (shared weights), so `update_weights` only bumps the version."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from rlkit.records import Sample
from rlkit.rollout.base import SamplingSpec, per_prompt_specs


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.version = 0

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        if isinstance(spec, SamplingSpec):
            return self._generate(prompts, spec)
        samples = []  # one spec per prompt: one call per prompt, group ids renumbered to the prompt index
        for k, (p, s) in enumerate(zip(prompts, per_prompt_specs(spec, len(prompts)))):
            samples += [dataclasses.replace(x, group_id=k) for x in self._generate([p], s)]
        return samples

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        gen = torch.Generator(device=device)
        if spec.seed is not None:
            gen.manual_seed(spec.seed)
        samples: list[Sample] = []
        for start in range(0, len(prompts), max(1, self.batch_size // max(spec.n, 1))):
            chunk = prompts[start:start + max(1, self.batch_size // max(spec.n, 1))]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):  # left padding
                ids[i, width - len(p):] = torch.tensor(p)
                att[i, width - len(p):] = 1
            greedy = spec.temperature == 0
            out = model.generate(
                input_ids=ids.to(device), attention_mask=att.to(device), do_sample=not greedy,
                temperature=None if greedy else spec.temperature, top_p=None if greedy else spec.top_p,
                top_k=None if greedy or spec.top_k <= 0 else spec.top_k, max_new_tokens=spec.max_new_tokens,
                num_return_sequences=spec.n, output_scores=spec.logprobs, return_dict_in_generate=True,
                pad_token_id=pad, eos_token_id=eos)
            new = out.sequences[:, width:].cpu()
            scores = torch.stack(out.scores, 1).float().log_softmax(-1).cpu() if spec.logprobs else None
            for row in range(new.shape[0]):
                toks = new[row].tolist()
                end = toks.index(eos) + 1 if eos in toks else len(toks)
                toks = toks[:end]
                lps = scores[row, torch.arange(end), torch.tensor(toks)].tolist() if scores is not None else []
                k = start + row // spec.n
                samples.append(Sample(prompt_ids=list(prompts[k]), completion_ids=toks, logprobs=lps,
                                      finish_reason="stop" if toks and toks[-1] == eos else "length",
                                      text=self.tokenizer.decode(toks, skip_special_tokens=True), group_id=k,
                                      versions=[self.version] * len(toks)))
        model.train(was_training)
        return samples

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.version += 1  # weights are shared with the trainer

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass
