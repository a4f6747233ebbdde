"""Budget-forced rollouts (``rollout.budget_forcing``): a thinking budget per prompt, then an injected phrase and a
short answer (s1's budget forcing, Muennighoff et al. arXiv 2501.19393; ScaleRL's forced interruptions, Khatri et
al. arXiv 2510.13786; Elastic Reasoning's separate thinking and solution budgets, arXiv 2505.05315).

Each prompt gets a budget B drawn uniformly from ``budgets`` (a pure function of the seed, the step and the prompt's
tokens: no state, so a resumed run draws the same ones). Its samples are generated with at most B new tokens; a
sample that reaches B without ending gets ``phrase`` appended (tokenised once, no special tokens) and continues
for at most ``answer_tokens`` in one more engine call (the same sampling settings), so a completion is at most
B + phrase + answer_tokens <= rollout.max_new_tokens tokens. The phrase's positions are recorded in
``Sample.injected``: the reward reads the whole text, the loss mask is 0 there (rlkit.trainers.update.prepare_tokens),
and their behaviour logprobs are placeholders that nothing reads. Works with every engine that takes per-prompt
sampling specs and token-id prompts (all of rlkit's), and under asynchronous rollouts (the wrapper runs inside
the generation job).

Metrics: ``forcing/forced_frac`` (samples that reached their budget), ``forcing/injected_tokens`` (tokens masked
out of the loss), ``forcing/budget_mean``.
"""

from __future__ import annotations

import dataclasses
import random
import zlib

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rollout.base import RolloutEngine, SamplingSpec
from rlkit.rollout.factory import Rollout


class ForcedRollout(Rollout):
    def __init__(self, engine: RolloutEngine, budgets: list[int], phrase: str, phrase_ids: list[int],
                 answer_tokens: int, seed: int):
        super().__init__(engine)
        self.budgets, self.phrase, self.phrase_ids = sorted(budgets), phrase, list(phrase_ids)
        self.answer_tokens, self.seed = answer_tokens, seed

    def budget_of(self, prompt: Prompt, step: int) -> int:
        key = zlib.crc32(",".join(map(str, prompt.ids)).encode())
        return self.budgets[random.Random(f"{self.seed}:{step}:{key}").randrange(len(self.budgets))]

    def __call__(self, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        budgets = [self.budget_of(p, step) for p in prompts]
        self.engine.wake()
        samples = self.engine.generate([p.ids for p in prompts],
                                       [dataclasses.replace(spec, max_new_tokens=b) for b in budgets])
        todo = [i for i, s in enumerate(samples) if s.finish_reason == "length"]
        if todo:
            answer = dataclasses.replace(spec, n=1, max_new_tokens=self.answer_tokens)
            tails = self.engine.generate([samples[i].prompt_ids + samples[i].completion_ids + self.phrase_ids
                                          for i in todo], answer)
            for i, tail in zip(todo, tails):
                samples[i] = self._joined(samples[i], tail)
        self.engine.sleep()
        return StepBatch(prompts, samples, metrics={
            "forcing/forced_frac": len(todo) / max(len(samples), 1),
            "forcing/injected_tokens": float(len(todo) * len(self.phrase_ids)),
            "forcing/budget_mean": sum(budgets) / max(len(budgets), 1)})

    def _joined(self, head: Sample, tail: Sample) -> Sample:
        """The sample up to its budget, the phrase (injected) and the answer, as one completion."""
        n, k = head.num_tokens, len(self.phrase_ids)
        version = tail.versions[0] if tail.versions else (head.versions[-1] if head.versions else 0)
        return dataclasses.replace(
            head, completion_ids=head.completion_ids + self.phrase_ids + tail.completion_ids,
            logprobs=head.logprobs + [0.0] * k + tail.logprobs if head.logprobs else [],
            finish_reason=tail.finish_reason, text=head.text + self.phrase + tail.text,
            versions=head.versions + [version] * k + tail.versions if head.versions else [],
            injected=list(range(n, n + k)))
