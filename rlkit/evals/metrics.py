"""Evaluation metrics as the efficient-reasoning papers report them (pure functions, no model).

Per benchmark, from k scored samples per prompt:
- avg@k: pass@1 averaged over the k samples (DeepSeek-R1's "pass@1 with k samples"), i.e. mean correctness;
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex, eq. 1): 1 - C(n - c, k) / C(n, k) per prompt with n
  samples of which c are correct, averaged over prompts;
- maj@k: the majority-voted answer (the most frequent extracted final answer; ties go to the answer seen first)
  is correct;
- completion tokens: mean, median, p90; the mean over correct and over wrong samples; truncation rate;
- against a baseline (accuracy p_b, mean tokens L_b): token reduction (L_b - L) / L_b in percent and the
  accuracy-efficiency score of O1-Pruner (Luo et al. 2025, arXiv 2501.12570, sec. 4; reported by DRPO and PALU):

      AES = alpha (L_b - L) / L_b + beta (p - p_b) / p_b      if p >= p_b
      AES = alpha (L_b - L) / L_b - gamma (p_b - p) / p_b     otherwise,   alpha = 1, beta = 3, gamma = 5

  with p = avg@k and L = mean tokens;
- a 95% bootstrap interval over prompts for avg@k (resampling prompts, each with its k samples).
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import Counter

import torch

_BOXED = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with n samples, c correct (Chen et al. 2021, eq. 1)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def final_answer(text: str) -> str:
    """The answer a completion commits to, for majority voting: the last \\boxed{...} content (braces balanced),
    else the last number, normalised (no thousands commas, no trailing .0); "" when there is none."""
    matches = list(_BOXED.finditer(text))
    if matches:
        i, depth, out = matches[-1].end(), 1, []
        while i < len(text):
            ch = text[i]
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                break
            out.append(ch)
            i += 1
        answer = "".join(out).strip()
    else:
        numbers = _NUMBER.findall(text)
        answer = numbers[-1] if numbers else ""
    answer = answer.replace(",", "").replace(" ", "")
    return answer[:-2] if answer.endswith(".0") else answer


def majority_correct(answers: list[str], correct: list[float]) -> float:
    """1.0 when the most frequent non-empty answer (first seen wins ties) was scored correct, else 0.0."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return 0.0
    best = max(counts.values())
    winner = next(a for a in answers if a and counts[a] == best)
    return float(max(c for a, c in zip(answers, correct) if a == winner) > 0.5)


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Mean, median (p50), p90 and max of completion lengths (zeros for none)."""
    if not lengths:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    t = torch.tensor(lengths, dtype=torch.float64)
    return {"mean": float(t.mean()), "p50": float(statistics.median(lengths)),
            "p90": float(torch.quantile(t, 0.9)), "max": float(t.max())}


def token_stats(lengths: list[int], correct: list[float], truncated: list[bool]) -> dict[str, float]:
    def mean(xs):
        return sum(xs) / len(xs) if xs else math.nan

    st = length_stats(lengths)
    return {"mean_tokens": st["mean"] if lengths else math.nan, "median_tokens": st["p50"] if lengths else math.nan,
            "p90_tokens": st["p90"] if lengths else math.nan,
            "mean_tokens_correct": mean([n for n, c in zip(lengths, correct) if c > 0.5]),
            "mean_tokens_wrong": mean([n for n, c in zip(lengths, correct) if c <= 0.5]),
            "truncation_rate": mean([float(x) for x in truncated])}


def bootstrap_interval(per_prompt: list[float], *, samples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over prompts (each value: one prompt's mean over its k samples)."""
    if not per_prompt:
        return math.nan, math.nan
    rng, n = random.Random(seed), len(per_prompt)
    means = sorted(sum(per_prompt[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = means[int((1 - level) / 2 * samples)]
    hi = means[min(samples - 1, int((1 + level) / 2 * samples))]
    return lo, hi


def aes(p: float, length: float, p_base: float, length_base: float, *, alpha: float = 1.0, beta: float = 3.0,
        gamma: float = 5.0) -> float:
    """Accuracy-efficiency score (O1-Pruner, arXiv 2501.12570): see the module docstring."""
    if length_base <= 0 or p_base <= 0:
        return math.nan  # undefined against a baseline with no tokens or no correct answer
    saved = alpha * (length_base - length) / length_base
    if p >= p_base:
        return saved + beta * (p - p_base) / p_base
    return saved - gamma * (p_base - p) / p_base


def benchmark_metrics(groups: list[dict], k: int, *, seed: int = 0) -> dict[str, float]:
    """The metrics of one benchmark. ``groups``: one dict per prompt with "correct" (k floats), "tokens" (k ints),
    "truncated" (k bools) and "answers" (k strings)."""
    per_prompt = [sum(g["correct"]) / len(g["correct"]) for g in groups]
    lo, hi = bootstrap_interval(per_prompt, seed=seed)
    out = {"prompts": len(groups), "k": k, "avg@k": sum(per_prompt) / max(len(per_prompt), 1),
           "avg@k_ci_low": lo, "avg@k_ci_high": hi,
           "pass@k": sum(pass_at_k(len(g["correct"]), sum(c > 0.5 for c in g["correct"]), k) for g in groups)
           / max(len(groups), 1),
           "maj@k": sum(majority_correct(g["answers"], g["correct"]) for g in groups) / max(len(groups), 1)}
    flat = [(n, c, t) for g in groups for n, c, t in zip(g["tokens"], g["correct"], g["truncated"])]
    out.update(token_stats([f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]))
    return out


def against_baseline(result: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Token reduction (%) and AES of one benchmark's result against the baseline's result on it."""
    lb, pb = base.get("mean_tokens") or math.nan, base.get("avg@k") or 0.0  # null in JSON: no samples
    return {"token_reduction_pct": 100.0 * (lb - result["mean_tokens"]) / lb if lb > 0 else math.nan,
            "aes": aes(result["avg@k"], result["mean_tokens"], pb, lb)}
