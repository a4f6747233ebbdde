"""DECS's chunk-level redundancy reward (Jiang et al., "Overthinking Reduction with Decoupled Rewards and Curriculum
Data Scheduling", ICLR 2026, arXiv 2509.25827; released code pixas/DECS, src_valid/reward_manager.py and
src_valid/valid_ray_trainer.py ``compute_grpo_proc_length_advantage_return``).

A correct completion is cut into reasoning chunks; a detector model judges each chunk alone ("does this segment
reach the ground-truth answer?", yes/no); the first "yes" chunk ends the necessary reasoning prefix (NRP) and the
chunks judged after it ("no", or "yes" again) are redundant. The tokens from the first to the last redundant chunk
(one span [p, q)) get the token reward

    r_{i,t} = s_i + beta (1 - L_i / T)   for t in [p, q),   r_{i,t} = s_i (1 + beta) elsewhere        (code L311-390)

with s_i the 0/1 outcome, L_i the completion's tokens, T the completion cap (max_response_length) and beta
``length_reward_beta`` = 0.1. In rlkit's terms the outcome part s_i (1 + beta) is the scalar verifier term (the
recipe weights math_correct by 1.1) and this reward returns the difference on the span, one chunk
``(p, q, -beta L_i / T)``; the ``decs`` estimator (rlkit.algorithms.advantages) normalises each token column over
the group.

Chunks (code ``split_based_on_tokens``): a chunk starts at every token whose id is the first token of one of
``split_words`` (bare or after a space); with no such token the completion up to ``</think>`` is one chunk, else
the last segment is cut at ``</think>`` when it holds one; a segment that is not "multi-line" (a newline token after
its first non-newline token and one before its last) is joined to the next; tokens from the cut on belong to no
chunk. Verdicts (code ``batch_compute_chunk_adv``): walking the chunks, the first verdict containing "yes" is the NRP
end ('a'); before it "no" is 'b'; after it "no" is 'c' and "yes" is 'd'; a verdict with neither word is 'b'. The
span runs from the first to the last 'c'/'d' chunk.

Deviations from the released code: the detector is any model of ``reward_engines`` (the authors serve their 1.5B
fine-tune pixas/DECS_NRP_DETECTOR with vLLM; on CPU the tests use the embedded SmolLM2), asked through its chat
template with the same prompt, greedy, 5 new tokens; correctness is the run's verifier (the authors' math_verify
reads only the text after a single ``</think>``); a detector prompt over ``max_prompt_chars`` is not sent and reads
"no" (the released code skips prompts over 17990 detector tokens the same way). Options beyond the released code,
off by default: ``prompt`` (another template with {problem}, {segment}, {answer}) and ``ignore_case`` (verdicts
lower-cased before the substring test; the released test is case-sensitive), for detectors other than the authors'.
"""

from __future__ import annotations

from rlkit.rewards.combine import Reported
from rlkit.rewards.registry import register_reward

SPLIT_WORDS = ("Wait", "But", "Alternatively", "Hmm", "Let", "Therefore")
NEWLINES = ("\n", " \n", "\n\n", " \n\n", ".\n", ".\n\n")
DETECTOR_PROMPT = (
    "Given a math problem and a segement of a long reasoning process, determine whether this segment reaches the "
    "final answer that matches the ground truth. If the segment explicitly arrives at the ground-truth answer, "
    "output \\boxed{{yes}}. Otherwise, directly output \\boxed{{no}}.\n\n**Problem**: {problem}\n\n"
    "**Reasoning segment**: {segment}\n\n**Ground Truth**: {answer}")


def first_ids(tokenizer, words) -> set[int]:
    """The first token id of each word (no special tokens), the way the released code matches boundaries."""
    out = set()
    for w in words:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if ids:
            out.add(int(ids[0]))
    return out


def chunk_ends(ids: list[int], split_ids: set[int], newline_ids: set[int], think_end: int | None) -> list[int]:
    """The cumulative end offset of each reasoning chunk of ``ids`` (module doc: the released splitting)."""
    if not ids:
        return []
    cuts = [k for k, t in enumerate(ids) if t in split_ids]
    starts = sorted({0, *cuts})
    segments = [ids[a:b] for a, b in zip(starts, starts[1:] + [len(ids)]) if b > a]
    if think_end is not None and think_end in segments[-1]:
        segments[-1] = segments[-1][:segments[-1].index(think_end)]

    def multi_line(seg: list[int]) -> bool:
        text = [k for k, t in enumerate(seg) if t not in newline_ids]
        lines = [k for k, t in enumerate(seg) if t in newline_ids]
        return bool(text) and any(k > text[0] for k in lines) and any(k < text[-1] for k in lines)

    ends, held, total = [], 0, 0
    for j, seg in enumerate(segments):
        if not multi_line(seg) and j < len(segments) - 1:
            held += len(seg)  # joined to the next segment
            continue
        total += held + len(seg)
        held = 0
        ends.append(total)
    return ends


def chunk_types(verdicts: list[str]) -> list[str]:
    """'a' (the NRP's last chunk), 'b' (before it, or no verdict), 'c' / 'd' (after it: "no" / "yes")."""
    first, out = None, []
    for j, v in enumerate(verdicts):
        yes, no = "yes" in v, "no" in v
        if yes and first is None:
            first = j
            out.append("a")
        elif no:
            out.append("b" if first is None else "c")
        elif yes:
            out.append("d")
        else:
            out.append("b")
    return out


def redundant_span(ends: list[int], types: list[str]) -> tuple[int, int] | None:
    """[p, q): from the first to the last redundant chunk ('c'/'d' after an 'a'), or None."""
    if "a" not in types:
        return None
    starts = [0] + ends[:-1]
    late = [j for j, t in enumerate(types) if t in ("c", "d") and ends[j] > starts[j]]
    return (starts[late[0]], ends[late[-1]]) if late else None


@register_reward("decs_redundancy", shape="chunks", factory=True, reports=("nrp_ratio",))
class DECSRedundancy:
    """DECS (ICLR 2026) chunk reward: -beta L/T on the tokens after the first chunk a detector model finds reaching
    the answer (module doc); needs a correctness term and a model of ``reward_engines``. Reports ``nrp_ratio``, the
    necessary prefix's share of the chunks, (j_a + 1) / chunks with j_a the first 'a' chunk (released
    ``first_correct_chunk_ratio``, reward_manager.py), for a correct sample with an 'a' chunk (None otherwise: the
    released ratio is 0 there and its mean leaves 0 out); the curriculum filter ``decs_curriculum`` reads it."""

    needs_verifier = True
    batch_errors = "whole_batch"  # one detector pass per batch: a failing batch is not retried sample by sample

    def __init__(self, engine: str = "detector", length_reward_beta: float = 0.1, think_end: str = "</think>",
                 max_prompt_chars: int = 60000, detector_tokens: int = 5, prompt: str = DETECTOR_PROMPT,
                 ignore_case: bool = False):
        if not length_reward_beta >= 0:
            raise ValueError(f"length_reward_beta must be >= 0, got {length_reward_beta}")
        try:
            prompt.format(problem="", segment="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt must be a template with the fields {{problem}}, {{segment}} and {{answer}} "
                             f"only (double other braces): {type(e).__name__}: {e}") from None
        self.prompt, self.ignore_case = prompt, bool(ignore_case)
        self.engine_name, self.beta, self.think_end = engine, float(length_reward_beta), think_end
        self.max_prompt_chars, self.detector_tokens = int(max_prompt_chars), int(detector_tokens)
        self.model = self.tokenizer = None
        self.cap = 0
        self.last: dict = {}  # the last batch's verdicts and spans, for tests and inspection

    def setup(self, context) -> None:
        self.model = context.engine(self.engine_name)
        self.tokenizer, self.cap = context.tokenizer, int(context.max_new_tokens)
        if self.tokenizer is None or self.cap < 1:
            raise ValueError("decs_redundancy needs the policy's tokenizer and the completion cap in its context")
        self.split_ids = first_ids(self.tokenizer, SPLIT_WORDS + tuple(" " + w for w in SPLIT_WORDS))
        self.newline_ids = first_ids(self.tokenizer, NEWLINES)
        ends = self.tokenizer(self.think_end, add_special_tokens=False)["input_ids"] if self.think_end else []
        self.think_end_id = int(ends[0]) if ends else None

    def __call__(self, prompts, completions, completion_ids, correct=None, answer=None, question=None, **kwargs):
        if self.model is None:
            raise RuntimeError("decs_redundancy was not set up (setup(context) gives it its detector)")
        n = len(completion_ids)
        correct = correct or [None] * n
        answer = answer or [None] * n
        problems = question or prompts
        asks, where = [], []  # detector prompts and (sample, chunk bounds)
        plans = {}
        for i, ids in enumerate(completion_ids):
            if correct[i] != 1.0:
                continue
            ends = chunk_ends(list(ids), self.split_ids, self.newline_ids, self.think_end_id)
            plans[i] = ends
            for a, b in zip([0] + ends[:-1], ends):
                segment = self.tokenizer.decode(list(ids[a:b]), skip_special_tokens=True)
                ask = self.prompt.format(problem=problems[i], segment=segment, answer=answer[i])
                where.append((i, len(ask) <= self.max_prompt_chars))
                asks.append(ask)
        sent = [a for a, (_, ok) in zip(asks, where) if ok]
        replies = iter(self.model.complete(sent, max_new_tokens=self.detector_tokens, temperature=0.0))
        verdicts: dict[int, list[str]] = {i: [] for i in plans}
        for i, ok in where:
            reply = next(replies) if ok else "no"
            verdicts[i].append(reply.lower() if self.ignore_case else reply)
        out: list = [[] for _ in range(n)]
        ratio: list = [None] * n
        spans = {}
        for i, ends in plans.items():
            types = chunk_types(verdicts[i])
            span = redundant_span(ends, types)
            spans[i] = span
            if "a" in types:
                ratio[i] = (types.index("a") + 1) / len(types)
            if span is not None and self.beta > 0:
                out[i] = [(span[0], span[1], -self.beta * len(completion_ids[i]) / self.cap)]
        self.last = {"verdicts": verdicts, "spans": spans, "chunks": plans}
        return Reported(out, {"nrp_ratio": ratio})
