"""Weighted combination of reward terms: the checks that stop a bad step early, the per-term watchdog
(``timeout``) and the per-term error policy (``on_error``).

Watchdog: with ``timeout > 0`` each call of a term (the whole batch) runs on a daemon thread and the
caller waits at most ``timeout`` seconds. A thread cannot be killed: a timed-out call is abandoned and
keeps running in the background (daemon: it never holds up interpreter exit), and a reward stuck in C
code that holds the GIL cannot be interrupted at all. Such rewards belong in a process pool
(rlkit.rewards.pool, as ``math_correct`` does), which kills the worker of a sample past its deadline.
``timeout: 0`` calls the reward inline in the caller's thread (needed by rewards that set their own
``signal.alarm``, which works only in the main thread).

Errors: when a call raises or times out, the failing sample is located (from the exception's ``.sample``,
or by calling the reward on one sample at a time, each with the same timeout), then

- ``on_error: raise`` -> RewardError naming the reward, the step (1-based, as in metrics.jsonl), the sample
  and an excerpt of its prompt;
- ``on_error: none`` -> every failing sample gets None for the term (masked like any None), the count is
  reported as ``RewardValues.errors[label]`` (``reward/<label>/errors`` in the step metrics) and one
  warning line names the reward, the step and the first failing sample.

A wrong return (not a list of N numbers / None, NaN, a non-number) is a bug in the reward and always
raises, whatever ``on_error`` says.

Setups that would train on nothing are never silent: a term that returns None for every sample of a batch (it
applies to none of them: its ``reward/<term>`` metric is null, not 0) is warned about once per run, and so is a
set of terms whose weights are all 0 (``check_weights``: the combined reward is 0 for every sample, so without a
shaping stage that rebuilds the reward the advantages are all 0 and nothing trains).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from rlkit import registry
from rlkit.errors import UserError
from rlkit.records import sample_column
from rlkit.registry import ConfigError

log = logging.getLogger("rlkit")

MAX_TIMED_OUT_PROBES = 3  # on_error none: after this many single-sample time-outs, the rest is masked untried


class RewardError(UserError, RuntimeError):
    """A reward raised, timed out, returned the wrong number of values, or returned NaN / a non-number."""


class RewardTimeout(Exception):
    """The watchdog's verdict: a call of a reward term got no result within ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


def reward_inputs(prompts: Sequence, samples: Sequence, count: str = "all"
                  ) -> tuple[list, list, list, dict[str, list], dict]:
    """The arguments of a reward call for ``samples`` (rlkit.records.Sample) whose ``group_id`` indexes ``prompts``
    (rlkit.records.Prompt): prompt texts, completion texts, completion ids, every dataset column and sample tag per
    sample (a rollout hook's tag first; None where neither has it) and the context (finish_reason, num_tokens). The one place they are assembled.
    ``num_tokens`` is the counted length ``Sample.length(count)`` (rollout.thinking.count: every completion token,
    the thinking or the answer), the L of every length term."""
    rows = [prompts[s.group_id] for s in samples]
    keys = sorted({k for p in prompts for k in p.columns} | {k for s in samples for k in s.tags})
    columns = {k: [sample_column(prompts, s, k) for s in samples] for k in keys}
    context = {"finish_reason": [s.finish_reason for s in samples], "num_tokens": [s.length(count) for s in samples]}
    return [r.text for r in rows], [s.text for s in samples], [s.completion_ids for s in samples], columns, context


@runtime_checkable
class TextModel(Protocol):
    """A model a reward may ask to complete texts (a detector, a judge): what ``RewardContext.engine`` returns
    (rlkit.rollout.text.TextEngine: a colocated copy of a model, or vLLM servers)."""

    def complete(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """One completion per prompt, each prompt a user message put through the model's chat template."""


@dataclass
class RewardContext:
    """What a reward's ``setup(context)`` gets: where it runs and what it may use. ``memory_left``: bytes free on
    ``device`` once the rollout engine holds its share (CUDA: the GPU's free memory; CPU: available RAM).
    ``tokenizer``: the policy's (its token ids are the completions' ``completion_ids``); ``max_new_tokens``: the
    run's completion cap; ``engines``: the models of the config's ``reward_engines`` by name (``engine(name)``)."""

    device: Any
    rank: int = 0
    world_size: int = 1
    dtype: Any = None
    memory_left: int | None = None
    tokenizer: Any = None
    max_new_tokens: int = 0
    engines: dict = field(default_factory=dict)

    def engine(self, name: str) -> TextModel:
        """The reward engine ``name`` of the config's ``reward_engines``; a KeyError naming the configured ones."""
        if name not in self.engines:
            have = ", ".join(sorted(self.engines)) or "none"
            raise KeyError(f"no reward engine {name!r} is configured (reward_engines: {have}); add "
                           f"`reward_engines: {{{name}: {{engine: hf, model: PATH}}}}` to the config")
        return self.engines[name]

    @classmethod
    def here(cls, device, rank: int = 0, world_size: int = 1, dtype=None, **more) -> RewardContext:
        """The context of this process, with the memory free now (call it after the rollout engine is built)."""
        left = None
        if device is not None and torch.device(device).type == "cuda":
            left = int(torch.cuda.mem_get_info(device)[0])
        else:
            try:
                import psutil

                left = int(psutil.virtual_memory().available)
            except ImportError:
                pass
        return cls(device=device, rank=rank, world_size=world_size, dtype=dtype, memory_left=left, **more)


def built_reward(term, entry: registry.Entry, where: str, source: str = "config") -> Any:
    """The reward function a configured term (at config key ``where``) describes, built now; a factory that returns
    something other than a reward function is a ConfigError naming the term."""
    fn = registry.build_entry(entry, term.kwargs, f"{where} ({term.name})", source)
    if not callable(fn):
        raise ConfigError(f"{source}: {where} ({term.name}): the factory returned {type(fn).__name__} {fn!r:.60}, "
                          "not a reward function")
    return fn


def make_term(term, label: str, fn: Any = None) -> Term:
    """A configured reward term (rlkit.config.RewardTerm) as a Term: ``fn``, the component the run's set-up built
    from the term (rlkit.trainers.stages.build_components), or built now from what the term says; with its
    declarations: verifier, timeouts ("own": no thread watchdog, whose whole-batch limit would grow with the
    batch), batch_errors."""
    entry = registry.resolve("reward", term.name, factory=term.factory)
    if fn is None:
        fn = built_reward(term, entry, label)
    caps = registry.capabilities(fn, entry.flags, kind="reward")
    if "errors" in caps.reports:  # reward/<term>/errors counts the term's failed samples
        raise RewardError(f"reward {label!r} declares a report named 'errors', the name of its failure count; "
                          "choose another key")
    timeout = 0.0 if caps.timeouts == "own" else float(term.timeout)
    return Term(label, float(term.weight), fn, term.format, bool(term.correctness or caps.verifier), timeout,
                term.on_error, caps.batch_errors, caps.shape, tuple(caps.reports))


@dataclass
class Reported:
    """What a reward that declares ``reports`` returns: ``values``, what any reward of its shape returns, and
    ``reports``, per declared key one number or None per sample: diagnostics of the scoring that later stages read
    (DECS's curriculum reads the necessary-prefix ratio its redundancy reward finds), never added to a reward. They
    become the batch's columns "<term>/<key>" (``RewardValues.terms``; None is NaN) and the metrics
    reward/<term>/<key> (the mean over the samples that have one). A call that fails reports nothing (NaN)."""

    values: Any
    reports: dict


def _term_labels(reward_terms) -> list[str]:
    """Each configured term's label: its short name, numbered when it repeats (``_term_label``)."""
    labels: list[str] = []
    taken: set[str] = set()
    for term in reward_terms:
        labels.append(_term_label(term.name, taken))
        taken.add(labels[-1])
    return labels


def _columns(label: str, reports) -> list[str]:
    """A term's columns in ``RewardValues.terms``: its label, then "<label>/<key>" for each value it reports."""
    return [label, *(f"{label}/{k}" for k in reports)]


def reward_columns(reward_terms, built: list) -> list[str]:
    """The columns a batch's ``terms`` will have for the configured terms and their ``built`` components (in order),
    as ``RewardSet.labels`` gives them once the set is made."""
    out = []
    for term, label, fn in zip(reward_terms, _term_labels(reward_terms), built):
        entry = registry.resolve("reward", term.name, factory=term.factory)
        out += _columns(label, registry.capabilities(fn, entry.flags, kind="reward").reports)
    return out


@dataclass
class RewardValues:
    """Per-sample rewards of one batch.

    total: [N] float32, sum of weight * term over the terms that apply (None terms are skipped).
    terms: term name -> [N] float32, NaN where the term returned None (or failed under ``on_error: none``); and
    for each value a term reports (``Reported``), "<term>/<key>" -> [N] float32, NaN where it reported None.
    errors: term name -> number of samples whose call failed (raised or timed out), for every term with
    ``on_error: none`` (0 included, so dashboards always have the series).
    tokens: the per-token rewards of the terms that declare shape "tokens" or "chunks" (chunks already spread over
    their tokens), ``sum_k weight_k * values_k`` per sample as a float32 tensor of the completion's length (a term
    that returned None for a sample adds nothing to it); None when no term is token-shaped. Such a term is not in
    ``total`` (a scalar estimator never sees it): its ``terms`` entry is the per-sample sum of its values, what
    the metrics report.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    errors: dict[str, int] = field(default_factory=dict)
    tokens: list[torch.Tensor] | None = None


def _term_label(name: str, taken: set[str]) -> str:
    label = registry.short_name(name)
    base, i = label, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _short(text, n: int = 200) -> str:
    if isinstance(text, list) and text and isinstance(text[-1], dict):
        text = text[-1].get("content", "")
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class Term:
    """One configured reward term. ``timeout``: seconds per call (a whole batch), 0 = no limit (inline call);
    ``on_error``: "raise" or "none" (see the module doc)."""

    label: str
    weight: float
    fn: Callable
    format: str = "text"  # "text" | "conversational"
    correctness: bool = False
    timeout: float = 120.0
    on_error: str = "raise"  # "raise" | "none"
    batch_errors: str = "per_sample"  # the reward's declaration: "per_sample" | "whole_batch" (no single-sample retry)
    shape: str = "scalar"  # the reward's declaration: "scalar" | "tokens" | "chunks" (RewardCaps.shape)
    reports: tuple = ()  # the reward's declaration: keys of the per-sample values it reports (RewardCaps.reports)

    def __post_init__(self):
        if self.on_error not in ("raise", "none"):
            raise RewardError(f"reward {self.label!r}: on_error must be 'raise' or 'none', got {self.on_error!r}")
        if not self.timeout >= 0:
            raise RewardError(f"reward {self.label!r}: timeout must be >= 0 seconds (0 = no limit), "
                              f"got {self.timeout!r}")


def call_with_timeout(fn: Callable, kwargs: dict, timeout: float, name: str = "reward") -> Any:
    """``fn(**kwargs)``, waiting at most ``timeout`` seconds (0 = inline, no limit) for it on a daemon
    thread; RewardTimeout when it is late (the call is abandoned, still running). Exceptions pass through.

    A daemon ``threading.Thread`` rather than an executor: an executor joins its threads at exit, so one
    hung reward would hang the interpreter's exit."""
    if timeout <= 0:
        return fn(**kwargs)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target():
        try:
            box["value"] = fn(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name=f"rlkit-reward-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise RewardTimeout(timeout)
    if "error" in box:
        raise box.pop("error")
    return box["value"]


@dataclass
class _Batch:
    """The inputs of one term call, with what error messages need: the step (0-based index, or None), a
    short text per sample (its question column, else its prompt) and the phase (e.g. the evaluation)."""

    prompts: list
    completions: list
    completion_ids: list
    kwargs: dict
    step: int | None
    excerpts: list
    phase: str = ""

    @classmethod
    def of(cls, term: Term, prompts: Sequence, completions: Sequence, completion_ids: Sequence, kwargs: dict,
           step: Any = None, phase: str = "") -> _Batch:
        """The batch as ``term`` sees it (TRL's chat shapes for format "conversational")."""
        questions = kwargs.get("question", prompts)
        if term.format == "conversational":
            prompts = [[{"role": "user", "content": q}] for q in questions]
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        step = step if isinstance(step, int) and not isinstance(step, bool) else None
        return cls(list(prompts), list(completions), list(completion_ids), kwargs, step,
                   [_short(q, 100) for q in questions], phase)

    def __len__(self) -> int:
        return len(self.completions)

    def call_kwargs(self) -> dict:
        return {"prompts": self.prompts, "completions": self.completions, "completion_ids": self.completion_ids,
                **self.kwargs}

    def one(self, i: int) -> dict:
        """The call kwargs of sample i alone (every per-sample list cut to its entry)."""
        n = len(self)
        kw = {k: ([v[i]] if isinstance(v, list) and len(v) == n else v) for k, v in self.kwargs.items()}
        return {"prompts": [self.prompts[i]], "completions": [self.completions[i]],
                "completion_ids": [self.completion_ids[i]], **kw}

    def sample(self, i: int) -> str:
        return f"sample {i} (prompt: {self.excerpts[i]!r})"

    def at(self, i: int | None = None) -> str:
        """' at step S, sample i (prompt: ...)': step 1-based; parts that are unknown are left out."""
        parts = [] if self.step is None else [f"step {self.step + 1}"]
        if i is not None:
            parts.append(self.sample(i))
        where = " at " + ", ".join(parts) if parts else ""
        return f" in {self.phase}{where}" if self.phase else where


class RewardSet:
    """The configured reward terms, scored in one call.

    The correctness term (a registered verifier such as ``math_correct``, or a term with
    ``correctness: true``) is scored first; its values reach every other term as the kwarg ``correct``
    (list of 0/1 or None), so length terms can gate on correctness without re-running the verifier.
    format "conversational" hands a term TRL's conversational shapes: each prompt as
    ``[{"role": "user", "content": question}]`` and each completion as ``[{"role": "assistant", "content": text}]``.
    Each term runs under its ``timeout`` watchdog with its ``on_error`` policy (module doc).
    """

    def __init__(self, terms: Sequence[Term | tuple]):
        if not terms:
            raise ValueError("RewardSet needs at least one reward term")
        self.terms = [t if isinstance(t, Term) else Term(*t) for t in terms]
        if sum(t.correctness for t in self.terms) > 1:
            raise ValueError("at most one reward term can be the correctness term, got "
                             + ", ".join(t.label for t in self.terms if t.correctness))
        for t in self.terms:
            if t.correctness and t.shape != "scalar":
                raise ValueError(f"reward {t.label!r} returns {t.shape}: the correctness term must return one 0/1 "
                                 "value per sample")
        self.warned: set[str] = set()  # terms already warned about (all None), so each warns once per run

    @classmethod
    def from_config(cls, reward_terms, shaping=None, built: list | None = None) -> RewardSet:
        """The configured terms: ``built`` (their components, in order, as the run's set-up built them), else
        built now from what each term says. Weights that are all 0 warn once (``shaping``: the configured shaping
        stages; given, with none of them configured, all-zero weights are an error, see ``check_weights``)."""
        notice = check_weights(reward_terms, shaping)
        if notice:
            log.warning("%s", notice)
        return cls([make_term(term, label, built[i] if built is not None else None)
                    for i, (term, label) in enumerate(zip(reward_terms, _term_labels(reward_terms)))])

    # lifecycle: every term's optional hooks (rlkit.registry.hooks), called by the trainer once each

    def setup(self, context: RewardContext) -> None:
        """Each term's ``setup(context)``, once, after the rollout engine is built (so ``memory_left`` is what the
        engine left). A hook that raises or calls ``sys.exit`` is one RewardError naming the reward and the hook."""
        for t in self.terms:
            if "setup" in registry.hooks(t.fn):
                _hook(t, "setup", context)

    def close(self, deadline: float | None = None) -> list[str]:
        """Each term's ``close()`` under a deadline (the term's ``timeout``, else ``CLOSE_TIMEOUT`` seconds; or
        ``deadline``); returns one warning line per term that raised, exited or did not return in time (the others
        still close; the run's outcome is decided by then, and a close that hangs is left behind on a daemon thread
        so the run can end and release its lock)."""
        lines = []
        for t in self.terms:
            if "close" not in registry.hooks(t.fn):
                continue
            limit = deadline if deadline is not None else (t.timeout or CLOSE_TIMEOUT)
            try:
                call_with_timeout(t.fn.close, {}, limit, f"{t.label}-close")
            except RewardTimeout:
                lines.append(f"reward {t.label!r}: close() did not return within {limit:g} s; the run ends without "
                             "waiting for it")
            except (Exception, SystemExit) as e:  # noqa: BLE001 - close the others
                lines.append(f"reward {t.label!r}: close() {_what(e)}")
        for line in lines:
            log.warning("%s", line)
        return lines

    def state_dict(self) -> dict:
        """{term label: its state} for the terms with ``state_dict``: JSON values (saved in the checkpoint), checked
        here, before anything is written, so a state that is not JSON is one line naming the reward."""
        out = {}
        for t in self.terms:
            if "state_dict" in registry.hooks(t.fn):
                state = _hook(t, "state_dict")
                try:
                    json.dumps(state, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise RewardError(f"reward {t.label!r}: state_dict() returned a state that is not JSON "
                                      f"({type(e).__name__}: {e}); return dicts, lists, strings, finite numbers, "
                                      "booleans and None") from None
                out[t.label] = state
        return out

    def load_state_dict(self, state: dict) -> None:
        for t in self.terms:
            if t.label in state and "load_state_dict" in registry.hooks(t.fn):
                _hook(t, "load_state_dict", state[t.label])

    @property
    def labels(self) -> list[str]:
        """The keys of ``RewardValues.terms``: each term's label, then the "<term>/<key>" of what it reports."""
        return [x for t in self.terms for x in _columns(t.label, t.reports)]

    @property
    def token_shaped(self) -> bool:
        """Some term returns per-token values (shape "tokens" or "chunks")."""
        return any(t.shape != "scalar" for t in self.terms)

    def verifier(self) -> Term | None:
        return next((t for t in self.terms if t.correctness), None)

    @property
    def correctness_label(self) -> str | None:
        return next((t.label for t in self.terms if t.correctness), None)

    def __call__(self, prompts: Sequence, completions: Sequence[str], completion_ids: Sequence,
                 columns: dict[str, list], **context) -> RewardValues:
        """Score a batch. `columns` maps dataset column -> per-sample list; `context` adds
        finish_reason (list), num_tokens (list) and step (int, 0-based), all passed through as kwargs."""
        n = len(completions)
        kwargs = {**columns, **context}
        terms: dict[str, torch.Tensor] = {}
        errors: dict[str, int] = {}
        total = torch.zeros(n, dtype=torch.float32)
        tokens = [torch.zeros(len(ids), dtype=torch.float32) for ids in completion_ids] if self.token_shaped else None
        for term in sorted(self.terms, key=lambda t: not t.correctness):  # the verifier first
            batch = _Batch.of(term, prompts, completions, completion_ids, kwargs, context.get("step"))
            values, failed, reported = score_term(term, batch)
            if term.on_error == "none":
                errors[term.label] = failed
            if term.correctness:
                kwargs["correct"] = values
            # a term that gives no sample a value (not because every call failed: on_error none said so already)
            if values and failed < len(values) and all(v is None for v in values) and term.label not in self.warned:
                self.warned.add(term.label)
                log.warning("%s", _all_none_warning(term, batch))
            if term.shape != "scalar":  # per-token values: summed into the token rewards, reported by their sum
                for row, v in zip(tokens, values):
                    if v is not None:
                        row += term.weight * torch.tensor(v, dtype=torch.float32)
                values = [None if v is None else math.fsum(v) for v in values]
            t = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
            terms[term.label] = t
            for key in term.reports:
                terms[f"{term.label}/{key}"] = torch.tensor(
                    [math.nan if v is None else v for v in reported.get(key, [None] * n)], dtype=torch.float32)
            if term.shape == "scalar":
                total += term.weight * torch.nan_to_num(t, nan=0.0)
        return RewardValues(total=total, terms={k: terms[k] for k in self.labels},
                            errors={t.label: errors[t.label] for t in self.terms if t.label in errors}, tokens=tokens)


def _all_none_warning(term: Term, batch: _Batch) -> str:
    answers = batch.kwargs.get("answer")
    hint = ""
    if term.correctness and isinstance(answers, list) and answers and all(a is None for a in answers):
        hint = "; the samples have no gold answer (data.answer_key: none, or a data file without answers?)"
    return (f"reward {term.label!r} returned None for all {len(batch)} samples{batch.at()}: None is masked, never "
            f"counted as 0, so the term adds nothing to their reward and reward/{term.label} is reported as null"
            f"{hint} (warned once per run)")


def check_weights(reward_terms, shaping=None) -> str | None:
    """Every weight 0 means a combined reward of 0 for every sample: the advantages are all 0 and nothing trains,
    unless a shaping stage rebuilds the reward (``grpo_lambda`` rebuilds it from the verifier; ``kimi``,
    ``laser_d`` add bonuses). ``shaping``: the configured shaping stages (components or names); ``None`` when
    unknown. Returns the warning to print (all weights 0 with shaping stages, or stages unknown), else None;
    raises RewardError when the weights are all 0 and ``shaping`` is given and empty: nothing can train."""
    terms = list(reward_terms)
    if not terms or any(float(getattr(t, "weight", 1.0)) != 0 for t in terms):
        return None
    names = ", ".join(registry.short_name(str(getattr(t, "name", t))) for t in terms)
    what = f"every reward weight is 0 ({names}): the combined reward is 0 for every sample"
    if shaping is not None and not list(shaping):
        raise RewardError(f"{what}, so the advantages are all 0 and nothing trains; give the term that should "
                          "drive training a non-zero weight (e.g. math_correct, weight 1.0)")
    stages = ", ".join(str(getattr(s, "name", s)) for s in shaping or ())
    if stages:
        return f"{what}; only the shaping stages ({stages}) can give it a signal, else nothing trains"
    return f"{what}: unless a shaping stage rebuilds the reward, the advantages are all 0 and nothing trains"


class GuardedReward:
    """One term as a plain reward callable (TRL's signature) with the term's watchdog, ``on_error`` and
    checks: the held-out evaluation's verifier. ``phase`` names where it runs in error messages."""

    def __init__(self, term: Term, phase: str = ""):
        self.term, self.phase = term, phase

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float | None]:
        step = None if self.phase else kwargs.get("step")
        values, _, _ = score_term(self.term, _Batch.of(self.term, prompts, completions, completion_ids, kwargs,
                                                       step, self.phase))
        return values


CLOSE_TIMEOUT = 30.0  # seconds a reward's close() may take when its term has no timeout (timeout: 0)


def _what(e: BaseException) -> str:
    """'raised ValueError: msg' or 'called sys.exit(4)': what a hook did, in a few words."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    return f"raised {type(e).__name__}: {' '.join(str(e).split()) or '(no message)'}"


def _hook(term: Term, name: str, *args):
    """A lifecycle hook of ``term`` (setup, state_dict, load_state_dict): its exception or ``sys.exit`` becomes one
    RewardError naming the reward and the hook (a bug in the reward, not in rlkit)."""
    try:
        return getattr(term.fn, name)(*args)
    except (Exception, SystemExit) as e:
        raise RewardError(f"reward {term.label!r}: {name}() {_what(e)}") from None


def score_term(term: Term, batch: _Batch) -> tuple[list, int, dict]:
    """One term on a batch under its watchdog: (value or None per sample, number of failed samples, what it reports:
    key -> finite number or None per sample, {} when the call failed). A reward that calls ``sys.exit`` stops the run
    naming it, whatever its on_error (it is a bug in the reward, not a sample's failure)."""
    try:
        raw = call_with_timeout(term.fn, batch.call_kwargs(), term.timeout, term.label)
    except SystemExit as e:
        raise RewardError(f"reward {term.label!r} called sys.exit({e.code!r}){batch.at()}; a reward returns its "
                          "values (None where one does not apply) or raises") from None
    except Exception as e:
        if term.on_error == "raise":
            _raise_located(term, batch, e)
        return (*_mask_failures(term, batch, e), {})
    return _check(term, raw, batch, list(range(len(batch)))), 0, _reports(term, raw, batch)


def _reports(term: Term, raw: Any, batch: _Batch) -> dict:
    """The values a term reports (``Reported``), checked against its declaration: every declared key, one finite
    number or None per sample."""
    if not term.reports:
        if isinstance(raw, Reported):
            raise RewardError(f"reward {term.label!r} returned Reported values{batch.at()} but declares no `reports`: "
                              "register it with reports=(...) naming the keys")
        return {}
    if not isinstance(raw, Reported):
        raise RewardError(f"reward {term.label!r} declares reports {list(term.reports)} but returned "
                          f"{_returned(raw)[0]}{batch.at()}; return rlkit.rewards.Reported(values, {{key: values}})")
    got = raw.reports if isinstance(raw.reports, collections.abc.Mapping) else {}
    if sorted(got) != sorted(term.reports):
        raise RewardError(f"reward {term.label!r} reported {sorted(got)}{batch.at()}; it declares "
                          f"{sorted(term.reports)}")
    out = {}
    for key in term.reports:
        values = got[key]
        if not _is_sequence(values) or len(values) != len(batch):
            what = f"{len(values)} values" if _is_sequence(values) else _returned(values)[0]
            raise RewardError(f"reward {term.label!r} reported {key!r} as {what} for {len(batch)} completions"
                              f"{batch.at()}; expected one number or None per completion")
        out[key] = [None if v is None else _number(term, v, batch, i, f"its report {key!r}")
                    for i, v in enumerate(values)]
    return out


_FLOAT32_MAX = registry.FLOAT32_MAX  # one bound for config values and reward values


def _sample_of(e: BaseException, n: int) -> int | None:
    """The failing sample an exception names itself (``.sample``, e.g. from the reward pool), if valid."""
    i = getattr(e, "sample", None)
    return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n else None


def _describe(e: BaseException) -> str:
    if isinstance(e, RewardTimeout):
        return str(e)
    if isinstance(e, TimeoutError):  # e.g. a pool's per-sample deadline
        return f"timed out ({e})"
    return f"raised {type(e).__name__}: {e}"


def _raise_located(term: Term, batch: _Batch, e: Exception) -> None:
    """on_error raise: find the failing sample (``e.sample``, else the first sample that fails alone) and
    raise a RewardError naming the reward, step and sample."""
    idx, err = _sample_of(e, len(batch)), e
    if idx is None and term.batch_errors == "per_sample":
        for i in range(len(batch)):
            try:
                call_with_timeout(term.fn, batch.one(i), term.timeout, term.label)
            except Exception as probe_error:
                idx, err = i, probe_error
                break
    hint = ""
    if term.format == "text" and isinstance(err, TypeError) and "indices must be integers" in str(err):
        hint = ("; it reads completions as chat messages: set `format: conversational` on this reward "
                "term (TRL's conversational rewards)")
    elif "signal only works in main thread" in str(err) or "threaded environment" in str(err):
        hint = ("; the reward sets its own signal-based timeout, which needs the main thread: set `timeout: 0` on "
                "this reward term (it is then called inline, without rlkit's watchdog)")
    elif idx is None and isinstance(err, RewardTimeout):
        hint = (f" on a batch of {len(batch)} samples, though no single sample times out alone: the batch is too "
                "slow for this term's `timeout` (raise it, or 0 for no limit)")
    elif idx is None and term.batch_errors == "whole_batch":
        hint = f" on a batch of {len(batch)} samples (it declares batch_errors: whole_batch: no sample is retried alone)"
    elif idx is None:
        hint = " (no single sample fails alone)"
    raise RewardError(f"reward {term.label!r} {_describe(err)}{batch.at(idx)}{hint}") from err


def _mask_failures(term: Term, batch: _Batch, e: Exception) -> tuple[list, int]:
    """on_error none: the values of the samples that succeed (from the exception's ``.values`` /
    ``.failed`` when it carries them, else one call per sample), None at the failing ones; one warning."""
    n = len(batch)
    if n == 0:
        log.warning("reward %r %s on an empty batch%s (on_error: none)", term.label, _describe(e), batch.at())
        return [], 0
    values: list = [None] * n
    failures: dict[int, str] = _reported_failures(e, n)
    if failures:  # the reward said which samples failed and gave the values of the others
        ok = [i for i in range(n) if i not in failures]
        partial = e.values  # type: ignore[attr-defined]
        for i, v in zip(ok, _check(term, [partial[i] for i in ok], batch, ok)):
            values[i] = v
    elif term.batch_errors == "whole_batch":  # declared: the batch fails as a unit, no N single-sample calls
        failures = dict.fromkeys(range(n), f"{_describe(e)} on the whole batch (batch_errors: whole_batch)")
    else:
        timed_out = 0
        for i in range(n):
            if timed_out >= MAX_TIMED_OUT_PROBES:
                failures[i] = f"not tried after {timed_out} samples timed out alone"
                continue
            try:
                raw = call_with_timeout(term.fn, batch.one(i), term.timeout, term.label)
            except Exception as probe_error:
                failures[i] = _describe(probe_error)
                timed_out += isinstance(probe_error, RewardTimeout)
                continue
            values[i] = _check(term, raw, batch, [i])[0]
        if not failures:  # every sample passes alone: the batch call itself is what fails
            failures = dict.fromkeys(range(n), f"{_describe(e)} on the whole batch; every sample passes alone")
            values = [None] * n
    first = min(failures)
    log.warning("reward %r: %d of %d samples failed%s and are masked (on_error: none); the first, %s: %s",
                term.label, len(failures), n, batch.at(), batch.sample(first), failures[first])
    return values, len(failures)


def _reported_failures(e: BaseException, n: int) -> dict[int, str]:
    """index -> reason of the failed samples an exception reports itself (the reward pool's ``.sample``,
    ``.values`` with n entries and ``.failed``: indices, or index -> exception / text); {} if it does not."""
    partial, failed = getattr(e, "values", None), getattr(e, "failed", None)
    if _sample_of(e, n) is None or not isinstance(partial, Sequence) or len(partial) != n or not failed:
        return {}
    try:
        indices = sorted(failed)
    except TypeError:
        return {}
    if not all(isinstance(i, int) and 0 <= i < n for i in indices):
        return {}
    reasons = failed if isinstance(failed, collections.abc.Mapping) else dict.fromkeys(indices, e)
    return {i: _describe(reasons[i]) if isinstance(reasons[i], BaseException) else str(reasons[i])
            for i in indices}


def _returned(raw: Any) -> tuple[str, str]:
    """What a reward returned instead of a list, and a hint for the usual cause."""
    if raw is None:
        return "None", ""
    if inspect.isgenerator(raw):
        raw.close()
        return "a generator", " (a `yield` in the reward function? return a list)"
    if inspect.iscoroutine(raw):
        raw.close()
        return "a coroutine", " (an `async def` reward? rewards are called synchronously)"
    if isinstance(raw, collections.abc.Iterator):
        return f"an iterator ({type(raw).__name__})", " (wrap it in list(...))"
    if isinstance(raw, (str, bytes)):
        return f"a string ({_short(raw, 60)!r})", ""
    if isinstance(raw, (numbers.Number, torch.Tensor)) and getattr(raw, "ndim", 0) == 0:
        return f"a single number ({raw!r})", " (one value per completion is needed)"
    if isinstance(raw, (set, frozenset)):
        return f"a {type(raw).__name__}", " (unordered: values must follow the order of the completions)"
    if isinstance(raw, collections.abc.Mapping):
        return f"a {type(raw).__name__}", ""
    if hasattr(raw, "shape"):
        return f"an array of shape {tuple(raw.shape)}", ""
    return f"a {type(raw).__name__}", ""


def _is_sequence(raw: Any) -> bool:
    if isinstance(raw, (str, bytes, bytearray)):
        return False
    if isinstance(raw, torch.Tensor) or type(raw).__module__ == "numpy":
        return getattr(raw, "ndim", 0) == 1
    return isinstance(raw, collections.abc.Sequence)


def _check(term: Term, raw: Any, batch: _Batch, idx: list[int]) -> list[float | None]:
    """``raw`` must hold one number or None for each sample of ``idx`` (indices into the batch, for messages); for a
    term of shape "tokens" / "chunks", one per-token list or span list (``_check_tokens``)."""
    n, label = len(idx), term.label
    if isinstance(raw, Reported):
        raw = raw.values
    if not _is_sequence(raw):
        what, hint = _returned(raw)
        raise RewardError(f"reward {label!r} returned {what} for {n} completions{batch.at()}; expected a list of "
                          f"{n} numbers (None where it does not apply), one per completion{hint}")
    if len(raw) != n:
        raise RewardError(f"reward {label!r} returned {len(raw)} values for {n} completions{batch.at()} "
                          f"(first prompt: {batch.excerpts[idx[0]] if n else ''!r})")
    if term.shape != "scalar":
        return [None if v is None else _check_tokens(term, v, batch, i) for i, v in zip(idx, raw)]
    out: list[float | None] = []
    for i, v in zip(idx, raw):
        if v is None:
            out.append(None)
            continue
        if _is_sequence(v):
            raise RewardError(f"reward {label!r} declares shape scalar but returned a sequence for one sample"
                              f"{batch.at(i)}: declare shape='tokens' (one value per completion token) or 'chunks' "
                              "((start, end, value) spans) when registering it")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) and not (
                isinstance(v, torch.Tensor) and v.numel() == 1):
            raise RewardError(f"reward {label!r} returned {v!r} (not a number or None){batch.at(i)}")
        if not math.isfinite(float(v)):
            raise RewardError(f"reward {label!r} returned {float(v)}{batch.at(i)}")
        if abs(float(v)) > _FLOAT32_MAX:  # rewards are stored as float32: it would become +-3.4e38 silently
            raise RewardError(f"reward {label!r} returned {float(v):g}, beyond float32's range (+-{_FLOAT32_MAX:.3g})"
                              f"{batch.at(i)}")
        out.append(float(v))
    return out


def _number(term: Term, v: Any, batch: _Batch, i: int, what: str) -> float:
    """One finite float32 value of a token or chunk reward, or a RewardError naming the sample and the place."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) and not (isinstance(v, torch.Tensor) and v.numel() == 1):
        raise RewardError(f"reward {term.label!r} returned {v!r} at {what} (not a number){batch.at(i)}")
    v = float(v)
    if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
        raise RewardError(f"reward {term.label!r} returned {v:g} at {what}{batch.at(i)}")
    return v


def _check_tokens(term: Term, raw: Any, batch: _Batch, i: int) -> list[float]:
    """Sample i's value of a token-shaped term as one float per completion token. Shape "tokens": a sequence of
    len(completion_ids) numbers. Shape "chunks": a sequence of spans ``(start, end, value)`` or ``((start, end),
    value)``, token positions of the completion with 0 <= start < end <= its length; a token outside every span gets
    0, one inside several gets their sum."""
    n = len(batch.completion_ids[i])
    if not _is_sequence(raw):
        what, hint = _returned(raw)
        raise RewardError(f"reward {term.label!r} declares shape {term.shape} but returned {what} for one sample"
                          f"{batch.at(i)}{hint}")
    if term.shape == "tokens":
        if len(raw) != n:
            raise RewardError(f"reward {term.label!r} returned {len(raw)} token values for a completion of {n} "
                              f"tokens{batch.at(i)}")
        return [_number(term, v, batch, i, f"token {t}") for t, v in enumerate(raw)]
    out = [0.0] * n
    for k, chunk in enumerate(raw):
        parts = list(chunk) if _is_sequence(chunk) else []
        if len(parts) == 2 and _is_sequence(parts[0]):
            parts = [*parts[0], parts[1]]
        if len(parts) != 3 or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in parts[:2]):
            raise RewardError(f"reward {term.label!r} returned chunk {k} = {chunk!r:.80}{batch.at(i)}: a chunk is "
                              "(start, end, value) or ((start, end), value) with integer token positions")
        start, end = int(parts[0]), int(parts[1])
        if not 0 <= start < end <= n:
            raise RewardError(f"reward {term.label!r} returned chunk {k} spanning tokens [{start}, {end}) of a "
                              f"completion of {n} tokens{batch.at(i)}: need 0 <= start < end <= {n}")
        value = _number(term, parts[2], batch, i, f"chunk {k}")
        for t in range(start, end):
            out[t] += value
    return out
