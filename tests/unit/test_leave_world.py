"""A rank that ended a multi-process world leaves without interpreter finalization (rlkit.parallel.dist.leave_world):
its exit code and everything it printed come through, and nothing registered for finalization runs (where native
threads left behind by DeepSpeed/accelerate could abort the rank). Any other process exits normally."""

import subprocess
import sys
import textwrap


def _run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import atexit, sys
        from rlkit.parallel import dist
        atexit.register(lambda: print("finalized", flush=True))
        print("written before", end="")  # unflushed: a pipe is block-buffered
        sys.stderr.write("err before")
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_rank_that_ended_its_world_leaves_with_its_code_and_output_but_no_finalization():
    proc = _run("""
        dist.end_world()  # no process group here: only the mark
        dist.leave_world(3)
        print("after leave_world")
    """)
    assert proc.returncode == 3
    assert proc.stdout == "written before"
    assert proc.stderr == "err before"


def test_any_other_process_returns_from_leave_world_and_finalizes():
    proc = _run("""
        dist.leave_world(3)
        print(" after leave_world")
        sys.exit(5)
    """)
    assert proc.returncode == 5
    assert proc.stdout == "written before after leave_world\nfinalized\n"


def test_the_cli_entry_leaves_after_an_escaping_error_once_the_world_ended():
    """An exception that escapes ``main`` after the run ended its world: traceback, status 1, no finalization."""
    proc = _run("""
        from rlkit import cli

        def main():
            dist.end_world()
            raise RuntimeError("after teardown")

        cli.main = main
        cli.entry()
    """)
    assert proc.returncode == 1
    assert proc.stdout == "written before" and "RuntimeError: after teardown" in proc.stderr


def test_the_cli_entry_exits_normally_without_a_world():
    proc = _run("""
        from rlkit import cli

        cli.main = lambda: 4
        cli.entry()
    """)
    assert proc.returncode == 4 and proc.stdout == "written beforefinalized\n"
