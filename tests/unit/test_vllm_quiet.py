"""A first run prints no warning when nothing failed (issue 36 item 6): vLLM's start-up warnings about the settings
rlkit chooses for the CPU are filtered on the loggers that emit them, once, with one line that says so; any other
vLLM warning still shows, and RLKIT_VLLM_WARNINGS=1 shows them all."""

import logging

from rlkit.rollout import vllm_engine as V


def test_vllm_cpu_startup_notes_are_filtered_and_said_once(monkeypatch, capsys):
    monkeypatch.setattr(V, "_quiet", False)
    monkeypatch.delenv("RLKIT_VLLM_WARNINGS", raising=False)
    loggers = [logging.getLogger(n) for n in V.CPU_STARTUP_LOGGERS]
    before = [list(lg.filters) for lg in loggers]
    for lg in loggers:  # an engine built earlier in this process may have installed them already
        lg.filters[:] = [f for f in lg.filters if not isinstance(f, V.CpuStartupFilter)]
    try:
        V.quiet_cpu_startup()
        V.quiet_cpu_startup()  # once per process
        assert capsys.readouterr().err.count("rlkit: vLLM on the CPU runs float32") == 1
        seen = []
        handler = logging.Handler()
        handler.emit = seen.append  # on the loggers themselves: whatever vLLM's own handlers and propagation
        args, worker = logging.getLogger("vllm.engine.arg_utils"), logging.getLogger("vllm.v1.worker.cpu_worker")
        for lg in (args, worker):
            lg.addHandler(handler)
        try:
            args.warning("This model does not officially support disabling chunked prefill. Disabling this manually "
                         "may cause the engine to crash or produce incorrect outputs.")
            worker.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.")
            args.warning("KV cache of %d blocks could not be allocated", 12)  # a real problem still shows
        finally:
            for lg in (args, worker):
                lg.removeHandler(handler)
        assert [r.getMessage() for r in seen] == ["KV cache of 12 blocks could not be allocated"]
    finally:
        for lg, filters in zip(loggers, before):
            lg.filters[:] = filters


def test_rlkit_vllm_warnings_keeps_them(monkeypatch, capsys):
    """(An engine built earlier in this process, by another test, has installed the filters: start without them.)"""
    loggers = [logging.getLogger(n) for n in V.CPU_STARTUP_LOGGERS]
    before = [list(lg.filters) for lg in loggers]
    for lg in loggers:
        lg.filters[:] = [f for f in lg.filters if not isinstance(f, V.CpuStartupFilter)]
    try:
        monkeypatch.setattr(V, "_quiet", False)
        monkeypatch.setenv("RLKIT_VLLM_WARNINGS", "1")
        V.quiet_cpu_startup()
        assert not any(isinstance(f, V.CpuStartupFilter) for lg in loggers for f in lg.filters)
        assert capsys.readouterr().err == ""
    finally:
        for lg, filters in zip(loggers, before):
            lg.filters[:] = filters
