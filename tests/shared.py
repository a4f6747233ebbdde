"""What several test folders share: the `rlkit serve` server of the session, process-group bookkeeping, and the
check that a server holds a given policy. Importable from any test module (tests/conftest.py puts this folder on
sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# process groups the tests started (servers): the session-end check fails the suite if any is still alive
STARTED_GROUPS: set[int] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pgid: int) -> None:
    """SIGKILL every process of a group (a vLLM API server killed alone leaves its EngineCore child behind)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group whose members are all zombies of ours is dead for our purposes
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Server:
    """`rlkit serve` in its own process group (so stopping it stops vLLM's EngineCore too); restartable."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir, self.log, self.port, self.proc = model_dir, log, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        with open(self.log, "a") as log:
            for line in self.proc.stdout:
                log.write(line)

    def start(self) -> None:
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlkit.cli", "serve", str(self.model_dir), "--host", "127.0.0.1",
             "--port", str(self.port), "--max-model-len", "512"],
            stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True, env=env, start_new_session=True)
        STARTED_GROUPS.add(self.proc.pid)
        deadline = time.monotonic() + 300
        for line in self.proc.stdout:  # `rlkit serve` prints its ready line once /health answers
            if "ready at" in line:
                assert self.url in line
                # keep draining stdout into the log: a server that fills an unread pipe blocks mid-session
                threading.Thread(target=self._drain, daemon=True).start()
                return
            assert time.monotonic() < deadline, "server did not come up"
        raise AssertionError(f"rlkit serve exited ({self.proc.wait()}): {self.log.read_text()[-3000:]}")

    def api_pid(self) -> int:
        """The vLLM API server process (the child of `rlkit serve`)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(out[0])

    def stop(self) -> None:
        """Kill the whole group, whether or not `rlkit serve` itself is still running (after its API server was
        killed it exits, and the orphaned EngineCore stays in the group)."""
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait()
            deadline = time.monotonic() + 30
            while group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)


def prompt_ids(tok) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}],
                                   tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def server_matches_policy(url: str, policy_dir: Path, model_dir: Path) -> float:
    """Max |server greedy logprob - trainer logprob| over a fixed prompt's greedy completion."""
    import requests
    import torch

    from rlkit.models import load_policy, load_tokenizer
    from rlkit.parallel.batch import collate
    from rlkit.records import Sample, to_completion_space
    from rlkit.trainers.batch import LogprobPolicy

    tok = load_tokenizer(str(model_dir))
    ids = prompt_ids(tok)
    model_id = requests.get(f"{url}/v1/models").json()["data"][0]["id"]
    choice = requests.post(f"{url}/v1/completions", json={
        "model": model_id, "prompt": ids, "max_tokens": 16, "temperature": 0.0, "logprobs": 0,
        "return_token_ids": True}).json()["choices"][0]
    s = Sample(prompt_ids=ids, completion_ids=choice["token_ids"], logprobs=choice["logprobs"]["token_logprobs"],
               finish_reason="length", text="", group_id=0)
    policy = LogprobPolicy(load_policy(str(policy_dir), torch.float32))
    mb = collate([s], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = policy(mb, temperature=1.0)
    return float(((lp - to_completion_space([s.logprobs], lp.shape[1])).abs() * mb.completion_mask).max())


class ScriptedEngine:
    """A rollout engine without a model for the unit tests of rollout strategies: it records each call
    (``calls``: (prompts, spec)) and answers with ``samples(k, prompt, spec, j)``, the j-th sample of prompt k."""

    version = 0

    def __init__(self):
        self.calls = []

    def wake(self):
        pass

    def sleep(self):
        pass

    def generate(self, prompts, spec):
        self.calls.append((prompts, spec))
        specs = spec if isinstance(spec, list) else [spec] * len(prompts)
        return [self.sample(k, list(p), s, j) for k, (p, s) in enumerate(zip(prompts, specs)) for j in range(s.n)]

    def sample(self, k, prompt, spec, j):
        raise NotImplementedError
