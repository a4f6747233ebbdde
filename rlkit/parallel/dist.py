"""Collectives the trainer uses, in one place: every cross-rank exchange of the training loop goes through these
(the exceptions are model internals: the SP exchanges and sums in rlkit.parallel and LogprobPolicy, the hf
engine's lock-step flag, FSDP2's initial broadcast and the weight transfer to servers).

All work on one process too (then they return their input). Tensors are moved to the accelerator's
device for the collective and come back on the CPU.
"""

from __future__ import annotations

import math
import os
import sys

import torch

_ENDED = {"world": False}  # whether this process tore down a multi-process world (see end_world)


def all_reduce(acc, t: torch.Tensor, op: str, group=None) -> torch.Tensor:
    """All-reduce ``t`` with ``op`` ("sum", "max", "mean") over the ranks (or over ``group``)."""
    if acc.num_processes == 1:
        return t
    if group is None:
        return acc.reduce(t.to(acc.device), reduction=op).cpu()
    import torch.distributed as tdist

    out = t.to(acc.device).clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM, group=group)
    return (out / tdist.get_world_size(group) if op == "mean" else out).cpu()


def gather_objects(acc, obj) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    if acc.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def broadcast_object(acc, obj):
    """Rank 0's picklable ``obj`` on every rank."""
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def _gather(acc, t: torch.Tensor, group) -> torch.Tensor:
    if group is None:
        return acc.gather(t.to(acc.device)).cpu()
    import torch.distributed as tdist

    parts = [torch.empty_like(t, device=acc.device) for _ in range(tdist.get_world_size(group))]
    tdist.all_gather(parts, t.to(acc.device).contiguous(), group=group)
    return torch.cat(parts).cpu()


def rank_sizes(acc, n: int, group=None) -> list[int]:
    """Every rank's count ``n`` (of the world, or of ``group``), in rank order."""
    if acc.num_processes == 1:
        return [n]
    return _gather(acc, torch.tensor([n]), group).tolist()


def gather_var(acc, t: torch.Tensor, sizes: list[int] | None = None, group=None) -> torch.Tensor:
    """All ranks' (or ``group``'s) tensors concatenated along dim 0 in rank order; their lengths may differ
    (``sizes``, from ``rank_sizes``, is fetched when not given)."""
    if acc.num_processes == 1:
        return t
    sizes = rank_sizes(acc, t.shape[0], group) if sizes is None else sizes
    width = max(sizes)
    if width == 0:
        return t[:0]
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype)
    padded[:t.shape[0]] = t
    out = _gather(acc, padded, group)
    return torch.cat([out[r * width:r * width + n] for r, n in enumerate(sizes)])


def mean_metrics(acc, metrics: dict) -> dict:
    """Each numeric metric averaged over the ranks that have a finite value for it; the keys are the union of
    every rank's keys, so ranks with different keys or NaNs cannot mis-align a reduction. Non-numeric values
    and ``time/*`` (rank 0's wall clock) are kept as they are on this rank."""
    if acc.num_processes == 1:
        return metrics
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not k.startswith("time/")}
    out = dict(metrics)
    every = gather_objects(acc, numeric)
    for key in sorted(set().union(*every)):
        values = [m[key] for m in every if key in m and math.isfinite(m[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def end_world() -> None:
    """Tear this process's part of a multi-process world down at the end of a run: destroy the process groups (a
    colocated vLLM engine's shutdown may already have done it) and mark the process as one that should leave
    without interpreter finalization (``leave_world``)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _ENDED["world"] = True


def world_ended() -> bool:
    """Whether this process tore down a multi-process world (``end_world``)."""
    return _ENDED["world"]


def leave_world(code: int) -> None:
    """Exit a process that ended a multi-process world (``end_world``) right away, once its output is flushed;
    any other process returns and exits normally.

    Why: ``destroy_process_group`` drops the process-group registry but not the objects DeepSpeed, accelerate or
    FSDP still reference, so their native threads (gloo's workers and transport loop) outlive the Python
    interpreter's finalization; one of them touching a Python object then aborts the rank ("terminate called
    without an active exception", SIGABRT: seen once under ZeRO-2 on CPU in CI, after a run that had written
    everything). By then every checkpoint, metric and lock of the run is written and closed (the trainer's
    ``finally``), so finalization has nothing left to do but race those threads."""
    if not _ENDED["world"]:
        return
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
