"""A weight-transfer engine for vLLM's RL API that needs no CUDA: packed broadcasts over a gloo group.

vLLM 0.32 serves the RL weight-sync routes (``/init_weight_transfer_engine``, ``/start_weight_update``,
``/update_weights``, ``/finish_weight_update``) and builds the transfer engine named by
``--weight-transfer-config '{"backend": NAME}'`` from a registry that accepts engines added at run time. Its
own engines (``nccl``, ``ipc``, ...) need CUDA, so the CPU path (tests, laptops, CPU inference nodes) had none.
This module adds one, ``rlkit_gloo``, as a pair of vLLM engine classes:

- worker side (inside ``vllm serve``): joins a stateless gloo group with the trainer (vLLM's
  ``stateless_init_torch_distributed_process_group``; the trainer is rank 0, the server's workers follow), then
  for each update receives the parameters in packed uint8 buffers and loads them with the model's
  ``load_weights`` inside vLLM's layerwise reload (the same lifecycle as vLLM's NCCL engine);
- trainer side: drives the handshake through vLLM's ``VLLMWeightSyncClient`` (the HTTP client) and broadcasts.

Both sides cut the parameter stream into buffers with the same rule (``plan_chunks``) from the update's
metadata, so they agree on every boundary without sending any. Registration goes through vLLM's general-plugin
entry point (``vllm.general_plugins`` in pyproject.toml), so a stock ``vllm serve`` knows the name.

Why not vLLM's own engines: ``nccl``/``ipc``/``sparse_nccl``/``nccl_m2n`` call CUDA (PyNccl, CUDA IPC handles,
CUDA streams in the packed producer); rlkit uses ``nccl`` wherever there is a GPU.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, ClassVar

import torch

BACKEND = "rlkit_gloo"
DEFAULT_BUFFER_BYTES = 256 * 1024 * 1024


def plan_chunks(nbytes: list[int], buffer_bytes: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive parameters, each range one packed buffer: parameters are added
    until the buffer holds at least ``buffer_bytes`` (a larger parameter goes alone)."""
    chunks, start, total = [], 0, 0
    for i, n in enumerate(nbytes):
        total += n
        if total >= buffer_bytes:
            chunks.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(nbytes):
        chunks.append((start, len(nbytes)))
    return chunks


def _nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def _open_group(host: str, port: int, rank: int, world_size: int, timeout_s: float):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    # Under torchrun, TORCHELASTIC_USE_AGENT_STORE=True makes torch's TCP rendezvous connect to the launcher's
    # store as a client instead of serving its own: rank 0 would wait forever for a store nobody serves.
    agent_store = os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    try:
        return stateless_init_torch_distributed_process_group(host, port, rank, world_size, backend="gloo",
                                                              timeout=timedelta(seconds=timeout_s))
    finally:
        if agent_store is not None:
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = agent_store


def _broadcast(group, buf: torch.Tensor) -> None:
    from torch.distributed import BroadcastOptions

    opts = BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([buf], opts).wait()


_VLLM_CLASSES = ('GlooInitInfo', 'GlooUpdateInfo', 'GlooWeightTransferEngine', 'GlooTrainerInitInfo', 'GlooTrainerWeightTransferEngine')


def _vllm_bases():
    from vllm.distributed.weight_transfer import base

    return base


@functools.cache
def _worker_classes() -> dict[str, type]:
    """Worker side (inside ``vllm serve``): the init/update infos and the engine that receives."""
    b = _vllm_bases()
    WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo = (
        b.WeightTransferEngine, b.WeightTransferInitInfo, b.WeightTransferUpdateInfo)

    @dataclass
    class GlooInitInfo(WeightTransferInitInfo):
        """What a server's workers need to join the trainer's group (sent by the trainer at the handshake)."""

        master_address: str
        master_port: int
        rank_offset: int
        world_size: int
        buffer_bytes: int = DEFAULT_BUFFER_BYTES
        timeout_s: float = 300.0


    @dataclass
    class GlooUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]


    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """Worker side (runs inside ``vllm serve``)."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.group = None
            self.buffer_bytes = DEFAULT_BUFFER_BYTES

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            p = self.parallel_config
            rank = p.data_parallel_index * p.world_size + p.rank + init_info.rank_offset
            self.buffer_bytes = init_info.buffer_bytes
            self.group = _open_group(init_info.master_address, init_info.master_port, rank, init_info.world_size,
                                     init_info.timeout_s)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # the base class ends with torch.accelerator.synchronize(), which has nothing to do (or fails) on CPU
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info: GlooUpdateInfo) -> None:
            if self.group is None:
                raise RuntimeError("rlkit_gloo weight transfer not initialised: call /init_weight_transfer_engine first")
            from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

            dtypes = [getattr(torch, d) for d in update_info.dtype_names]
            sizes = [_nbytes(s, d) for s, d in zip(update_info.shapes, dtypes)]
            for lo, hi in plan_chunks(sizes, self.buffer_bytes):
                buf = torch.empty(sum(sizes[lo:hi]), dtype=torch.uint8)
                _broadcast(self.group, buf)
                pairs = unpack_tensor(buf, update_info.names[lo:hi], update_info.shapes[lo:hi], dtypes[lo:hi],
                                      sizes[lo:hi])
                self.model.load_weights([(n, t.to(self.device)) for n, t in pairs])

        def shutdown(self) -> None:
            if self.group is not None:
                from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

                stateless_destroy_torch_distributed_process_group(self.group)
                self.group = None


    return {"GlooInitInfo": GlooInitInfo, "GlooUpdateInfo": GlooUpdateInfo,
            "GlooWeightTransferEngine": GlooWeightTransferEngine}


@functools.cache
def _trainer_classes() -> dict[str, type]:
    """Trainer side: its init info and the engine that sends (it hands the workers their init info)."""
    b, worker = _vllm_bases(), _worker_classes()
    TrainerInitInfo, TrainerWeightTransferEngine = b.TrainerInitInfo, b.TrainerWeightTransferEngine
    GlooInitInfo, GlooUpdateInfo = worker["GlooInitInfo"], worker["GlooUpdateInfo"]

    @dataclass
    class GlooTrainerInitInfo(TrainerInitInfo):
        """Trainer side: the trainer's rank-0 endpoint (the server's workers connect to it) and the group size
        (1 + the server's worker count)."""

        backend: ClassVar[str] = BACKEND

        master_address: str
        master_port: int
        world_size: int
        buffer_bytes: int = DEFAULT_BUFFER_BYTES
        timeout_s: float = 300.0


    class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
        """Trainer side. Every trainer rank iterates the source (materialising sharded parameters is a collective);
        only the sender (rank 0) talks to the server and broadcasts."""

        init_info_cls = GlooTrainerInitInfo

        def __init__(self, *, client, source, is_sender: bool = True, buffer_bytes: int = DEFAULT_BUFFER_BYTES):
            super().__init__(client=client, source=source, is_sender=is_sender)
            self.buffer_bytes = buffer_bytes
            self.group = None

        @classmethod
        def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
            if source is None:
                raise ValueError("rlkit_gloo weight transfer needs a WeightSource")
            engine = cls(client=client, source=source, is_sender=init_info.is_sender, buffer_bytes=init_info.buffer_bytes)
            if not engine.is_sender:
                return engine
            worker = GlooInitInfo(master_address=init_info.master_address, master_port=init_info.master_port,
                                  rank_offset=1, world_size=init_info.world_size, buffer_bytes=init_info.buffer_bytes,
                                  timeout_s=init_info.timeout_s)
            # the server's workers wait in the rendezvous inside their request; open our end meanwhile
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(client.init_weight_transfer_engine, asdict(worker))
                engine.group = _open_group(init_info.master_address, init_info.master_port, 0, init_info.world_size,
                                           init_info.timeout_s)
                pending.result()
            return engine

        def send_weights(self) -> None:
            meta = self.source.metadata()
            if not self.is_sender:
                for _ in self.source:
                    pass
                return
            info = GlooUpdateInfo(names=[m.name for m in meta], dtype_names=[str(m.dtype).split(".")[-1] for m in meta],
                                  shapes=[list(m.shape) for m in meta])
            self.client.start_weight_update()
            pool = ThreadPoolExecutor(max_workers=1)
            try:
                pending = pool.submit(self.client.update_weights, asdict(info))
                self._send_chunks(self._checked(meta), [_nbytes(m.shape, m.dtype) for m in meta], pending)
                pending.result()
            finally:
                pool.shutdown(wait=False)  # a failed broadcast leaves the request thread waiting: do not join it
            self.client.finish_weight_update()

        def _send_chunks(self, pairs: Iterator[tuple[str, torch.Tensor]], sizes: list[int], pending) -> None:
            for lo, hi in plan_chunks(sizes, self.buffer_bytes):
                if pending.done():  # the server refused the update: its error, not a broadcast with no peer
                    pending.result()
                parts = [next(pairs)[1].detach().to("cpu").contiguous().view(-1).view(torch.uint8)
                         for _ in range(lo, hi)]
                _broadcast(self.group, torch.cat(parts) if len(parts) > 1 else parts[0])

        def _checked(self, meta) -> Iterator[tuple[str, torch.Tensor]]:
            """The source's pairs, each checked against the metadata the server was sent (a disagreement would split
            the stream differently on the two sides)."""
            it = iter(self.source)
            for m in meta:
                name, tensor = next(it)
                if name != m.name or tensor.dtype != m.dtype or tuple(tensor.shape) != tuple(m.shape):
                    raise ValueError(f"weight source yielded {name!r} {tensor.dtype} {tuple(tensor.shape)} where its "
                                     f"metadata declared {m.name!r} {m.dtype} {tuple(m.shape)}")
                yield name, tensor

        def shutdown(self) -> None:
            if self.group is not None:
                from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

                stateless_destroy_torch_distributed_process_group(self.group)
                self.group = None


    return {"GlooTrainerInitInfo": GlooTrainerInitInfo,
            "GlooTrainerWeightTransferEngine": GlooTrainerWeightTransferEngine}


@functools.cache
def _vllm_classes() -> dict[str, type]:
    """The vLLM-side classes, built on first use so that importing this module (``plan_chunks``, the plugin hook)
    does not import vLLM. They are published as module attributes under their own names (pickling finds them)."""
    built = {**_worker_classes(), **_trainer_classes()}
    for name, cls in built.items():
        cls.__qualname__ = name
    globals().update(built)
    return built


def __getattr__(name: str):
    if name in _VLLM_CLASSES:
        return _vllm_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_registered = threading.Lock()


def register() -> None:
    """vLLM general plugin (entry point ``vllm.general_plugins: rlkit``): add ``rlkit_gloo`` to both of vLLM's
    weight-transfer registries. vLLM may call this more than once per process."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    classes = _vllm_classes()
    with _registered:
        if BACKEND not in WeightTransferEngineFactory._registry:
            WeightTransferEngineFactory.register_engine(BACKEND, classes["GlooWeightTransferEngine"])
        if BACKEND not in WeightTransferTrainerFactory._registry:
            WeightTransferTrainerFactory.register_engine(BACKEND, classes["GlooTrainerWeightTransferEngine"])
