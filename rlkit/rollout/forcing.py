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

``BudgetForcing`` is the one implementation of the mechanics, shared with ``rlkit eval --budgets`` and the training
run's held-out check at ``eval.budgets`` (rlkit.evals.budgets): the phrase tokenised once, the answers
generated in one engine call from each cut sample + the phrase, and the joined completion. One default phrase and
one answer allowance: ``rollout.budget_forcing.phrase`` and ``.answer_tokens`` (rlkit.config).

Metrics: ``forcing/forced_frac`` (samples that reached their budget), ``forcing/injected_tokens`` (tokens masked
out of the loss), ``forcing/budget_mean``.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.rollout.base import Rollout, RolloutEngine, SamplingSpec, phrase_ids


@dataclass
class BudgetForcing:
    """Budgets (sorted, unique), the phrase injected at a budget and its tokens (no special tokens), the answer
    allowance after it, and ``decode`` (token ids -> text, for a sample cut inside what it generated)."""

    budgets: tuple[int, ...]
    phrase: str
    phrase_ids: list[int]
    answer_tokens: int
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self):
        self.budgets = tuple(sorted(set(self.budgets)))
        self.phrase_ids = list(self.phrase_ids)

    @classmethod
    def for_tokenizer(cls, budgets, phrase: str, answer_tokens: int, tokenizer) -> BudgetForcing:
        """The forcing with ``phrase`` tokenised by ``tokenizer`` (no special tokens) and its decode."""
        return cls(tuple(budgets), phrase, phrase_ids(tokenizer, phrase), answer_tokens,
                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def largest(self) -> int:
        return self.budgets[-1]

    def fits(self, room: int) -> bool:
        """The phrase and the answer allowance fit in ``room`` tokens (an evaluation cuts a sample at a smaller
        budget inside the context of the largest: rlkit.config.CONTEXT_ROOM tokens beyond it)."""
        return bool(self.phrase_ids) and self.answer_tokens >= 1 and len(self.phrase_ids) + self.answer_tokens <= room

    def answers(self, engine: RolloutEngine, contexts: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        """One engine call: each context (prompt + the cut completion) + the phrase, continued for at most
        ``answer_tokens`` with ``spec``'s sampling (one answer each)."""
        answer = dataclasses.replace(spec, n=1, max_new_tokens=self.answer_tokens)
        return engine.generate([list(c) + self.phrase_ids for c in contexts], answer)

    def joined(self, sample: Sample, cut: int, tail: Sample, *, trace: bool) -> Sample:
        """``sample`` cut after ``cut`` tokens, the phrase and the answer ``tail``, as one completion. ``trace``
        (training): keep the per-token logprobs and policy versions (placeholders on the phrase, which nothing
        reads) and mark the phrase ``injected`` (never trained); without it (evaluation) they are dropped. The
        thinking split is dropped too (a new completion: it is annotated after forcing, rlkit.rollout.thinking)."""
        head = sample.completion_ids[:cut]
        text = sample.text if cut >= sample.num_tokens else self.decode(head)
        ids = head + self.phrase_ids + list(tail.completion_ids)
        if not trace:
            return dataclasses.replace(sample, completion_ids=ids, logprobs=[], finish_reason=tail.finish_reason,
                                       text=text + self.phrase + tail.text, versions=[], segments=[],
                                       think_tokens=None)
        k = len(self.phrase_ids)
        version = tail.versions[0] if tail.versions else (sample.versions[-1] if sample.versions else 0)
        return dataclasses.replace(
            sample, completion_ids=ids, finish_reason=tail.finish_reason, text=text + self.phrase + tail.text,
            logprobs=sample.logprobs[:cut] + [0.0] * k + tail.logprobs if sample.logprobs else [],
            versions=sample.versions[:cut] + [version] * k + tail.versions if sample.versions else [],
            injected=list(range(cut, cut + k)), think_tokens=None)


class ForcedRollout(Rollout):
    """Budget-forced rollouts (module doc): each prompt's samples generated under its drawn budget, those that reach
    it continued after the phrase with the same sampling settings."""

    def __init__(self, engine: RolloutEngine, forcing: BudgetForcing, seed: int):
        super().__init__(engine)
        self.forcing, self.seed = forcing, seed

    def budget_of(self, prompt: Prompt, step: int) -> int:
        key = zlib.crc32(",".join(map(str, prompt.ids)).encode())
        budgets = self.forcing.budgets
        return budgets[random.Random(f"{self.seed}:{step}:{key}").randrange(len(budgets))]

    def __call__(self, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        budgets = [self.budget_of(p, step) for p in prompts]
        self.engine.wake()
        samples = self.engine.generate([p.ids for p in prompts],
                                       [dataclasses.replace(spec, max_new_tokens=b) for b in budgets])
        todo = [i for i, s in enumerate(samples) if s.finish_reason == "length"]
        if todo:
            tails = self.forcing.answers(self.engine, [samples[i].prompt_ids + samples[i].completion_ids
                                                       for i in todo], spec)
            for i, tail in zip(todo, tails):
                samples[i] = self.forcing.joined(samples[i], samples[i].num_tokens, tail, trace=True)
        self.engine.sleep()
        return StepBatch(prompts, samples, metrics={
            "forcing/forced_frac": len(todo) / max(len(samples), 1),
            "forcing/injected_tokens": float(len(todo) * len(self.forcing.phrase_ids)),
            "forcing/budget_mean": sum(budgets) / max(len(budgets), 1)})
