"""TRAAC, Think Right with Adaptive, Attentive Compression (Singh et al. arXiv 2510.01581; released code
joykirat18/TRAAC, verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py ``generate_summarization_sequences`` and
redundant_token_eviction.py): the ``traac_compression`` rollout hook.

Per prompt: N completions; the pass rate p of their verdicts (the run's correctness term, asked through
``HookContext.verify``) sets the difficulty (easy p >= 0.8, medium p >= 0.3, hard) and the target reduction r
(0.6 / 0.4 / 0.2). Each correct completion's reasoning is scored by a frozen copy of the starting model
(``scorer``: eager attention, heads averaged, the first half of the layers) from the last token of
``reasoning + suffix`` (the "Time is up ..." sentence and the thinking's end marker), without the question; the
reasoning is cut into steps at cue words (matched in the tokenizer's token strings, as released: a cue inside a
token that starts earlier closes the previous step); step importance I_k = the mean attention over its tokens and
the layers; uniformity U = H(I / sum I) / log K; k = floor(K r (1 - U)) lowest steps are removed (none when U > 0.8).
The kept reasoning + ``think_end`` is continued by the policy for a fresh answer. The group is N drawn at random
(seeded by the step and the prompt) from the originals and the compressed ones; every sample carries its prompt's
``difficulty`` (p) tag, which the ``traac_length`` shaper reads.

Every correct, well-formed completion is answered again after its reasoning, compressed or not (as released: an
all-correct group's pool is 2N). Deviations: the compressed reasoning is injected (masked out of the loss: the policy never generated those tokens
in that context, so their behaviour logprobs would be off-policy; released: trained on); completions without a
thinking end marker (``think_end`` not in the text, e.g. SmolLM2) are all reasoning when ``think_end`` is empty
(released: only well-formed completions with one <think>...</think> are compressed); the scorer runs in the
trainer's process on the run's device (released: a FastAPI service with its own GPU); the trigger is the last token
of the scored sequence (released: the first token of the last ``</think>``: the same for a one-token marker); a
fresh answer is at most min(answer_tokens, the room left under rollout.max_new_tokens), at least one token. ``cues`` (the released 32 by default) may be
replaced for models that write none of them (SmolLM2's short answers: one step, nothing to remove).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import zlib

import torch

from rlkit.records import Prompt, Sample, StepBatch
from rlkit.registry import register
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.hooks import HookContext
from rlkit.shaping.traac import difficulty_class

CUES = ("Wait", "Alternatively", "Another angle", "Another approach", "But wait", "Hold on", "Hmm", "Maybe",
        "Looking back", "Okay", "Let me", "First", "Then", "Alright", "Compute", "Correct", "Good", "Got it",
        "I don't see any errors", "I think", "Let me double-check", "Let's see", "Now", "Remember", "Seems solid",
        "Similarly", "So", "Starting", "That's correct", "That seems right", "Therefore", "Thus")
SUFFIX = "Time is up. I should stop thinking and now write a summary containing all key steps required to solve the problem."
REDUCTION = {"easy": 0.6, "medium": 0.4, "hard": 0.2}


def split_steps(tokens: list[str], cues=CUES) -> list[list[int]]:
    """Token positions of each step: the concatenated token strings cut where a cue starts (longest cue first); a
    token belongs to the step its first character falls in; the text before the first cue is step 0."""
    text = "".join(tokens)
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t)
    pattern = re.compile("(" + "|".join(re.escape(c) for c in sorted(cues, key=len, reverse=True)) + ")")
    cuts = [m.start() for m in pattern.finditer(text)]
    if not cuts:
        return [list(range(len(tokens)))]
    bounds = [0] + cuts
    steps = []
    for a, b in zip(bounds, bounds[1:] + [math.inf]):
        members = [i for i, c in enumerate(starts) if a <= c < b]
        if members and (b > a):
            steps.append(members)
    return steps or [list(range(len(tokens)))]


def step_importance(steps: list[list[int]], rows: torch.Tensor) -> list[float]:
    """I_k = sum over layers and the step's tokens of the trigger's attention / (layers x tokens); ``rows`` [L, T]."""
    rows = rows.float()
    return [float(rows[:, s].sum()) / (rows.shape[0] * len(s)) if s else 0.0 for s in steps]


def uniformity(importance: list[float]) -> float:
    """U = H(p) / log K, p = I / sum I (negative parts clipped to 0); 1 for one step or no mass."""
    if len(importance) <= 1:
        return 1.0
    v = [max(0.0, x) for x in importance]
    total = sum(v)
    if total <= 0:
        return 1.0
    h = -sum((x / total) * math.log(x / total + 1e-12) for x in v)
    return h / math.log(len(v))


def evicted_steps(importance: list[float], reduction: float, threshold: float = 0.8, cap: float = 0.8) -> list[int]:
    """The steps removed: the floor(K min(r (1 - U), cap)) least important (stable order), none when U > threshold."""
    u = uniformity(importance)
    if u != u or u > threshold:
        return []
    k = int(len(importance) * min(reduction * (1 - u), cap))
    return [i for i, _ in sorted(enumerate(importance), key=lambda x: x[1])[:k]]


@register("rollout_hook", "traac_compression")
class TRAACCompression:
    """TRAAC (arXiv 2510.01581) attention-based compression of correct completions by difficulty (module doc)."""

    needs_verifier = True  # the pass rate and the correct completions come from the run's correctness term

    def __init__(self, scorer: str = "", think_end: str = "</think>", think_start: str = "<think>",
                 suffix: str = SUFFIX, answer_tokens: int = 64, threshold: float = 0.8, layers: float = 0.5,
                 cues: tuple = CUES):
        if answer_tokens < 1 or not 0 < layers <= 1:
            raise ValueError("traac_compression needs answer_tokens >= 1 and layers in (0, 1]")
        if not cues or not all(isinstance(c, str) and c for c in cues):
            raise ValueError("cues must be non-empty strings")
        self.cues = tuple(cues)
        self.scorer_path, self.think_end, self.think_start, self.suffix = scorer, think_end, think_start, suffix
        self.answer_tokens, self.threshold, self.layers = int(answer_tokens), float(threshold), float(layers)
        self.model = None

    def _scorer(self, ctx: HookContext):
        if self.model is None:
            from transformers import AutoModelForCausalLM

            from rlkit.models import resolve_model_path

            path = resolve_model_path(self.scorer_path or ctx.model_path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
            self.model.to(ctx.device or "cpu").eval().requires_grad_(False)
        return self.model

    @torch.no_grad()
    def attention_rows(self, ctx: HookContext, ids: list[int]) -> torch.Tensor:
        """[layers used, T]: the last token's head-averaged attention in the first ``layers`` share of the layers.
        Only that row is kept (a hook on each used layer's attention, as released), and the forward stops after the
        last used layer: the whole [heads, T, T] of every layer would not fit at the recipe's lengths."""
        model = self._scorer(ctx)
        layers = model.model.layers
        used = max(1, int(len(layers) * self.layers))
        rows: list[torch.Tensor] = []

        class Done(Exception):
            pass

        def keep(module, args, output):
            rows.append(output[1][0, :, -1, :].float().mean(0).cpu())
            if len(rows) == used:
                raise Done

        handles = [layer.self_attn.register_forward_hook(keep) for layer in layers[:used]]
        try:
            model(torch.tensor([ids], device=next(model.parameters()).device))
        except Done:
            pass
        finally:
            for h in handles:
                h.remove()
        return torch.stack(rows)

    def compress(self, ctx: HookContext, sample: Sample, reduction: float) -> tuple[list[int], int] | None:
        """(the kept reasoning tokens, the count removed) of a correct, well-formed sample (its thinking closed, when
        ``think_end`` is set); None otherwise. Scored and split as released: ``think_start`` + the reasoning +
        ``suffix`` + ``think_end``, the steps over the whole sequence (the opening sink in the first step, the trigger
        in the last), then only the reasoning's tokens of the kept steps are kept."""
        ids = sample.completion_ids
        cut = len(ids)
        end = ctx.encode(self.think_end) if self.think_end else []
        if end:
            cut = next((j for j in range(len(ids) - len(end) + 1) if ids[j:j + len(end)] == end), -1)
            if cut < 0:
                return None  # not well formed: the thinking never closed
        reasoning = ids[:cut]
        if not reasoning:
            return None
        head = ctx.encode(self.think_start) if self.think_start else []
        scored = head + reasoning + ctx.encode(self.suffix) + end
        rows = self.attention_rows(ctx, scored)
        steps = split_steps(ctx.tokenizer.convert_ids_to_tokens(scored), self.cues)
        gone = set(evicted_steps(step_importance(steps, rows), reduction, self.threshold))
        lo, hi = len(head), len(head) + len(reasoning)
        kept = [scored[p] for k, s in enumerate(steps) if k not in gone for p in s if lo <= p < hi]
        return kept, len(reasoning) - len(kept)

    def __call__(self, ctx: HookContext, prompts: list[Prompt], spec: SamplingSpec, step: int) -> StepBatch:
        if ctx.verify is None:
            raise RuntimeError("traac_compression needs the run's correctness term (HookContext.verify)")
        full = ctx.engine.generate([p.ids for p in prompts], spec)
        verdicts = ctx.verify(prompts, full)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(full):
            groups.setdefault(s.group_id, []).append(i)
        rates, plans = {}, []  # (group, original, kept reasoning, tokens removed) of every correct completion
        for k, rows in sorted(groups.items()):
            known = [verdicts[i] for i in rows if verdicts[i] is not None]
            rates[k] = sum(v >= 1 for v in known) / len(known) if known else None
            cls = difficulty_class(rates[k])
            for i in rows:
                plan = self.compress(ctx, full[i], REDUCTION[cls]) if cls in REDUCTION and verdicts[i] == 1 else None
                if plan is not None:
                    plans.append((k, full[i], *plan))
        # every compressed reasoning answered again in one engine call (made even when empty: lockstep engines),
        # the answer inside the completion cap
        end = ctx.encode(self.think_end) if self.think_end else []
        heads = [dataclasses.replace(s, completion_ids=kept, logprobs=[0.0] * len(kept), text=ctx.decode(kept),
                                     versions=[s.versions[0]] * len(kept) if s.versions else [],
                                     injected=list(range(len(kept))))
                 for _, s, kept, _ in plans]
        caps = [min(self.answer_tokens, spec.max_new_tokens - h.num_tokens - len(end)) for h in heads]
        answered = ctx.continue_after(heads, [h.num_tokens for h in heads], end, spec, caps)
        pools = {k: [full[i] for i in rows] for k, rows in groups.items()}
        for (k, *_), sample in zip(plans, answered):
            pools[k].append(sample)
        out = []
        for k, rows in sorted(groups.items()):
            key = zlib.crc32(",".join(map(str, prompts[k].ids)).encode())
            chosen = random.Random(f"{ctx.seed}:{step}:{key}").sample(range(len(pools[k])), len(rows))
            out += [dataclasses.replace(pools[k][j], group_id=k, tags={**pools[k][j].tags, "difficulty": rates[k]})
                    for j in sorted(chosen)]
        return StepBatch(prompts, out, metrics={
            "traac/compressed": float(sum(gone > 0 for *_, gone in plans)), "traac/answered_again": float(len(plans)),
            "traac/removed_tokens": float(sum(gone for *_, gone in plans))})
