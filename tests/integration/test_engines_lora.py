"""The transformers-generate engine, LoRA with merged weight sync into vLLM, and `rlkit eval`."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from rlkit.config import load_config
from rlkit.rollout.base import SamplingSpec

ROOT = Path(__file__).parents[2]


def _cfg(model_dir, out, **over):
    base = {"model.name_or_path": str(model_dir), "output_dir": str(out), "train.steps": 2,
            "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 16, "rollout.kv_cache_gib": 1,
            "eval.size": 4, "optim.lr": 1e-2, "rewards": [{"name": "helpers:digit_fraction"}],
            "logging.progress": False, "eval.before": False}
    base.update(over)
    return load_config(overrides=base)


def test_hf_engine_generates_with_logprobs_matching_the_trainer(tiny_model_dir):
    from rlkit.models import load_policy, load_tokenizer
    from rlkit.parallel.batch import collate
    from rlkit.records import to_completion_space
    from rlkit.rollout.hf_engine import HFEngine
    from rlkit.trainers.batch import LogprobPolicy

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_policy(str(tiny_model_dir), torch.float32)
    engine = HFEngine(model, tok)
    prompts = [[5, 6, 7, 8], [9, 10]]
    samples = engine.generate(prompts, SamplingSpec(n=3, temperature=0.8, max_new_tokens=12, seed=1))
    assert [s.group_id for s in samples] == [0, 0, 0, 1, 1, 1]
    assert all(s.prompt_ids == prompts[s.group_id] and len(s.logprobs) == s.num_tokens for s in samples)
    with torch.no_grad():
        lp, _ = LogprobPolicy(model)(collate(samples, tok.pad_token_id), temperature=0.8)
    ref = to_completion_space([s.logprobs for s in samples], lp.shape[1])
    mask = collate(samples, tok.pad_token_id).completion_mask
    assert ((lp - ref).abs() * mask).max().item() < 1e-4


def test_training_with_the_hf_engine(tiny_model_dir, tmp_path):
    from rlkit.api import train

    m = train(_cfg(tiny_model_dir, tmp_path / "run", **{"rollout.engine": "hf"})).last_metrics
    assert m["policy_version"] == 2 and m["optim/grad_norm"] > 0 and m["loss/logprob_mismatch"] < 1e-4


def test_lora_trains_adapters_and_syncs_merged_weights_to_vllm(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlkit.api import setup, train

    cfg = _cfg(tiny_model_dir, tmp_path / "run", **{"model.lora.enabled": True, "model.lora.r": 4,
                                                   "algorithm.loss_options": {"kl_coef": 0.05}})
    result = train(cfg)
    assert result.last_metrics["loss/kl"] > 0  # reference = adapters off
    policy_dir = tmp_path / "run" / "checkpoints" / "step_000002" / "policy"
    adapter = load_file(str(policy_dir / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero and moved
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), policy_dir).merge_and_unload()

    # resume the run: the engine must now generate exactly what the merged model generates
    run = setup(cfg, resume="auto")
    ids = [5, 6, 7, 8, 9]
    got = run.engine.generate([ids], SamplingSpec(n=1, temperature=0.0, max_new_tokens=12, logprobs=False))[0]
    want = merged.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                           eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id)[0, 5:]
    assert got.completion_ids == want[:len(got.completion_ids)].tolist()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    base_out = base.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                             eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id)[0, 5:]
    assert got.completion_ids != base_out[:len(got.completion_ids)].tolist()


def test_rlkit_eval_prints_the_table(tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "eval", f"--model.name_or_path={tiny_model_dir}",
                           "--eval.size=3", "--rollout.max_new_tokens=8", "--rollout.kv_cache_gib=1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the default benchmark is the config's held-out slice; 8-token completions of a random model all truncate
    assert "| held_out  | 3 |" in proc.stdout and "| truncated" in proc.stdout and "100.0%" in proc.stdout
    result = json.loads((tmp_path / "evals" / "tiny-qwen2.json").read_text())
    assert result["benchmarks"]["held_out"]["truncation_rate"] == 1.0 and result["settings"]["k"] == 4


def test_every_example_config_parses(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "custom_reward"))
    configs = sorted((ROOT / "examples").glob("*/config.yaml"))
    assert len(configs) >= 3
    for path in configs:
        load_config(path, recipes=["dler"] if path.parent.name == "dler_curriculum" else None)
