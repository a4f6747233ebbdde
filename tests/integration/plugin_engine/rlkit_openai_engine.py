"""A rollout-engine plugin for rlkit, written only against its public API (``rlkit.rollout.base``), installed
through an ``rlkit.engines`` entry point (see the dist-info beside this file): generation over any
OpenAI-compatible ``/v1/completions`` server that returns token ids (vLLM's ``return_token_ids``, as `rlkit
serve` starts it), without weight sync. It serves evaluation and asynchronous rollouts from a fixed policy.

    rollout:
      engine: openai_http
      engine_options: {base_url: "http://node1:8000"}
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from rlkit.rollout.base import EngineBase, Gate, engine_sample, per_prompt_specs


class OpenAICompletionsEngine(EngineBase):
    """Rollouts from an OpenAI-compatible completions server holding a fixed policy (no weight sync)."""

    # the declaration rlkit's registry reads (rlkit.registry.EngineCaps)
    remote = True  # generates outside the trainer's processes
    concurrent = True  # generation may overlap training: asynchronous rollouts allowed
    weight_sync = False  # the server keeps its own weights: the trainer never pushes any

    def __init__(self, ctx, base_url: str, model: str = "", timeout: float = 60.0, max_inflight: int = 8):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        self.session = requests.Session()
        self.model = model or self.session.get(f"{self.base_url}/v1/models", timeout=timeout).json()["data"][0]["id"]
        self.gate = Gate()
        self.pool = ThreadPoolExecutor(max_workers=max_inflight)

    def generate(self, prompts, spec):
        specs = per_prompt_specs(spec, len(prompts))
        with self.gate.generating():
            version = self.version
            answers = list(self.pool.map(self._complete, prompts, specs))
        return [engine_sample(prompts[k], c["token_ids"], c["logprobs"]["token_logprobs"] if specs[k].logprobs else [],
                              stopped=c["finish_reason"] != "length", text=c["text"], group=k, version=version)
                for k, choices in enumerate(answers) for c in sorted(choices, key=lambda c: c["index"])]

    def _complete(self, prompt, spec):
        body = {"model": self.model, "prompt": list(prompt), "n": spec.n, "max_tokens": spec.max_new_tokens,
                "temperature": spec.temperature, "top_p": spec.top_p, "seed": spec.seed, "return_token_ids": True}
        if spec.top_k > 0:
            body["top_k"] = spec.top_k
        if spec.logprobs:
            body["logprobs"] = 0
        r = self.session.post(f"{self.base_url}/v1/completions", json=body, timeout=self.timeout)
        r.raise_for_status()
        return r.json()["choices"]

    def update_weights(self, named_tensors):
        with self.gate.exclusive():  # a fixed policy: only the version moves (rlkit does not call this: weight_sync)
            self.version += 1

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()
