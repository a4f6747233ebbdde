"""Models the reward terms use (``reward_engines``: a detector, a judge), served by a rollout engine and asked in
text: ``TextEngine.complete`` puts each prompt through the model's chat template as one user message and returns
the completions' texts (greedy at temperature 0). The trainer builds them (``make_reward_engines``) and hands them
to the rewards' ``setup(context)`` (rlkit.rewards.combine.RewardContext.engine).

- ``hf``: a second copy of the model in the trainer's process, transformers ``generate`` (rlkit.rollout.hf_engine);
  colocated, it never takes the policy's weights.
- ``vllm_server``: ``rlkit serve MODEL`` servers at ``server_urls`` (rlkit.rollout.server_engine), never sent the
  policy's weights (the model they were started with answers).
An in-process vLLM is not offered: vLLM holds one engine per process, and the rollout engine is that one.
"""

from __future__ import annotations

import copy

from rlkit.rollout.base import RolloutEngine, SamplingSpec


class TextEngine:
    """A rollout engine and its tokenizer, asked in text (rlkit.rewards.combine.TextModel)."""

    def __init__(self, engine: RolloutEngine, tokenizer, name: str = ""):
        self.engine, self.tokenizer, self.name = engine, tokenizer, name
        self.calls = 0  # completions asked so far (a test checks the engine was really used)

    def encode(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                           add_generation_prompt=True, return_dict=True)["input_ids"])
        return list(self.tokenizer(prompt)["input_ids"])

    def complete(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        if not prompts:
            return []
        self.calls += len(prompts)
        spec = SamplingSpec(n=1, temperature=temperature, max_new_tokens=max_new_tokens, logprobs=False, seed=0)
        out = self.engine.generate([self.encode(p) for p in prompts], spec)
        return [s.text for s in sorted(out, key=lambda s: s.group_id)]

    def close(self) -> None:
        self.engine.close()


def make_reward_engines(cfg, policy_model: str, *, device=None, dtype=None) -> dict[str, TextEngine]:
    """The ``reward_engines`` of ``cfg`` (checked by rlkit.config.check), built: {name: TextEngine}."""
    import torch

    from rlkit.models import load_policy, load_tokenizer, resolve_model_path

    out = {}
    for name, spec in cfg.reward_engines.items():
        kind = spec.get("engine", "hf")
        path = resolve_model_path(spec.get("model") or policy_model)
        tokenizer = load_tokenizer(path)
        if kind == "hf":
            from rlkit.rollout.hf_engine import HFEngine

            model = load_policy(path, dtype or torch.float32).to(device or "cpu").eval()
            model.requires_grad_(False)
            out[name] = TextEngine(HFEngine(model, tokenizer), tokenizer, name)
        else:
            from rlkit.rollout.factory import make_engine

            served = copy.deepcopy(cfg)
            served.rollout.engine, served.rollout.engine_options = "vllm_server", {}
            served.rollout.server_urls = list(spec["server_urls"])
            out[name] = TextEngine(make_engine(served, path, device=device, dtype=dtype), tokenizer, name)
    return out
