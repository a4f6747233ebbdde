"""DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2 for real: 2 gloo processes on CPU, launched the way users launch them
(`accelerate launch --config_file examples/accelerate/<engine>.yaml`), each run checked for the engine it got
(run.json's `distributed`, with how many parameter elements each process holds) and against DDP.

The runs share one config file (every setting but output_dir), so that runs of different engines, launchers and
node layouts see the same prompts, seeds and micro-batches: 4 prompts x 4 samples a step over 2 processes, micro-
batches of at most 150 tokens (>= 3 per optimizer step), AdamW at lr 1e-3, 2 steps, a checkpoint after each.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from shared import free_port, server_matches_policy

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ACCEL = ROOT / "examples" / "accelerate"
INTEGRATION = HERE.parent / "integration"
# engine -> (accelerate config, distributed type, ZeRO stage, whether parameters are sharded)
ENGINES = {"zero2": ("zero2.yaml", "deepspeed", 2, False), "zero3": ("zero3.yaml", "deepspeed", 3, True),
           "fsdp2": ("fsdp2.yaml", "fsdp2", None, True)}


def _env(**extra) -> dict:
    """The tests' helpers importable, one thread a process, and this interpreter's scripts (accelerate) on PATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(INTEGRATION), os.environ.get("PYTHONPATH", "")]),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env or _env(), timeout=600)


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engines") / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "eval": {"size": 2, "before": False, "after": False},
        "rollout": {"engine": "hf", "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8,
                    "kv_cache_gib": 1},
        "rewards": [{"name": "helpers:digit_fraction"}],
        "optim": {"lr": 1.0e-3, "micro_batch_tokens": 150},
        "train": {"steps": 2},
        "checkpoint": {"every": 1},
        "logging": {"progress": False},
    }))
    return path


def accelerate(config: Path, out: Path, engine: str, *extra: str, env: dict | None = None, nproc: int = 2):
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / ENGINES[engine][0]),
                 "--num_processes", str(nproc), "--main_process_port", str(free_port()), "-m", "rlkit.cli", "train",
                 str(config), f"--output_dir={out}", *extra], out.parent, env)


def torchrun(config: Path, out: Path, *extra: str, nproc: int = 2, launcher: tuple = (), env: dict | None = None):
    launcher = launcher or ("--nproc_per_node", str(nproc), "--master_port", str(free_port()))
    return _run([sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "rlkit.cli", "train", str(config),
                 f"--output_dir={out}", *extra], out.parent, env)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def policy(run: Path, step: int = 2) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "policy" / "model.safetensors"))


def distributed(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["distributed"]


def closeness(a: dict, b: dict, init: dict) -> tuple[float, float]:
    """(||a - b|| / ||a||, cosine of the updates a - init and b - init) over all parameters."""
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    norm = sum(float((a[k] ** 2).sum()) for k in a) ** 0.5
    ua = torch.cat([(a[k] - init[k]).flatten() for k in a])
    ub = torch.cat([(b[k] - init[k]).flatten() for k in a])
    return diff / norm, float(torch.nn.functional.cosine_similarity(ua, ub, dim=0))


class Runs:
    """Runs launched once per module and shared by the tests that compare against them."""

    def __init__(self, config: Path, root: Path):
        self.config, self.root, self.done = config, root, {}

    def get(self, key: str) -> Path:
        if key not in self.done:
            out = self.root / key
            if key == "ddp":
                _ok(torchrun(self.config, out))
            else:
                _ok(accelerate(self.config, out, key))
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="module")
def runs(config, tmp_path_factory) -> Runs:
    return Runs(config, tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_runs_as_configured_matches_ddp_and_resumes_exactly(engine, runs, config, tiny_model_dir, tmp_path):
    """The engine asked for is the one that ran (sharding real: ~half the parameter elements per process under
    ZeRO-3 / FSDP2), each optimizer step accumulated >= 3 micro-batches, the parameters after 2 steps equal DDP's,
    and a kill during step 2 plus `--resume auto` ends bitwise where the uninterrupted run ended."""
    _, kind, stage, sharded = ENGINES[engine]
    run = runs.get(engine)
    got = distributed(run)
    assert (got["type"], got.get("zero_stage"), got["world_size"]) == (kind, stage, 2)
    assert (0.45 < got["param_share"] < 0.6) if sharded else got["param_share"] == 1.0
    steps = rows(run)
    assert all(r["optim/micro_batches"] >= 3 for r in steps)
    assert all(r["loss/logprob_mismatch"] < 1e-5 for r in steps)  # one step per minibatch: nothing moved mid-step

    init = {f"{k}": v for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()}
    ddp = policy(runs.get("ddp"))
    assert distributed(runs.get("ddp"))["type"] == "ddp"
    rel, cos = closeness(ddp, policy(run), init)
    assert rel < 1e-5 and cos > 0.9999, (rel, cos)

    killed = tmp_path / "killed"
    proc = accelerate(config, killed, engine, env=_env(RLKIT_FAILPOINTS="update@2"))
    assert proc.returncode != 0
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_000001"]
    proc = _ok(accelerate(config, killed, engine, "--resume=auto"))
    assert "resumed from" in proc.stdout and "at step 1" in proc.stdout
    want, have = policy(run), policy(killed)
    assert all(torch.equal(want[k], have[k]) for k in want)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/", "memory/"))}  # noqa: E731
    assert [strip(r) for r in rows(killed)] == [strip(r) for r in steps]


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_colocated_vllm_gets_gathered_weights(engine, config, tmp_path):
    """The colocated vLLM engine under sharded parameters: the weight push gathers every shard (it used to send
    ZeRO-3's empty placeholders / FSDP2's DTensors), so step 2's rollouts come from the trained policy: the
    trainer's logprobs equal the engine's."""
    run = tmp_path / "run"
    _ok(accelerate(config, run, engine, "--rollout.engine=vllm"))
    assert distributed(run)["param_share"] < 0.6
    second = rows(run)[1]
    assert second["policy_version"] == 2 and second["loss/logprob_mismatch"] < 1e-4


def test_lora_under_zero3_and_fsdp2(config, tmp_path):
    """LoRA adapters under ZeRO-3 and FSDP2, pushed merged into colocated vLLM: both engines start every process
    from the same adapter initialisation (rank 0's), so they compute the same first gradient, and the merged
    weights the engine generates with are the trained ones."""
    norms = {}
    for engine in ("zero3", "fsdp2"):
        run = tmp_path / engine
        _ok(accelerate(config, run, engine, "--rollout.engine=vllm", "--model.lora.enabled=true", "--model.lora.r=4"))
        steps = rows(run)
        assert steps[1]["loss/logprob_mismatch"] < 1e-4
        assert (run / "checkpoints" / "step_000002" / "policy" / "adapter_model.safetensors").exists()
        norms[engine] = steps[0]["optim/grad_norm"]
    assert norms["zero3"] == pytest.approx(norms["fsdp2"], rel=1e-5)


@pytest.mark.parametrize("engine,mode", [("zero3", "fixed"), ("fsdp2", "adaptive"), ("zero3", "flex")])
def test_sp_with_sharded_engine_against_a_server_asynchronously(engine, mode, server, config, tiny_model_dir,
                                                                  tmp_path):
    """SP 2 (fixed / adaptive / flex) x ZeRO-3 / FSDP2 x `vllm_server` x `async_steps: 1`: the sharded weights reach
    the server gathered (it ends holding the final policy), batches are never more than one version old. Flex under
    ZeRO-3 with an expensive exchange: rounds mix a sharded micro-batch on both ranks with unsharded ones on each,
    and ZeRO-3's per-call parameter gathers still meet (the LM head runs once per forward at any degree)."""
    run = tmp_path / "run"
    _ok(accelerate(config, run, engine, "--rollout.engine=vllm_server", f"--rollout.server_urls=[{server.url}]",
                   "--rollout.async_steps=1", "--parallel.sp_size=2", f"--parallel.sp_mode={mode}",
                   "--optim.micro_batch_tokens=100", *(["--parallel.cost_model.comm={2: 0.01}"] if mode == "flex"
                                                      else [])))
    got = distributed(run)
    assert (got["type"], got["sp"], got["dp"]) == (ENGINES[engine][1], 2, 1)
    steps = rows(run)
    assert [r["async/staleness_max"] for r in steps] == [0.0, 1.0]
    assert all(r["parallel/sharded_frac"] > 0 for r in steps)
    if mode == "flex":  # rows over the budget sharded, the rest on one rank each
        assert all(r["parallel/sharded_frac"] < 1 for r in steps), [r["parallel/sharded_frac"] for r in steps]
    import requests

    assert requests.get(f"{server.url}/weight_info").json()["weight_version"] == "2"
    assert server_matches_policy(server.url, run / "checkpoints" / "step_000002" / "policy", tiny_model_dir) < 1e-4


def _nodes(commands: list[list[str]], cwd: Path, log_prefix: Path) -> list[tuple[int, str]]:
    """Start one launcher per emulated node at once; (exit status, stderr) of each. Output goes to files: a launcher
    blocked on a full pipe would hang its node and with it the other."""
    logs = [log_prefix.with_name(f"{log_prefix.name}{i}.log") for i in range(len(commands))]
    nodes = [subprocess.Popen(c, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
             for c, log in zip(commands, logs)]
    return [(n.wait(timeout=600), log.read_text()) for n, log in zip(nodes, logs)]


def test_multinode_launchers_form_one_job(runs, config, tiny_model_dir, tmp_path):
    """Two nodes emulated on 127.0.0.1, one launcher per node, as the SLURM script prints them (`DRY_RUN=1`):
    `accelerate launch --num_machines 2 --machine_rank i` with zero3.yaml forms one 2-process job (it used to be two
    1-node jobs) whose result is bitwise the 1-node 2-process run's; so does `torchrun --nnodes 2`."""
    out = tmp_path / "mn"
    printed = _run(["bash", str(ROOT / "examples" / "multinode" / "slurm.sbatch")], ROOT, {
        **os.environ, "DRY_RUN": "1", "NODELIST": "127.0.0.1 127.0.0.1", "INFER_NODES": "0", "GPUS_PER_NODE": "1",
        "MODEL": str(tiny_model_dir),
        "CONFIG": str(config), "MAIN_PORT": str(free_port()), "TRAIN_ARGS": f"--output_dir={out}"})
    assert printed.returncode == 0, printed.stderr
    commands = [line for line in printed.stdout.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and all("deepspeed" not in c and "zero3.yaml" in c for c in commands)
    results = _nodes([["bash", "-c", c] for c in commands], ROOT, tmp_path / "node")
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["distributed"]["num_machines"] == 2
    one = policy(runs.get("zero3"))
    assert all(torch.equal(one[k], v) for k, v in policy(out).items())

    port, tr = free_port(), tmp_path / "torchrun"
    results = _nodes([[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(i),
                       "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m",
                       "rlkit.cli", "train", str(config), f"--output_dir={tr}"] for i in (0, 1)], tmp_path,
                     tmp_path / "torchrun")
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:]
    assert distributed(tr)["num_machines"] == 2
    ddp = policy(runs.get("ddp"))
    assert all(torch.equal(ddp[k], v) for k, v in policy(tr).items())


def test_resume_across_engines(runs, config, tmp_path):
    """FSDP2's checkpoints hold whole tensors: DDP resumes one and finishes where FSDP2 would (within float noise).
    DeepSpeed's per-process partitions cannot be read by another engine: refused in one line before any model
    loads."""
    src = runs.get("fsdp2") / "checkpoints" / "step_000001"
    out = tmp_path / "ddp-from-fsdp2"
    proc = _ok(torchrun(config, out, f"--resume={src}"))
    assert "the checkpoint was written under fsdp2, this run is ddp" in proc.stdout
    rel, cos = closeness(policy(runs.get("fsdp2")), policy(out), policy(runs.get("fsdp2"), 1))
    assert rel < 1e-5 and cos > 0.9999, (rel, cos)

    zero3 = runs.get("zero3") / "checkpoints" / "step_000001"
    proc = accelerate(config, tmp_path / "fsdp2-from-zero3", "fsdp2", f"--resume={zero3}")
    assert proc.returncode != 0  # each process exits with 2; the launcher reports the failure
    lines = [x for x in proc.stderr.splitlines() if x.startswith("rlkit: error:")]
    assert lines and "written by DeepSpeed ZeRO-3 on 2 process(es), this run is FSDP2 on 2 process(es)" in lines[0]
    assert "Loading weights" not in proc.stderr  # refused before any model loaded
