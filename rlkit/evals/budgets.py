"""Accuracy against a token budget (``rlkit eval --budgets 128,256,512``), in the style of s1's budget forcing.

Each prompt's k samples are generated once, at the largest budget B. For every smaller budget b a sample is seen
as it would have been with b tokens: a sample that ended by itself within b tokens is unchanged; any other is cut
after b tokens, the answer-forcing phrase (rollout.budget_forcing.phrase, default ``"\\n\\nFinal answer: \\boxed{"``) is
appended and a short greedy continuation (at most ``answer_tokens``) is generated from there (one engine call for all
of them; rlkit.rollout.forcing.BudgetForcing, the same mechanics as budget-forced rollouts), and the text scored is
the cut completion + phrase + continuation. Tokens used by a forced sample: b + suffix + continuation.
At B itself nothing is cut or forced, so the largest budget reproduces plain ``rlkit eval`` at that cap.
With ``rollout.thinking`` the budgets count the tokens ``rollout.thinking.count`` says (``Sample.length``): counting
the thinking, a sample that closed its thinking within b is left as it is and any other is cut after b thinking
tokens (with a phrase holding the end marker, e.g. ``"</think>"``, the forced continuation is the answer).

Per budget: avg@k with its bootstrap interval, pass@k, maj@k, token statistics (rlkit.evals.metrics) and the
forced-answer rate (the share of samples that needed the suffix). Per benchmark: the accuracy-vs-budget curve and
its area, ``budget_auc``: the trapezoid area under the piecewise-linear curve through (0, 0) and (b_i, avg@k_i),
divided by B, so 1.0 would be perfect accuracy at every budget from 0 tokens on (one number to compare runs).
"""

from __future__ import annotations

from rlkit.records import Sample
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.forcing import BudgetForcing


def parse_budgets(text: str) -> tuple[int, ...]:
    """``"128,256,512"`` -> (128, 256, 512); ValueError naming the bad entry."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--budgets: {part!r} is not a positive whole number of tokens (e.g. 128,256,512)")
        out.append(int(part))
    if not out:
        raise ValueError("--budgets names no budget (e.g. 128,256,512)")
    return tuple(sorted(set(out)))


def finished_within(s: Sample, budget: int, count: str = "all") -> bool:
    """The sample ended by itself (EOS or a stop string) using at most ``budget`` tokens as ``count`` counts them
    (rollout.thinking.count, ``Sample.length``); counting the thinking, a sample that closed its thinking within the
    budget has finished it too (a thinking budget leaves the answer alone)."""
    if s.length(count) > budget:
        return False
    return s.finish_reason == "stop" or (count == "think" and s.length("answer") > 0)


def at_budget(engine, prompts: list, samples: list[Sample], budget: int, forcing: BudgetForcing, count: str = "all"
              ) -> tuple[list[Sample], list[bool]]:
    """``samples`` (generated at the largest budget) as seen with ``budget`` tokens, in the same order, and which of
    them were forced. The forced continuations are generated in one greedy engine call, only for samples that had
    not finished within the budget. ``count`` (rollout.thinking.count): which tokens the budget counts; a forced
    sample is cut after ``budget`` of them (``Sample.counted_from``: after the thinking for "answer")."""
    if budget >= forcing.largest:
        return list(samples), [False] * len(samples)
    todo = [i for i, s in enumerate(samples) if not finished_within(s, budget, count)]
    out, forced = list(samples), [False] * len(samples)
    if not todo:
        return out, forced
    spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=forcing.answer_tokens, logprobs=False)
    cuts = {i: samples[i].counted_from(count) + budget for i in todo}
    tails = forcing.answers(engine, [list(prompts[samples[i].group_id].ids) + samples[i].completion_ids[:cuts[i]]
                                     for i in todo], spec)
    for i, tail in zip(todo, tails):
        out[i] = forcing.joined(samples[i], cuts[i], tail, trace=False)
        forced[i] = True
    return out, forced


def budget_auc(budgets: list[int], accuracies: list[float]) -> float:
    """Area under the piecewise-linear accuracy-vs-budget curve through (0, 0) and every (budget, accuracy),
    divided by the largest budget (module doc)."""
    if not budgets:
        return float("nan")
    points = sorted(zip(budgets, accuracies))
    area, prev_b, prev_a = 0.0, 0, 0.0
    for b, a in points:
        area += (b - prev_b) * (prev_a + a) / 2
        prev_b, prev_a = b, a
    return area / points[-1][0]


def forced_rate(forced: list[bool]) -> float:
    """The share of samples that needed the answer-forcing suffix at a budget."""
    return sum(forced) / len(forced) if forced else float("nan")
