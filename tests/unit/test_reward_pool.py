"""The reward worker pool (rlkit.rewards.pool) and math_correct on it: per-sample deadlines, killed and
replaced workers, failures that name their sample, and an interpreter exit that never waits on a worker."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import reward_pool_helpers as helpers

from rlkit.rewards.pool import SampleTimeout, WorkerDied, WorkerPool, shared_pool

PROMPTS = ["What is 2+2?", "What is 3+3?", "What is 4+4?"]


def _alive(pid: int) -> bool:
    """A live process (a zombie left for an init that does not reap counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def pool():
    p = WorkerPool(2)
    yield p
    p.shutdown()


def test_hung_sample_is_killed_others_finish_and_the_pool_keeps_working(pool):
    assert pool.map(helpers.square_or_hang, [1, 2], timeout=30) == [1, 4]  # starts the workers
    before = set(pool.pids)
    t0 = time.monotonic()
    with pytest.raises(SampleTimeout, match=r"no result within 1 s per sample; the worker was killed") as info:
        pool.map(helpers.square_or_hang, [0, 1, 2, 3, 4, 5], timeout=1.0)
    assert time.monotonic() - t0 < 20  # ~1 s; the bound only guards against waiting on the hung worker
    e = info.value
    assert e.sample == 3 and e.values == [0, 1, 4, None, 16, 25] and list(e.failed) == [3]
    after = set(pool.pids)
    assert len(after) == 2 and len(before - after) == 1  # the hung worker was replaced
    assert not any(_alive(p) for p in before - after)  # ... and killed
    assert pool.map(helpers.square_or_hang, [6, 7, 8], timeout=30) == [36, 49, 64]


def test_worker_exception_and_crash_name_their_sample(pool):
    with pytest.raises(ValueError, match="no square for 2") as info:
        pool.map(helpers.square_or_raise, [1, 2, 3], timeout=30)
    assert info.value.sample == 1 and info.value.values == [1, None, 9]
    assert "square_or_raise" in str(info.value.__cause__)  # the worker's traceback
    with pytest.raises(WorkerDied, match="exit code 3") as info:
        pool.map(helpers.square_or_die, [0, 1, 2], timeout=30)
    assert info.value.sample == 1 and info.value.values == [0, None, 4]
    assert pool.map(helpers.square_or_die, [2, 3], timeout=30) == [4, 9]


def test_shared_pool_is_one_per_size_spreads_samples_and_starts_light():
    a, b = shared_pool(2), shared_pool(2)
    assert a is b and shared_pool(1) is not a
    pids = set(a.map(helpers.pid, list(range(8)), timeout=30))
    assert pids <= set(a.pids) and os.getpid() not in pids
    assert a.map(helpers.heavy_modules_loaded, [0, 1], timeout=30) == [[], []]  # workers start without torch


def _math_terms(monkeypatch, on_error, batches=None):
    """math_correct whose worker task hangs on the completion "hang" (same pool machinery, test task);
    ``batches`` collects the size of each batch handed to the pool."""
    from rlkit.rewards import RewardSet, builtin
    from rlkit.rewards.combine import Term

    real = shared_pool

    class Redirect:
        def __init__(self, workers, warmup=None):
            self.pool = real(workers, warmup)

        def map(self, fn, items, timeout):
            assert fn is builtin._verify_sample
            if batches is not None:
                batches.append(len(items))
            return self.pool.map(helpers.verify_or_hang, items, timeout)

    monkeypatch.setattr(builtin, "shared_pool", Redirect)
    verifier = builtin.math_correct(sample_timeout=1.0, workers=2)
    return RewardSet([Term("math_correct", 1.0, verifier, correctness=True, timeout=60, on_error=on_error)])


def test_math_correct_timeout_names_the_sample_or_masks_it(monkeypatch):
    rs = _math_terms(monkeypatch, "raise")
    completions, columns = ["\\boxed{4}", "hang", "\\boxed{8}"], {"answer": [None, "6", "#### 8"]}
    t0 = time.monotonic()
    from rlkit.rewards import RewardError

    with pytest.raises(RewardError, match=r"reward 'math_correct' timed out \(no result within 1 s per sample; "
                                          r"the worker was killed\) at step 4, sample 1 \(prompt: 'What is 3\+3\?'\)"):
        rs(PROMPTS, completions, [[1]] * 3, columns, step=3)
    batches = []
    rs = _math_terms(monkeypatch, "none", batches)
    v = rs(PROMPTS, completions, [[1]] * 3, columns, step=3)
    assert v.errors == {"math_correct": 1} and batches == [2]  # the pool's partial results: no probing
    assert [x if x == x else None for x in v.terms["math_correct"].tolist()] == [None, None, 1.0]
    assert time.monotonic() - t0 < 30  # ~2 s (two 1 s deadlines); no single-sample probing needed


def test_math_correct_in_the_pool_matches_gsm8k_golds():
    from rlkit.rewards.registry import build_reward

    verifier = build_reward("math_correct", {"workers": 2})
    golds = ["Natalia sold 48/2 = 24 clips in May.\n#### 72", "#### 1,000", "#### 10", "#### 5", 3.0]
    completions = ["She sold \\boxed{72} clips", "The total is 1000.", "so 10.5", "x = 4", "\\boxed{3}"]
    assert verifier(PROMPTS, completions, [[]] * 5, answer=golds) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_exit_never_waits_on_a_hung_worker(tmp_path):
    code = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import reward_pool_helpers as helpers
        from rlkit.rewards.pool import shared_pool
        pool = shared_pool(2)
        print(*pool.map(helpers.pid, [0, 1], timeout=30), flush=True)
        threading.Thread(target=pool.map, args=(helpers.square_or_hang, [3, 3], 0), daemon=True).start()
        import time; time.sleep(1)
        print(*pool.pids, flush=True)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 30
    pids = {int(p) for p in proc.stdout.split()}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_a_worker_killed_while_idle_is_replaced_without_losing_a_sample(pool):
    import signal

    pool.map(helpers.pid, [0, 1], timeout=30)
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(victim) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.map(helpers.square_or_hang, [4, 5, 6], timeout=30) == [16, 25, 36]
    assert victim not in pool.pids and len(pool.pids) == 2
