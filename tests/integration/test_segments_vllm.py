"""Segment rollouts on the real vLLM CPU engine and through the trainer (rollout.segments)."""

import json

import torch

from rlkit.data import Prompt
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.segments import SegmentRolloutWorker

TOL_LOGPROB = 1e-4


def _prompt(tok, q="Tom has 3 apples and buys 4 more. How many apples?"):
    text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    return Prompt(tok(text, add_special_tokens=False)["input_ids"], text, {"question": q})


def test_greedy_segments_equal_one_call_tokens_and_logprobs(engine, tiny_model_dir):
    from rlkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [_prompt(tok), _prompt(tok, "What is 7 times 6?")]
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=96, seed=0)  # vLLM: greedy means n = 1
    whole = engine.generate([p.ids for p in prompts], spec)
    worker = SegmentRolloutWorker(engine, segment_len=24, max_total_len=96, min_groups=2, decode=tok.decode)
    released, m = worker.step(prompts, spec, step=0)
    assert m["segments/rounds"] >= 2  # really decoded in several segments
    got = {g.prompt.text: g.members for g in released}
    for k, p in enumerate(prompts):
        for member, ref in zip(got[p.text], whole[k:k + 1]):
            assert member.completion_ids == ref.completion_ids
            assert member.finish_reason == ref.finish_reason
            assert max(abs(a - b) for a, b in zip(member.logprobs, ref.logprobs)) < TOL_LOGPROB
            if ref.num_tokens > 24:
                assert member.segments[0] == 0 and member.segments[-1] == (ref.num_tokens - 1) // 24


def test_continuation_after_a_weight_update_comes_from_the_new_weights(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    p = _prompt(tok)
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=64, seed=0)
    worker = SegmentRolloutWorker(engine, segment_len=16, max_total_len=64, min_groups=0)
    worker.step([p], spec, step=0)
    assert worker.pool and not worker.pool[0].done[0], "the tiny model stopped within 16 greedy tokens"
    first = worker.pool[0].members[0]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    torch.manual_seed(3)
    with torch.no_grad():
        for t in model.parameters():
            t.add_(0.3 * torch.randn_like(t))
    v0 = engine.version
    try:
        engine.update_weights(model.state_dict().items())
        released, _ = worker.step([], spec, step=1)
        member = (released[0] if released else worker.pool[0]).members[0]
        assert member.num_tokens > 16
        assert member.versions[:16] == [v0] * 16 and set(member.versions[16:]) == {v0 + 1}
        assert member.segments[:16] == [0] * 16 and set(member.segments[16:32]) == {1}
        # the continuation is exactly what the updated model generates greedily from prompt + prefix
        prefix = p.ids + first.completion_ids
        hf = model.generate(torch.tensor([prefix]), do_sample=False, max_new_tokens=16,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prefix):].tolist()
        assert member.completion_ids[16:32] == hf[:len(member.completion_ids[16:32])]
    finally:
        engine.update_weights(
            AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).state_dict().items())


def test_seeded_k_sample_calls_over_the_token_budget_run_and_repeat(engine, tiny_model_dir):
    """An evaluation-sized call (many prompts, n samples each) needs more prefill tokens than one scheduler step
    holds; seeded requests must neither crash vLLM's CPU runner nor lose their seeds."""
    from rlkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [_prompt(tok, f"Sam has {k} red apples and {k + 3} green apples and eats {k % 5}. How many are left?").ids
               for k in range(64)]
    spec = SamplingSpec(n=4, temperature=1.0, max_new_tokens=3, seed=11)
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(len(p) for p in prompts) * spec.n > budget  # the case that used to split seeded prefills
    runs = []
    for _ in range(2):
        engine.llm.reset_prefix_cache()
        runs.append(engine.generate(prompts, spec))
    assert len(runs[0]) == 64 * 4 and all(1 <= s.num_tokens <= 3 for s in runs[0])
    assert [s.completion_ids for s in runs[0]] == [s.completion_ids for s in runs[1]]


def test_trainer_with_segments_checkpoints_and_resumes_the_pool(tiny_model_dir, tmp_path):
    from rlkit.api import train
    from rlkit.config import load_config

    def cfg(steps, **extra):
        return load_config(overrides={
            "model.name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "train.steps": steps,
            "rollout.prompts_per_step": 2, "rollout.group_size": 3, "rollout.max_new_tokens": 40,
            "rollout.segments": 4, "rollout.segment_min_groups": 1, "rollout.temperature": 1.0,
            "rollout.kv_cache_gib": 1, "eval.size": 2, "eval.before": False, "eval.after": False,
            "rewards": [{"name": "helpers:digit_fraction"}, {"name": "math_correct", "weight": 0.0}],
            "token_masks": [{"name": "dmmpt", "kwargs": {"sigma": 100.0, "tau": 0.01}}],
            "sample_transforms": ["zero_truncated"],
            "checkpoint.every": 1, "logging.progress": False, **extra})

    result = train(cfg(2))
    m = result.last_metrics
    for key in ("segments/rounds", "segments/released_groups", "segments/pool_groups", "segments/mean_wait_steps",
                "segments/mean_segments", "transforms/zero_truncated/zeroed", "mask/dmmpt/masked_frac"):
        assert key in m, key
    assert m["segments/released_groups"] >= 1
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    pools = state["rollout"]
    assert len(pools) == 1 and "pool" in pools[0]
    saved_keys = {g["key"] for g in pools[0]["pool"]}
    # resume: the saved pool is loaded and its groups are the first candidates for release
    result = train(cfg(3), resume="auto")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "reward/mean" in x] == [1, 2, 3]
    final = json.loads((tmp_path / "run" / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert final["rollout"][0]["next_key"] == pools[0]["next_key"] + 2  # two new groups in step 3
    still = {g["key"] for g in final["rollout"][0]["pool"]}
    released_in_3 = saved_keys - still
    assert saved_keys <= still | released_in_3  # nothing from the saved pool was lost
    assert result.last_metrics["segments/mean_wait_steps"] >= 0

