"""A small pool of persistent worker processes for per-sample reward work that can hang (math-verify).

Why processes: a thread cannot be stopped, and math-verify's own timeouts (``signal.alarm``) work only in
a process's main thread. Each worker here runs tasks in its main thread, so those timeouts keep working,
and a sample that still hangs past its deadline is handled by killing the worker and starting another.

- ``spawn`` start method: the trainer holds torch / vLLM threads, which ``fork`` must not copy.
- One ``Pipe`` per worker; ``map`` hands one sample to each idle worker and waits on the pipes with
  ``multiprocessing.connection.wait`` until the nearest deadline (``timeout`` seconds per sample, counted
  from the moment the sample is handed over).
- A sample that fails (past its deadline, raised in the worker, or its worker died) does not stop the
  others: ``map`` finishes the batch, then raises the first failure's exception carrying ``.sample`` (its
  index), ``.values`` (every result, None at failed samples) and ``.failed`` (index -> exception), so the
  caller can name the sample or mask the failed ones (``RewardSet``'s ``on_error``).
- Workers start lazily on first use, are shared process-wide (``shared_pool``: one pool per worker count
  and warm-up), and are killed at exit (``atexit``); interpreter exit never waits on a busy worker.

Tasks are ``(fn, item)`` with ``fn`` a module-level function, pickled by reference: the worker imports
its module by name (``sys.path`` reaches spawned children), so it must be importable without side effects.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

START_TIMEOUT = 120.0  # seconds a new worker may take to start (interpreter, imports, warm-up)


class SampleTimeout(TimeoutError):
    """A sample got no result within the pool's per-sample timeout; its worker was killed and replaced."""


class WorkerDied(RuntimeError):
    """A worker process exited while working on a sample (crash, out of memory, killed from outside)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def _worker_main(conn, warmup: Callable | None) -> None:
    """A worker's loop: warm up, say ready, then answer ``(fn, item)`` tasks until ``None`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills the pool
    try:
        if warmup is not None:
            warmup()
        conn.send(("ready", None, None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _portable(e), traceback.format_exc()))
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        fn, item = task
        try:
            reply = ("ok", fn(item), None)
        except BaseException as e:  # noqa: BLE001
            reply = ("error", _portable(e), traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as e:  # an unpicklable result
            conn.send(("error", RuntimeError(f"result of {fn.__name__} cannot be sent back: {e}"), None))


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError with its type and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx, warmup: Callable | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, warmup), name="rlkit-reward-worker", daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.deadline = time.monotonic() + START_TIMEOUT
        self.task: int | None = None

    def kill(self) -> None:
        """Stop the process now (SIGKILL: a hung sample may ignore anything gentler) and reap it."""
        try:
            self.proc.kill()
            self.proc.join(5)
        except Exception:  # already gone, or interpreter shutdown
            pass
        self.conn.close()


class WorkerPool:
    """``size`` persistent spawn-context worker processes; ``map`` runs ``fn`` on each item with a
    per-item deadline. Thread-safe (one ``map`` at a time)."""

    def __init__(self, size: int, warmup: Callable | None = None):
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {size}")
        self.size, self.warmup = size, warmup
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers (empty before first use)."""
        return [w.proc.pid for w in self._workers]

    def map(self, fn: Callable, items: Sequence, timeout: float) -> list:
        """``[fn(item) for item in items]`` in the workers, at most ``timeout`` seconds per item (0 = none).

        Raises the first failed item's exception (by index) after every item has finished or failed, with
        ``.sample``, ``.values`` and ``.failed`` set (see the module doc). A worker that cannot start
        (its warm-up raised, or it took longer than START_TIMEOUT) raises at once, without ``.sample``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the reward worker pool was shut down (interpreter exit)")
            while len(self._workers) < self.size:
                self._workers.append(_Worker(self._ctx, self.warmup))
            try:
                return self._run(fn, list(items), timeout)
            except BaseException as e:
                if not hasattr(e, "sample"):  # aborted (start-up failure, Ctrl-C): drop unfinished tasks
                    for w in [w for w in self._workers if w.task is not None]:
                        w.kill()
                        self._workers.remove(w)
                raise

    def _run(self, fn: Callable, items: list, timeout: float) -> list:
        results: list[Any] = [None] * len(items)
        failed: dict[int, BaseException] = {}
        pending = deque(range(len(items)))
        self._deaths: dict[int | None, int] = {}  # item (None: start-up) -> workers that died on it
        self._pending = pending
        while pending or any(w.task is not None for w in self._workers):
            while pending:
                idle = next((w for w in self._workers if w.ready and w.task is None), None)
                if idle is None:
                    break
                i = pending.popleft()
                if not self._dispatch(idle, i, fn, items, timeout, failed):
                    pending.appendleft(i)  # the worker had died while idle: a new one takes the sample
            waiting = [w for w in self._workers if not w.ready or w.task is not None]
            deadlines = [w.deadline for w in waiting if w.deadline is not None]
            left = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = multiprocessing.connection.wait([w.conn for w in waiting], left)
            for w in waiting:
                if w.conn in ready:
                    self._receive(w, results, failed)
            now = time.monotonic()
            for w in list(self._workers):
                if w.deadline is not None and now >= w.deadline and w in waiting and w.conn not in ready:
                    if w.task is None:
                        self._replace(w)
                        raise RuntimeError(f"a reward worker did not start within {START_TIMEOUT:g} s")
                    failed[w.task] = SampleTimeout(
                        f"no result within {timeout:g} s per sample; the worker was killed")
                    self._replace(w)
        if failed:
            first = min(failed)
            err = failed[first]
            err.sample, err.values = first, results  # type: ignore[attr-defined]
            err.failed = dict(sorted(failed.items()))  # type: ignore[attr-defined]
            raise err
        return results

    def _dispatch(self, w: _Worker, i: int, fn: Callable, items: list, timeout: float, failed: dict) -> bool:
        """Hand item i to the idle worker w; False if w turned out dead (it is replaced, the item not taken)."""
        try:
            w.conn.send((fn, items[i]))
        except (BrokenPipeError, EOFError, OSError):
            self._replace(w)
            return False
        except Exception as e:  # the task cannot be pickled: that item fails
            failed[i] = e
            return True
        w.task, w.deadline = i, (time.monotonic() + timeout if timeout > 0 else None)
        return True

    def _receive(self, w: _Worker, results: list, failed: dict) -> None:
        try:
            status, value, tb = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(1)  # the pipe closes a moment before the exit status is there
            code, task = w.proc.exitcode, w.task
            self._replace(w)
            # one death may be the worker's own bad luck (killed from outside, while idle or starting): the
            # sample (or the start) gets a fresh worker once; a second death is the sample's (or warm-up's) fault
            deaths = self._deaths[task] = self._deaths.get(task, 0) + 1
            if task is None and deaths > 1:
                raise RuntimeError(f"reward workers exit while starting (exit code {code})") from None
            if task is not None and deaths > 1:
                failed[task] = WorkerDied(f"the reward worker exited while scoring this sample (exit code {code})")
            elif task is not None:
                self._pending.appendleft(task)
            return
        if not w.ready:  # the start-up message
            if status == "error":
                self._replace(w)
                if tb:
                    value.__cause__ = RemoteTraceback(tb)
                raise value
            w.ready, w.deadline = True, None
            return
        if status == "ok":
            results[w.task] = value
        else:
            if tb:
                value.__cause__ = RemoteTraceback(tb)
            failed[w.task] = value
        w.task, w.deadline = None, None

    def _replace(self, w: _Worker) -> None:
        w.kill()
        if self._closed or w not in self._workers:  # shut down under a map still running in another thread
            raise RuntimeError("the reward worker pool was shut down (interpreter exit)")
        self._workers[self._workers.index(w)] = _Worker(self._ctx, self.warmup)

    def shutdown(self) -> None:
        """Kill every worker; never blocks on a busy one (a map still running in another thread fails)."""
        self._closed = True
        for w in self._workers:
            w.kill()
        self._workers = []


_POOLS: dict[tuple, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def default_workers() -> int:
    """min(4, os.cpu_count())."""
    return max(1, min(4, os.cpu_count() or 1))


def shared_pool(workers: int = 0, warmup: Callable | None = None) -> WorkerPool:
    """The process-wide pool of ``workers`` workers (0 = default_workers()) with this warm-up; created on
    first use (its processes start on the first ``map``) and killed at interpreter exit."""
    global _ATEXIT_REGISTERED
    size = workers if workers > 0 else default_workers()
    with _POOLS_LOCK:
        pool = _POOLS.get((size, warmup))
        if pool is None or pool._closed:
            pool = _POOLS[(size, warmup)] = WorkerPool(size, warmup)
        if not _ATEXIT_REGISTERED:  # registered after multiprocessing's own exit hook, so it runs first
            atexit.register(shutdown_all)
            _ATEXIT_REGISTERED = True
    return pool


def shutdown_all() -> None:
    """Kill the workers of every shared pool (at exit; safe to call more than once)."""
    for pool in list(_POOLS.values()):
        pool.shutdown()
    _POOLS.clear()


def _forget_pools_in_child() -> None:  # a forked child must not touch (or kill) its parent's workers
    global _POOLS, _POOLS_LOCK
    _POOLS, _POOLS_LOCK = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_in_child)
