"""Rollout hooks: what happens during generation, as registered components (kind ``rollout_hook``, config key
``rollout_hook: {name, kwargs}``; entry-point group ``rlkit.rollout_hooks``).

A hook is called once per generation round instead of the plain engine call::

    hook(ctx: HookContext, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch

and returns the round's groups (``spec.n`` samples per prompt, ``group_id`` = the prompt's index). It generates
through ``ctx`` only, whose helpers keep the record straight:

- ``ctx.continue_after(samples, cuts, inject, spec)``: each sample cut after ``cuts[i]`` completion tokens, the
  ``inject`` tokens appended and the continuation generated (one engine call); the joined completion lists the
  injected positions in ``Sample.injected`` (the reward reads them, the loss mask is 0 there) and keeps the engine's
  logprobs of every token the policy generated, before and after the injection;
- ``ctx.prefilled(prompts, prefixes, spec)``: generation from each prompt + a prefix the hook writes at the head of
  the completion (HBPO's budget announcement), the prefix injected the same way.

So the importance ratio stays right: every generated token's behaviour logprob is the engine's, taken in the
context the policy saw (injected tokens included), and the trainer's old and current logprobs are computed over
the same completion (tests/integration/test_rollout_hooks.py compares them). A hook declares ``group_divisor``
(rlkit.registry.HookCaps) when it splits a group; tags it writes to ``Sample.tags`` reach the rewards as per-sample
columns (HBPO's ``budget``).

Built-in hooks: ``budget_forcing`` (rlkit.rollout.forcing; ``rollout.budget_forcing`` configures it),
``traac_compression`` (rlkit.rollout.traac), and here ``jet_truncation`` (JET) and ``hbpo_budgets`` (HBPO).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.registry import hooks as hooks_of
from rlkit.registry import register
from rlkit.rollout.base import Rollout, RolloutEngine, SamplingSpec, phrase_ids


def join_continuation(sample: Sample, cut: int, inject_ids: list[int], inject_text: str, tail: Sample, *,
                      trace: bool, decode: Callable[[list[int]], str] | None) -> Sample:
    """``sample`` cut after ``cut`` completion tokens, then ``inject_ids`` (``inject_text``), then the generated
    ``tail``, as one completion: the one way a continuation is joined (budget forcing, JET's branches). ``trace``
    (training): keep the per-token logprobs and policy versions (placeholders 0.0 on the injected tokens, which
    nothing reads) and mark the injected positions (never trained); without it (evaluation) they are dropped. The
    thinking split is dropped too (a new completion: annotated after the hook, rlkit.rollout.thinking)."""
    cut = max(0, min(cut, sample.num_tokens))
    head = sample.completion_ids[:cut]
    text = sample.text if cut >= sample.num_tokens else decode(head)
    ids = head + list(inject_ids) + list(tail.completion_ids)
    if not trace:
        return dataclasses.replace(sample, completion_ids=ids, logprobs=[], finish_reason=tail.finish_reason,
                                   text=text + inject_text + tail.text, versions=[], segments=[], think_tokens=None)
    k = len(inject_ids)
    version = tail.versions[0] if tail.versions else (sample.versions[-1] if sample.versions else 0)
    return dataclasses.replace(
        sample, completion_ids=ids, finish_reason=tail.finish_reason, text=text + inject_text + tail.text,
        logprobs=sample.logprobs[:cut] + [0.0] * k + tail.logprobs if sample.logprobs or tail.logprobs else [],
        versions=sample.versions[:cut] + [version] * k + tail.versions if sample.versions or tail.versions else [],
        injected=[j for j in sample.injected if j < cut] + list(range(cut, cut + k)), think_tokens=None)


@dataclass
class HookContext:
    """What a hook generates with: the engine, the tokenizer's encode / decode, the run's seed, the policy's starting
    model (``model_path``: a hook that scores with a frozen copy loads it, on ``device``) and
    ``verify(prompts, samples)``, the run's
    correctness term on samples the hook generated (a list of 0/1 or None; None when the run has no correctness
    term: a hook that needs it declares ``needs_verifier``)."""

    engine: RolloutEngine
    tokenizer: Any
    seed: int = 0
    model_path: str = ""
    verify: Callable[[list[Prompt], list[Sample]], list] | None = None
    device: Any = None  # where a hook's own model (a scorer) runs: the run's device

    def encode(self, text: str) -> list[int]:
        """``text`` as tokens, no special tokens (a phrase the hook injects: rlkit.rollout.base.phrase_ids)."""
        return phrase_ids(self.tokenizer, text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def continue_after(self, samples: list[Sample], cuts: list[int], inject: str | list[int], spec: SamplingSpec,
                       max_new_tokens: int | list[int]) -> list[Sample]:
        """Each sample cut after ``cuts[i]`` tokens, ``inject`` (a text, or its token ids) appended and continued for
        at most ``max_new_tokens`` (one cap, or one per sample; at least 1) with ``spec``'s sampling, one continuation
        each, each request with its own seed, in one engine call. The call is made even with no sample: an engine
        whose processes generate in lockstep (the hf engine under ZeRO-3 / FSDP2) needs every process to call."""
        ids = self.encode(inject) if isinstance(inject, str) else list(inject)
        text = inject if isinstance(inject, str) else self.decode(ids)
        caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(samples)
        specs = [dataclasses.replace(spec, n=1, max_new_tokens=max(1, int(m)),
                                     seed=None if spec.seed is None else spec.seed + 7919 * (j + 1))
                 for j, m in enumerate(caps)]
        tails = self.engine.generate([s.prompt_ids + s.completion_ids[:c] + ids for s, c in zip(samples, cuts)], specs)
        return [join_continuation(s, c, ids, text, t, trace=True, decode=self.decode)
                for s, c, t in zip(samples, cuts, tails)]

    def prefilled(self, prompts: list[list[int]], prefixes: list[str], specs: list[SamplingSpec]) -> list[Sample]:
        """``specs[k].n`` samples from each prompt + ``prefixes[k]`` (tokenised), the prefix the head of every
        completion (injected), ``group_id`` k."""
        heads = [self.encode(p) for p in prefixes]
        specs = [dataclasses.replace(s, max_new_tokens=max(1, s.max_new_tokens - len(h))) for s, h in zip(specs, heads)]
        out = self.engine.generate([list(p) + h for p, h in zip(prompts, heads)], specs)
        for s in out:
            s.prompt_ids = list(prompts[s.group_id])
        return [join_continuation(dataclasses.replace(s, completion_ids=[], logprobs=[], versions=[], text=""), 0,
                                  heads[s.group_id], prefixes[s.group_id], s, trace=True, decode=self.decode)
                for s in out]


class HookedRollout(Rollout):
    """The rollout of a configured hook: the hook generates each round through a HookContext."""

    def __init__(self, engine: RolloutEngine, hook, tokenizer, seed: int, *, model_path: str = "", verify=None,
                 device=None):
        super().__init__(engine)
        self.hook, self.ctx = hook, HookContext(engine, tokenizer, seed, model_path, verify, device)

    def __call__(self, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        self.engine.wake()
        try:
            batch = self.hook(self.ctx, prompts, spec, step)
        finally:
            self.engine.sleep()
        check_hook_batch(batch, len(prompts), spec, type(self.hook).__name__)
        return batch

    def state_dict(self) -> dict:
        """The hook's own state (``state_dict``, when it has one), saved with the rollout's in every checkpoint."""
        return {"hook": self.hook.state_dict()} if "state_dict" in hooks_of(self.hook) else {}

    def load_state_dict(self, state: dict) -> None:
        if "hook" in state and "load_state_dict" in hooks_of(self.hook):
            self.hook.load_state_dict(state["hook"])


def check_hook_batch(batch: StepBatch, n_prompts: int, spec: SamplingSpec, name: str) -> None:
    """What a hook returned holds ``spec.n`` samples per prompt in group order, a logprob per token (or none), and
    injected positions inside the completion; a ValueError names the hook, the sample and what is wrong."""
    if len(batch.prompts) != n_prompts or len(batch.samples) != n_prompts * spec.n:
        raise ValueError(f"rollout hook {name} returned {len(batch.samples)} samples of {len(batch.prompts)} prompts; "
                         f"expected {spec.n} for each of the {n_prompts} prompts (rollout.group_size)")
    for i, s in enumerate(batch.samples):
        if s.group_id != i // spec.n:
            raise ValueError(f"rollout hook {name}: sample {i} has group_id {s.group_id}, expected {i // spec.n} "
                             "(each prompt's samples together, in prompt order)")
        if s.logprobs and len(s.logprobs) != s.num_tokens:
            raise ValueError(f"rollout hook {name}: sample {i} has {len(s.logprobs)} logprobs for {s.num_tokens} "
                             "completion tokens")
        if any(not 0 <= j < s.num_tokens for j in s.injected):
            raise ValueError(f"rollout hook {name}: sample {i} marks injected positions outside its "
                             f"{s.num_tokens} completion tokens")


def _grouped(samples: list[Sample]) -> list[Sample]:
    """Samples in group order (a stable sort by group id): a hook returns each prompt's group together."""
    return sorted(samples, key=lambda s: s.group_id)


JET_PHRASE = "\n\nWait, I have enough information to get the final answer.</think>\n\nTherefore, the final answer is \\boxed{"


@register("rollout_hook", "jet_truncation")
class JETTruncation:
    """JET (Just-Enough Thinking, Han et al. arXiv 2509.23392; released code JinyiHan99/Just-Enough-Think,
    EasyR1/verl/workers/rollout/vllm_rollout_spmd.py ``generate_sequences``): of each group of G, G / (1 + k)
    completions are sampled in full; each is cut at the k ``ratios`` of its length, ``phrase`` is appended (the
    thinking closed, an answer asked for) and the model answers in at most ``answer_tokens``; the group is the full
    completions and their k cuts each (released: 2 full x 0.1, 0.3, 0.5, 0.7, 0.9 = 12). The shortest correct
    answers are rewarded by the ``jet_shortest`` shaper.
    Deviations: the cuts are at token positions, max(1, floor(r L)) of the L completion tokens (released: characters
    of the decoded text, then re-tokenised, which loses the engine's logprobs); the phrase is injected (masked out of
    the loss; released: trained on as if sampled); no EOS is appended to a truncated completion."""

    group_divisor = 6  # 1 + len(ratios), set per instance

    def __init__(self, ratios: tuple = (0.1, 0.3, 0.5, 0.7, 0.9), phrase: str = JET_PHRASE, answer_tokens: int = 50):
        ratios = tuple(float(r) for r in ratios)
        if not ratios or not all(0 < r < 1 for r in ratios):
            raise ValueError(f"ratios must be fractions in (0, 1), got {list(ratios)}")
        if answer_tokens < 1 or not phrase:
            raise ValueError("jet_truncation needs a phrase and answer_tokens >= 1")
        self.ratios, self.phrase, self.answer_tokens = ratios, phrase, int(answer_tokens)
        self.group_divisor = 1 + len(ratios)

    def __call__(self, ctx: HookContext, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        full = ctx.engine.generate([p.ids for p in prompts], dataclasses.replace(spec, n=spec.n // self.group_divisor))
        cuts = [(s, min(s.num_tokens, max(1, int(s.num_tokens * r)))) for s in full for r in self.ratios]
        phrase = ctx.encode(self.phrase)
        # the answer allowance, inside the completion cap after the cut and the phrase
        caps = [min(self.answer_tokens, spec.max_new_tokens - c - len(phrase)) for _, c in cuts]
        branches = ctx.continue_after([s for s, _ in cuts], [c for _, c in cuts], phrase, spec, caps)
        samples = _grouped(full + branches)
        return StepBatch(prompts, samples, metrics={
            "jet/full_tokens": sum(s.num_tokens for s in full) / max(len(full), 1),
            "jet/branch_tokens": sum(s.num_tokens for s in branches) / max(len(branches), 1)})


HBPO_PHRASE = "<think> I will answer the question with {budget} tokens"


@register("rollout_hook", "hbpo_budgets")
class HBPOBudgets:
    """HBPO (Lyu et al. arXiv 2507.15844; released code ZJU-REAL/HBPO,
    verl/workers/rollout/vllm_rollout/vllm_rollout_spmd-hierarchical.py): a group of G is split into one sub-group
    per budget (released: 512, 1024, 2048, 2560, G = 16), each completion starting with ``phrase`` announcing its
    budget; the budget is the sample's tag ``budget`` (the hbpo_budget reward and the hbpo estimator read it).
    Budgets are enforced by the reward only (released: no per-budget cap); a completion is at most
    rollout.max_new_tokens with the announcement.
    Deviations: the announcement is injected (masked out of the loss; released: trained on, which teaches the model
    to announce a budget itself); the budget comes from the rollout's tag, not read back from the text."""

    group_divisor = 4  # len(budgets), set per instance

    def __init__(self, budgets: tuple = (512, 1024, 2048, 2560), phrase: str = HBPO_PHRASE):
        budgets = tuple(int(b) for b in budgets)
        if not budgets or min(budgets) < 1:
            raise ValueError(f"budgets must be positive token counts, got {list(budgets)}")
        if "{budget}" not in phrase:
            raise ValueError("phrase must hold {budget}")
        self.budgets, self.phrase = budgets, phrase
        self.group_divisor = len(budgets)

    def __call__(self, ctx: HookContext, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        each = spec.n // len(self.budgets)
        calls = [(k, b) for k in range(len(prompts)) for b in self.budgets]
        out = ctx.prefilled([prompts[k].ids for k, _ in calls], [self.phrase.format(budget=b) for _, b in calls],
                            [dataclasses.replace(spec, n=each, seed=None if spec.seed is None else spec.seed + j)
                             for j in range(len(calls))])
        samples = []
        for s in out:
            k, b = calls[s.group_id]
            samples.append(dataclasses.replace(s, group_id=k, tags={**s.tags, "budget": b}))
        return StepBatch(prompts, _grouped(samples), metrics={
            "hbpo/announced_tokens": sum(len(s.injected) for s in samples) / max(len(samples), 1)})
