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

from rlkit.config import BudgetForcingConfig
from rlkit.records import Prompt, Sample, StepBatch
from rlkit.registry import register
from rlkit.rollout.base import RolloutEngine, SamplingSpec, phrase_ids
from rlkit.rollout.hooks import HookContext, HookedRollout, join_continuation


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
        """``sample`` cut after ``cut`` tokens, the phrase and the answer ``tail``, as one completion
        (rlkit.rollout.hooks.join_continuation: ``trace`` keeps the logprobs and marks the phrase injected)."""
        return join_continuation(sample, cut, self.phrase_ids, self.phrase, tail, trace=trace, decode=self.decode)


DEFAULTS = BudgetForcingConfig()  # one default phrase and answer allowance (rollout.budget_forcing)


@register("rollout_hook", "budget_forcing", options=("budgets", "phrase", "answer_tokens"))
class BudgetForcingHook:
    """Budget forcing as a rollout hook (module doc): each prompt's samples generated under its drawn budget, those
    that reach it continued after the phrase with the same sampling settings. ``rollout.budget_forcing.budgets``
    configures it (or ``rollout_hook: {name: budget_forcing, kwargs: {budgets, phrase, answer_tokens}}``)."""

    def __init__(self, budgets: tuple = (), phrase: str = DEFAULTS.phrase, answer_tokens: int = DEFAULTS.answer_tokens,
                 forcing: BudgetForcing | None = None):
        if forcing is None and not budgets:
            raise ValueError("budget_forcing needs budgets")
        self.forcing = forcing
        self.options = (tuple(budgets), phrase, int(answer_tokens))

    def _ready(self, ctx: HookContext) -> BudgetForcing:
        if self.forcing is None:
            budgets, phrase, answer_tokens = self.options
            self.forcing = BudgetForcing.for_tokenizer(budgets, phrase, answer_tokens, ctx.tokenizer)
        return self.forcing

    @staticmethod
    def budget_of(forcing: BudgetForcing, prompt: Prompt, step: int, seed: int) -> int:
        key = zlib.crc32(",".join(map(str, prompt.ids)).encode())
        return forcing.budgets[random.Random(f"{seed}:{step}:{key}").randrange(len(forcing.budgets))]

    def __call__(self, ctx: HookContext, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        forcing = self._ready(ctx)
        budgets = [self.budget_of(forcing, p, step, ctx.seed) for p in prompts]
        samples = ctx.engine.generate([p.ids for p in prompts],
                                      [dataclasses.replace(spec, max_new_tokens=b) for b in budgets])
        todo = [i for i, s in enumerate(samples) if s.finish_reason == "length"]
        # one answer call even when no sample reached its budget: lockstep engines need every process to call
        tails = forcing.answers(ctx.engine, [samples[i].prompt_ids + samples[i].completion_ids for i in todo], spec)
        for i, tail in zip(todo, tails):
            samples[i] = forcing.joined(samples[i], samples[i].num_tokens, tail, trace=True)
        return StepBatch(prompts, samples, metrics={
            "forcing/forced_frac": len(todo) / max(len(samples), 1),
            "forcing/injected_tokens": float(len(todo) * len(forcing.phrase_ids)),
            "forcing/budget_mean": sum(budgets) / max(len(budgets), 1)})


class ForcedRollout(HookedRollout):
    """The rollout of the budget_forcing hook with a ready ``BudgetForcing`` (tests and scripts)."""

    def __init__(self, engine: RolloutEngine, forcing: BudgetForcing, seed: int):
        super().__init__(engine, BudgetForcingHook(forcing=forcing), None, seed)

    def budget_of(self, prompt: Prompt, step: int) -> int:
        return BudgetForcingHook.budget_of(self.hook.forcing, prompt, step, self.ctx.seed)
