"""Rollouts on stock ``vllm serve`` instances, weights pushed through vLLM's own weight-transfer API.

Generation is one ``/v1/completions`` request per prompt with token-id prompts, ``n`` samples, the request's seed
and the sampled tokens' logprobs (``return_token_ids``); the server runs with
``--logprobs-mode processed_logprobs`` (``rlkit serve`` sets it), the trainer's convention, so
``loss/logprob_mismatch`` stays where the colocated engine has it. A process spreads its prompts over all servers
(prompt k of rank r goes to server (r + k) mod S) and keeps several requests in flight.

Weight sync (``update_weights``) is one round of vLLM's RL routes per server, driven by vLLM's trainer-side
engine (``WeightTransferTrainerFactory``) over its HTTP client: ``/pause?mode=wait`` (no request of any process
is in flight: every trainer process has reached the sync and its own generation is gated), the transfer
(``nccl`` on GPU, ``rlkit_gloo`` on CPU, see ``rlkit.rollout.transfer``), ``/update_weight_version`` to the
policy version, ``/resume``. Only process 0 sends; every process iterates the weights, so the gathers of
sharded parameters (FSDP2 ``full_tensor``, ZeRO-3 ``GatheredParameters``) run on all of them in step.

Every call has a deadline (``rollout.server_timeout``; the transfer group gets the same one): a server that
dies, refuses or hangs ends the run with a ``ServerError`` naming the server and the phase, never a hang.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import torch

from rlkit.errors import ServerError
from rlkit.records import Sample
from rlkit.rollout.base import EngineBase, Gate, SamplingSpec, engine_sample, per_prompt_specs
from rlkit.rollout.weights import WeightExport, as_export


def _weight_source():
    """vLLM's WeightSource over the policy's WeightExport of the current sync (rlkit.rollout.weights: the shapes
    without gathering, then each tensor gathered on every process as the transfer reads it). The class is built on
    first use: vLLM is imported only when a server engine is."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class PolicyWeights(WeightSource):
        def __init__(self):
            self.export = WeightExport([])

        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(n, dtype, shape) for n, dtype, shape in self.export.specs]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter(self.export)

    return PolicyWeights()


class _Server:
    def __init__(self, url: str, timeout: float):
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        self.model_id = ""
        self.max_model_len = 0
        self.world_size = 1
        self.transfer = None

    @contextlib.contextmanager
    def phase(self, what: str):
        """Turn whatever goes wrong talking to this server into one ServerError naming it and the phase."""
        import requests

        try:
            yield
        except ServerError:
            raise
        except requests.Timeout as e:
            raise ServerError(f"vLLM server {self.url} did not answer within {self.timeout:g} s during {what} "
                              "(rollout.server_timeout)") from e
        except requests.ConnectionError as e:
            raise ServerError(f"vLLM server {self.url} is unreachable during {what} (connection refused or dropped: "
                              "is it running? `rlkit serve MODEL` starts one)") from e
        except requests.HTTPError as e:
            r = e.response
            status, body = (r.status_code, r.text[:400]) if r is not None else ("?", str(e))
            raise ServerError(f"vLLM server {self.url} refused {what}: HTTP {status}: {body}") from e
        except Exception as e:  # transfer-group failures (gloo/NCCL) and malformed answers
            raise ServerError(f"vLLM server {self.url}: {what} failed: {type(e).__name__}: {e}") from e

    def get(self, path: str, what: str):
        with self.phase(what):
            r = self.session.get(f"{self.url}{path}", timeout=self.timeout)
            r.raise_for_status()
            return r.json()

    def post(self, path: str, what: str, json=None, params=None):
        with self.phase(what):
            r = self.session.post(f"{self.url}{path}", json=json, params=params, timeout=self.timeout)
            r.raise_for_status()
            return r.json()


def _local_address(url: str) -> str:
    """The local address that routes to ``url``'s host (what the server connects back to for the transfer)."""
    p = urlparse(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((p.hostname or "127.0.0.1", p.port or 80))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    return "nccl" if torch.cuda.is_available() else "rlkit_gloo"


class VLLMServerEngine(EngineBase):
    """The RolloutEngine protocol over one or more vLLM servers (``rollout.engine: vllm_server``; declared remote
    and concurrent in rlkit.rollout.engines)."""

    def __init__(self, urls: list[str], *, timeout: float = 600.0, backend: str = "auto", transfer_address: str = "",
                 rank: int = 0, world: int = 1, barrier=None, max_inflight: int = 32):
        self.servers = [_Server(u, timeout) for u in urls]
        self.rank, self.world = rank, world
        self.barrier = barrier or (lambda: None)
        self.version = 0
        self.backend = resolve_backend(backend)
        self.timeout = timeout
        self._gate = Gate()
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="rlkit-vllm-client")
        self._source = None
        for s in self.servers:
            models = s.get("/v1/models", "connecting (GET /v1/models)")["data"]
            s.model_id, s.max_model_len = models[0]["id"], int(models[0].get("max_model_len") or 0)
            s.world_size = int(self._dev_get(s, "/get_world_size")["world_size"])
        self._address = transfer_address or _local_address(self.servers[0].url)

    def _dev_get(self, s: _Server, path: str):
        try:
            return s.get(path, f"connecting (GET {path})")
        except ServerError as e:
            if "HTTP 404" in str(e):
                raise ServerError(f"vLLM server {s.url} has no RL routes ({path} answers 404): start it with "
                                  "`rlkit serve MODEL` (or set VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config "
                                  "for `vllm serve`)") from e
            raise

    # generation ----------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[Sample]:
        specs = per_prompt_specs(spec, len(prompts))
        with self._gate.generating():
            version = self.version
            futures = [self._pool.submit(self._complete, self.servers[(self.rank + k) % len(self.servers)], p, s)
                       for k, (p, s) in enumerate(zip(prompts, specs))]
            try:
                answers = [f.result() for f in futures]
            except BaseException:
                for f in futures:  # do not leave the rest of the call running (or queued) behind the error
                    f.cancel()
                raise
        samples = []
        for k, choices in enumerate(answers):
            for c in sorted(choices, key=lambda c: c["index"]):
                lps = c["logprobs"]["token_logprobs"] if specs[k].logprobs else []
                samples.append(engine_sample(prompts[k], c["token_ids"], lps, stopped=c["finish_reason"] != "length",
                                             text=c["text"], group=k, version=version))
        return samples

    def _complete(self, s: _Server, prompt: list[int], spec: SamplingSpec) -> list[dict]:
        body = {"model": s.model_id, "prompt": list(prompt), "n": spec.n, "max_tokens": spec.max_new_tokens,
                "temperature": spec.temperature, "top_p": spec.top_p, "top_k": spec.top_k, "seed": spec.seed,
                "return_token_ids": True}
        if spec.logprobs:
            body["logprobs"] = 0  # the sampled token's logprob only
        return s.post("/v1/completions", f"generation ({len(prompt)}-token prompt, n={spec.n})", json=body)["choices"]

    # weight sync ---------------------------------------------------------------------------------------------

    def _connect_transfer(self) -> None:
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from rlkit.rollout import transfer

        transfer.register()
        self._source = _weight_source()
        for s in self.servers:
            port = _free_port(self._address) if self.rank == 0 else 0
            if self.backend == "nccl":
                from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

                info = NCCLTrainerInitInfo(master_address=self._address, master_port=port,
                                           world_size=1 + s.world_size, rank=self.rank)
            else:
                info = transfer.GlooTrainerInitInfo(master_address=self._address, master_port=port,
                                                    world_size=1 + s.world_size, rank=self.rank,
                                                    timeout_s=self.timeout)
            with s.phase(f"weight sync (opening the {self.backend} transfer group)"):
                s.transfer = WeightTransferTrainerFactory.trainer_init(
                    info, client=HTTPVLLMWeightSyncClient(s.url, timeout=self.timeout), source=self._source)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push the policy to every server (all trainer processes call this at the same point); the servers'
        weight version becomes the new policy version."""
        with self._gate.exclusive():
            self.barrier()  # no process has a request in flight from here on
            if self._source is None:
                self._connect_transfer()
            self._source.export = as_export(named_tensors)
            new = self.version + 1
            sender = self.rank == 0
            for s in self.servers:
                if sender:
                    s.post("/pause", "weight sync (pause)", params={"mode": "wait", "clear_cache": "true"})
                try:
                    with s.phase(f"weight sync (transfer over {self.backend})"):
                        s.transfer.send_weights()
                    if sender:
                        s.post("/update_weight_version", "weight sync (version)", json={"new_version": str(new)})
                finally:
                    if sender:  # a failed transfer must not leave the server paused for its other clients
                        with contextlib.suppress(ServerError):
                            s.post("/resume", "weight sync (resume)")
            self._source.export = WeightExport([])
            self.barrier()
            self.version = new

    def weight_versions(self) -> list[str]:
        return [s.get("/weight_info", "reading the weight version")["weight_version"] for s in self.servers]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for s in self.servers:
            if s.transfer is not None:
                with contextlib.suppress(Exception):
                    s.transfer.shutdown()
            s.session.close()
