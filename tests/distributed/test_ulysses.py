"""Ulysses sequence parallelism (rlkit.parallel.ulysses) on 2 gloo processes against 1 process."""

import json

import torch
from test_ddp import (
    HERE,  # same directory (pytest puts it on sys.path)
    LogprobPolicyState,
)
from test_ddp import _torchrun as torchrun

from rlkit.parallel.ulysses import shard_bounds, shard_row


def test_shards_cover_the_padded_row_once():
    row = torch.arange(1, 8).unsqueeze(0)  # 7 tokens over 3 ranks: shards of 3, 2 padding tokens at the end
    assert [shard_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 6), (6, 9)]
    parts = [shard_row(row, 3, r, pad=0) for r in range(3)]
    assert torch.cat(parts, dim=1).tolist() == [[1, 2, 3, 4, 5, 6, 7, 0, 0]]


def test_ulysses_equals_one_process_on_2_and_4_ranks_with_any_head_count(tmp_path):
    """A packed row of 4 samples (one of 1 token, one crossing the shard boundary) through a Qwen2 with split KV
    heads, a Llama shape with one KV head repeated, and a Qwen2 of 6 heads / 2 KV heads, on 2 and on 4 ranks (6
    heads over 4 ranks: padded to 8): logprobs, entropies and parameter gradients equal one process."""
    outs = {}
    for nproc in (1, 2, 4):
        out = tmp_path / f"ulysses_{nproc}.pt"
        proc = torchrun(nproc, str(HERE / "ulysses_check.py"), str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[nproc] = torch.load(out)
    for nproc in (2, 4):
        for kind in ("qwen2", "llama", "qwen2_6h"):
            one, many = outs[1][kind], outs[nproc][kind]
            assert (one["logprobs"] - many["logprobs"]).abs().max() <= 1e-5, (kind, nproc)
            assert (one["entropy"] - many["entropy"]).abs().max() <= 1e-5, (kind, nproc)
            worst = max((one["grads"][n] - many["grads"][n]).abs().max().item() for n in one["grads"])
            assert worst <= 1e-5, f"{kind} on {nproc}: gradients differ by {worst}"
            assert all(g.abs().sum() > 0 for n, g in one["grads"].items() if "layers" in n)  # every layer learns


def test_sequence_parallel_update_equals_one_process_for_every_loss_family(tiny_model_dir, tmp_path):
    """update_policy with sp_size=2 (fixed: every micro-batch sharded; adaptive: those over the 30-token budget
    sharded, the rest side by side) and with sp_size=4 in flex mode (12-token budget: plans mixing degree-4, degree-2
    and unsharded micro-batches in the same rounds) against 1 process, after scoring old (and reference) logprobs
    under the same layout: the same parameters for ppo_clip x 3 aggregations, with KL, with DMMPT, kl_cov and drpo."""
    outs = {}
    for nproc, mode, budget in ((1, "fixed", 30), (2, "fixed", 30), (2, "adaptive", 30), (4, "flex", 12)):
        out = tmp_path / f"sp_{nproc}_{mode}.pt"
        proc = torchrun(nproc, str(HERE / "sp_update_check.py"), str(tiny_model_dir), str(out), str(nproc), mode,
                        str(budget), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[(nproc, mode)] = torch.load(out)
    one = outs[(1, "fixed")]
    init = LogprobPolicyState.load(tiny_model_dir)
    for family, ref in one.items():
        moved = max((ref["params"][k] - init[k]).abs().max().item() for k in init)
        assert moved > 1e-3, family  # the update really moved the parameters
        for key in ((2, "fixed"), (2, "adaptive"), (4, "flex")):
            got = outs[key][family]
            worst = max((ref["params"][k] - got["params"][k]).abs().max().item() for k in ref["params"])
            assert worst <= 1e-5 * max(1.0, moved), f"{family} {key}: parameters differ by {worst} (moved {moved})"
            assert (ref["old"] - got["old"]).abs().max() <= 1e-5, f"{family} {key}: old logprobs differ"
            assert abs(ref["entropy"] - got["entropy"]) <= 1e-5 and ref["tokens"] == got["tokens"]
            assert ref["masked"] == got["masked"]
    assert one["ppo_dmmpt"]["masked"] > 0  # DMMPT really removed tokens
    # the plans really were what they claim: fixed shards everything, adaptive mixes 1 and 2, flex 1, 2 and 4
    assert all(r["degrees"] == [2] for r in outs[(2, "fixed")].values())
    assert all(r["degrees"] == [1, 2] for r in outs[(2, "adaptive")].values())
    flex = {f: r["degrees"] for f, r in outs[(4, "flex")].items()}
    # drpo's units are whole groups: its short groups top up the sharded rows, so its plans mix 2 and 4
    assert all(d == ([2, 4] if f == "drpo" else [1, 2, 4]) for f, d in flex.items()), flex
    # the SP group shared its planning: ranks ran plans another rank of the group made (and broadcast)
    assert sum(r["received"] for r in outs[(4, "flex")].values()) > 0


def test_cli_train_with_sequence_parallelism_equals_the_data_parallel_run(tiny_model_dir, tmp_path):
    """`rlkit train` on 2 processes: sp_size=2 (fixed; with checkpointing and tiled MLPs; adaptive with segment
    rollouts) against the same run data-parallel (sp_size=1, same rollouts: each rank generates its own prompts
    either way), 2 steps of 2 passes (old logprobs scored under SP): the same parameters. (A 1-process run generates
    other completions, as rollout seeds are per rank; the update itself is compared with 1 process above.) The
    adaptive run calibrates its time model at start-up, with the exchange's per-token cost given (on 2 CPU
    processes it is nearly free, and fixed SP would be the fastest plan), and logs predicted vs measured time."""
    from safetensors.torch import load_file

    segments = "--rollout.segments=2"  # segment rollouts: unfinished samples carried to the next step
    runs = {"dp": [], "sp": ["--parallel.sp_size=2"],
            "tiled": ["--parallel.sp_size=2", "--model.gradient_checkpointing=true", "--parallel.tiled_mlp=always"],
            "dp_segments": [segments], "adaptive": [segments, "--parallel.sp_size=2", "--parallel.sp_mode=adaptive",
                                                    "--parallel.cost_model.comm={2: 0.01}"]}
    params, sharded = {}, {}
    for name, extra in runs.items():
        run = tmp_path / name
        proc = torchrun(2, "-m", "rlkit.cli", "train", f"--model.name_or_path={tiny_model_dir}", f"--output_dir={run}",
                        "--rollout.engine=hf", "--rollout.prompts_per_step=2", "--rollout.max_new_tokens=24",
                        "--eval.size=0", "--rewards=[{name: 'helpers:digit_fraction'}]", "--train.steps=2",
                        "--optim.lr=1e-3", "--optim.micro_batch_tokens=112", "--algorithm.mu=2",
                        "--logging.progress=false", *extra, cwd=tmp_path, extra_path=str(HERE.parent / "integration"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        sharded[name] = [r["parallel/sharded_frac"] for r in rows if "reward/mean" in r]
        if name == "adaptive":
            assert "SP time model:" in proc.stdout and "d=2: 10000.00 us/token" in proc.stdout  # the given value
            timed = [r for r in rows if "reward/mean" in r]
            assert all(r["parallel/predicted_s"] > 0 and r["parallel/bound_s"] > 0 and r["parallel/gap"] >= -1e-9
                       and r["parallel/measured_s"] > 0 for r in timed)
            # saved with the checkpoint: a resumed run plans with the same model (exact resume)
            state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
            assert state["parallel_cost"]["comm"]["2"][0] == 0.01 and state["parallel_cost"]["a"] > 0
        else:
            assert all("parallel/predicted_s" not in r for r in rows)
        params[name] = load_file(str(run / "checkpoints" / "step_000002" / "policy" / "model.safetensors"))
    assert sharded["dp"] == [0.0, 0.0] and sharded["sp"] == [1.0, 1.0] and sharded["tiled"] == [1.0, 1.0]
    assert all(0.0 < f < 1.0 for f in sharded["adaptive"])  # rows over 112 tokens sharded, the rest side by side
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max((params["dp"][k] - init[k]).abs().max().item() for k in init) > 1e-3
    for name, base in (("sp", "dp"), ("tiled", "dp"), ("adaptive", "dp_segments")):
        worst = max((params[base][k] - params[name][k]).abs().max().item() for k in init)
        assert worst <= 1e-4, f"{name}: parameters differ from the data-parallel run by {worst}"


def test_cli_train_sp4_with_six_heads_equals_the_data_parallel_run(tmp_path):
    """`rlkit train` on 4 processes with a model of 6 query heads and 2 KV heads (head_dim 32): sp_size=4 (heads
    padded to 8) trains to the parameters of the same 4-process run without SP (the same rollouts: each rank
    generates its own prompts either way)."""
    from safetensors.torch import load_file

    from rlkit.models import build_tiny_model

    model = build_tiny_model(tmp_path / "six-heads", hidden_size=192, heads=6, kv_heads=2,
                             corpus=[f"Tom has {i} apples and buys {i + 2} more. \\boxed{{{2 * i + 2}}}" for i in range(60)])
    params = {}
    for name, extra in (("dp", []), ("sp4", ["--parallel.sp_size=4"])):
        run = tmp_path / name
        proc = torchrun(4, "-m", "rlkit.cli", "train", f"--model.name_or_path={model}", f"--output_dir={run}",
                        "--rollout.engine=hf", "--rollout.prompts_per_step=4", "--rollout.group_size=2",
                        "--rollout.max_new_tokens=16", "--eval.size=0",
                        "--rewards=[{name: 'helpers:digit_fraction'}]", "--train.steps=2", "--optim.lr=1e-3",
                        "--optim.micro_batch_tokens=96", "--logging.progress=false", *extra, cwd=tmp_path,
                        extra_path=str(HERE.parent / "integration"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["parallel/sharded_frac"] for r in rows if "reward/mean" in r] == ([1.0, 1.0] if extra else [0.0, 0.0])
        params[name] = load_file(str(run / "checkpoints" / "step_000002" / "policy" / "model.safetensors"))
    init = load_file(str(model / "model.safetensors"))
    a = torch.cat([(params["dp"][k] - init[k]).flatten() for k in init])
    b = torch.cat([(params["sp4"][k] - init[k]).flatten() for k in init])
    assert a.abs().max() > 1e-3
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.999
