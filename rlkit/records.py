"""The typed records that flow between the stages of a step (docs/architecture.md: "each arrow is a typed record").

    Prompt -> (rollout) -> Sample -> StepBatch (rewards, shaped rewards, advantages, per-token tensors)
           -> update -> UpdateStats

Shapes are in the annotations: N samples of the batch, P prompts (groups), C the longest completion.
Per-token tensors live in "completion space" [N, C]: row i holds sample i's completion tokens
left-aligned, zero-padded. Nothing here imports torch-heavy or rlkit modules besides torch itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

COUNTS = ("all", "think", "answer")  # which completion tokens a length decision counts (rollout.thinking.count)


@dataclass
class Prompt:
    """A tokenised prompt and its dataset columns (passed to rewards as kwargs)."""

    ids: list[int]
    text: str
    columns: dict


@dataclass
class Sample:
    """One completion of one prompt.

    logprobs: behaviour log-probs of the completion tokens, log softmax(logits / T) of the engine
    (len == len(completion_ids)); empty when the engine was asked for none (greedy eval).
    versions: the policy version that produced each completion token.
    segments: the rollout call (0, 1, ...) that produced each token; empty for one-call rollouts.
    injected: positions of completion tokens the rollout wrote itself (a budget-forcing phrase): the reward reads
    them, the loss never trains on them.
    think_tokens: a length annotation (rollout.thinking, filled once by rlkit.rollout.thinking when the samples of a
    generation are collected): the completion tokens up to and including the first thinking end marker, all of
    them when the marker never came (the thinking never closed); None: no split (rollout.thinking.end empty).
    ``length(count)`` reads it; the loss and the token layout never do.
    tags: what a rollout hook recorded about the sample (HBPO's budget: ``{"budget": 512}``): per-sample columns
    that the rewards get as kwargs and shapers and estimators that declare them read (``column``), before the
    prompt's column of the same name.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) | "length" (hit the length cap)
    text: str
    group_id: int  # index of the sample's prompt in its batch
    versions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    injected: list[int] = field(default_factory=list)
    think_tokens: int | None = None
    tags: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Every completion token: what packing, masks, micro-batches and the cost model lay out."""
        return len(self.completion_ids)

    def length(self, count: str = "all") -> int:
        """The completion's length as every length decision counts it (rollout.thinking.count: the rewards'
        ``num_tokens``, the shapers' lengths, DOT's truncation, the held-out budgets): "all" every token, "think" the
        thinking tokens, "answer" the rest. A sample cut after its annotation (DOT) stays right: its thinking is
        min(think_tokens, num_tokens) (a cut before the marker leaves a thinking that never closed)."""
        if count == "all":
            return self.num_tokens
        if count not in COUNTS:
            raise ValueError(f"length count {count!r}: valid counts are {', '.join(COUNTS)}")
        if self.think_tokens is None:
            raise ValueError(f"Sample.length({count!r}) needs the thinking split (think_tokens), which is filled when "
                             "rollout.thinking.end is set (rlkit.rollout.thinking.ThinkingSplit.annotate)")
        think = min(self.think_tokens, self.num_tokens)
        return think if count == "think" else self.num_tokens - think

    def counted_from(self, count: str = "all") -> int:
        """The completion position where the counted tokens start (after the thinking for "answer", else 0): a
        decision to keep n counted tokens cuts the completion after ``counted_from(count) + n`` tokens."""
        return self.length("think") if count == "answer" else 0

    def trainable(self) -> list[float]:
        """1.0 per completion token the policy generated, 0.0 where the rollout injected one."""
        out = [1.0] * self.num_tokens
        for j in self.injected:
            if 0 <= j < len(out):
                out[j] = 0.0
        return out


def sample_column(prompts: Sequence[Prompt], sample: Sample, name: str):
    """The value of column ``name`` for ``sample``: its own tag (a rollout hook's), else its prompt's column, else
    None. The one place a per-sample column is looked up."""
    if name in sample.tags:
        return sample.tags[name]
    return prompts[sample.group_id].columns.get(name) if sample.group_id < len(prompts) else None


def group_index(group_ids: torch.Tensor | Sequence[int]) -> list[torch.Tensor]:
    """Sample indices of each group, groups in ascending id order: the one grouping helper."""
    g = torch.as_tensor(group_ids)
    if g.numel() == 0:
        return []
    order = torch.argsort(g, stable=True)
    _, counts = torch.unique_consecutive(g[order], return_counts=True)
    return list(torch.split(order, counts.tolist()))


def to_completion_space(rows: list[list[float]], width: int) -> torch.Tensor:
    """[N, width] float32, row i = rows[i] left-aligned, zero-padded."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r[:width], dtype=torch.float32)
    return out


@dataclass
class StepBatch:
    """One rank's share of a step, from rollout to update. Stages fill the fields in order.

    rewards / terms / correct come from the per-sample reward terms; shaped from the group/batch shapers
    (None until shaped); advantages from the estimator. ``mask`` marks the tokens that count in the loss
    (token masks of kind "batch" have been applied); ``behaviour`` are the engine's logprobs.
    ``padding`` marks the copies a group filter adds to fill its quota (DOT's padded groups): they keep the
    batch's shape but carry zero loss weight and are left out of the shapers, the advantage statistics and
    every mean (None: no padding).
    ``length_count`` is which completion tokens ``lengths`` counts (rollout.thinking.count, ``Sample.length``), set
    by the trainer when it annotates a generation; ``num_tokens`` always counts every token.
    """

    prompts: list[Prompt]  # [P]
    samples: list[Sample]  # [N]; samples[i].group_id indexes prompts
    rewards: torch.Tensor | None = None  # [N] float32 combined per-sample reward
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # term -> [N] (NaN: not applicable)
    correct: torch.Tensor | None = None  # [N] verifier 0/1, NaN where unknown or without a verifier
    shaped: torch.Tensor | None = None  # [N] after group/batch shaping
    advantages: torch.Tensor | None = None  # [N]
    mask: torch.Tensor | None = None  # [N, C] 1.0 on completion tokens that count in the loss
    behaviour: torch.Tensor | None = None  # [N, C] rollout-engine logprobs
    old_logprobs: torch.Tensor | None = None  # [N, C]; None: the ratio is taken against the current policy
    ref_logprobs: torch.Tensor | None = None  # [N, C]; None: no KL term
    metrics: dict[str, float] = field(default_factory=dict)
    padding: torch.Tensor | None = None  # [N] bool: a filter's padded copy (zero weight); None: none padded
    length_count: str = "all"  # rollout.thinking.count: what `lengths` counts
    # token-level signals (reward terms of shape "tokens" / "chunks", rlkit.rewards.combine.RewardValues.tokens):
    # per sample a float32 tensor of its completion's length; None: no token-shaped term
    token_rewards: list[torch.Tensor] | None = None
    token_advantages: list[torch.Tensor] | None = None  # the estimator's per-token advantages (AdvantageCaps.tokens)
    token_adv: torch.Tensor | None = None  # [N, C] token_advantages in completion space (prepare_tokens)
    generated: torch.Tensor | None = None  # [N, C] 1.0 on the completion tokens the policy generated (prepare_tokens)

    @property
    def group_ids(self) -> torch.Tensor:  # [N] long
        return torch.tensor([s.group_id for s in self.samples], dtype=torch.long)

    @property
    def lengths(self) -> torch.Tensor:  # [N] float32 the counted lengths every length decision reads (Sample.length)
        return torch.tensor([float(s.length(self.length_count)) for s in self.samples])

    @property
    def num_tokens(self) -> torch.Tensor:  # [N] float32 every completion token (token weights, layout)
        return torch.tensor([float(s.num_tokens) for s in self.samples])

    @property
    def truncated(self) -> torch.Tensor:  # [N] bool: finish_reason == "length"
        return torch.tensor([s.finish_reason == "length" for s in self.samples], dtype=torch.bool)

    @property
    def real(self) -> torch.Tensor:  # [N] bool: not a padded copy
        if self.padding is None:
            return torch.ones(len(self.samples), dtype=torch.bool)
        return ~self.padding

    @property
    def counted(self) -> torch.Tensor:  # [N] bool: the rows the step's statistics describe
        """The real rows; when a filter found no informative group at all, the whole batch is its fallback groups
        (padding for the loss: no update) and those are what the policy generated, so the statistics count them."""
        real = self.real
        return real if bool(real.any()) else torch.ones(len(self.samples), dtype=torch.bool)

    def final_rewards(self) -> torch.Tensor:
        """The reward that feeds the advantage: shaped when shaping ran, else the combined reward."""
        return self.shaped if self.shaped is not None else self.rewards

    def select_groups(self, groups: Sequence[int]) -> StepBatch:
        """A batch of the listed groups (repeats allowed), renumbered 0..len(groups)-1 in that order.
        Per-sample fields follow; per-token fields are dropped (they are built after selection)."""
        by_group = group_index(self.group_ids)
        idx = [int(i) for g in groups for i in by_group[g]]
        new_gid = [k for k, g in enumerate(groups) for _ in by_group[g]]
        samples = [dataclasses.replace(self.samples[i], group_id=k) for i, k in zip(idx, new_gid)]

        def take(t):
            return None if t is None else t[idx]

        def rows(ragged):
            return None if ragged is None else [ragged[i] for i in idx]

        return StepBatch([self.prompts[g] for g in groups], samples, take(self.rewards),
                         {k: v[idx] for k, v in self.terms.items()}, take(self.correct), take(self.shaped),
                         take(self.advantages), metrics=dict(self.metrics), padding=take(self.padding),
                         length_count=self.length_count, token_rewards=rows(self.token_rewards),
                         token_advantages=rows(self.token_advantages))

    @staticmethod
    def concat(batches: Sequence[StepBatch]) -> StepBatch:
        """Batches one after another, group ids offset so they stay distinct."""
        prompts, samples, offset = [], [], 0
        for b in batches:
            prompts += b.prompts
            samples += [dataclasses.replace(s, group_id=s.group_id + offset) for s in b.samples]
            offset += len(b.prompts)

        def cat(get):
            parts = [get(b) for b in batches]
            return None if any(p is None for p in parts) else torch.cat(parts)

        terms = {k: torch.cat([b.terms[k] for b in batches]) for k in (batches[0].terms if batches else {})}
        padding = None
        if any(b.padding is not None for b in batches):
            padding = torch.cat([~b.real for b in batches])
        def ragged(get):
            parts = [get(b) for b in batches]
            return None if any(p is None for p in parts) else [row for p in parts for row in p]

        return StepBatch(prompts, samples, cat(lambda b: b.rewards), terms, cat(lambda b: b.correct),
                         cat(lambda b: b.shaped), cat(lambda b: b.advantages), padding=padding,
                         length_count=batches[0].length_count if batches else "all",
                         token_rewards=ragged(lambda b: b.token_rewards),
                         token_advantages=ragged(lambda b: b.token_advantages))


@dataclass
class ShapingBatch:
    """The whole step as the shapers see it, gathered from every rank: [N] each."""

    rewards: torch.Tensor  # combined per-sample reward (float32); each shaper's output feeds the next
    correct: torch.Tensor  # verifier 0/1, NaN where unknown or when the run has no correctness term
    lengths: torch.Tensor  # completion tokens as the length decisions count them (rollout.thinking.count), float32
    truncated: torch.Tensor  # finish_reason == "length" (bool)
    group_ids: torch.Tensor  # long, unique across ranks
    step: int
    terms: dict = field(default_factory=dict)  # reward term name -> [N] values (NaN = not applicable)
    looping: torch.Tensor | None = None  # [N] bool: the completion ends in a repetition loop
    keys: list | None = None  # [N] stable question id of each sample (the data row's `source`, file:line)
    columns: list | None = None  # [N] {column: value} of each sample's prompt, the columns the shapers declare


@dataclass
class StageContext:
    """What a stage may use besides the batch: the step, and callables into the run (so stages stay
    pure of the trainer's objects)."""

    step: int
    total_steps: int
    rescore: Callable[[StepBatch, list[int]], None] | None = None  # re-run the rewards on these samples
    render: Callable[[dict, str], Prompt] | None = None  # columns, extra text -> a chat-templated Prompt
    decode: Callable[[list[int]], str] | None = None  # token ids -> text


@dataclass
class MaskInputs:
    """What a token mask sees, [B, C] / [B]. ``entropy`` and ``logprobs`` exist only for masks applied
    during the forward (kind "forward")."""

    mask: torch.Tensor  # [B, C]
    truncated: torch.Tensor  # [B] bool
    correct: torch.Tensor | None  # [B] (NaN unknown)
    old_logprobs: torch.Tensor | None = None  # [B, C]
    entropy: torch.Tensor | None = None  # [B, C]
    behaviour_logprobs: torch.Tensor | None = None  # [B, C] the rollout engine's (importance corrections)


@dataclass
class UpdateStats:
    """Token sums of the loss statistics of one update (divide by the token counts for means)."""

    sums: dict[str, float] = field(default_factory=dict)  # loss stats (clip_frac, ratio, kl, ...) over mask
    entropy: float = 0.0  # summed over the first pass's completion tokens
    tokens: float = 0.0  # completion tokens of the first pass
    mismatch: float = 0.0  # |trainer - engine| logprob, summed over the first minibatch's tokens
    mismatch_tokens: float = 0.0
    masked: dict[str, float] = field(default_factory=dict)  # forward token mask name -> tokens removed
    grad_norms: list[float] = field(default_factory=list)
    micro_batches: int = 0  # forwards with a gradient (every pass), and those sharded over the SP group
    sharded: int = 0
    skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient norm (optim.skip_nonfinite)
    predicted_s: float = 0.0  # SP plans' predicted forward+backward seconds over every pass (calibrated cost model)
    bound_s: float = 0.0  # and their lower bound (rlkit.parallel.plan)

