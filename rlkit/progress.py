"""Where a run is (step and phase), for the one line an interruption or an environmental failure prints.

The loop updates it as it goes; the CLI reads it when SIGINT, SIGTERM or a full disk stops the run. Imports
nothing from rlkit.
"""

from __future__ import annotations

from pathlib import Path

state: dict = {"run_dir": None, "step": None, "phase": None, "pending": None}


def interrupt(exc_type: type[BaseException]) -> None:
    """A signal handler's body: remember the interruption, then raise it in the main thread. Python raises it at the
    next bytecode wherever that is, and where that is a finaliser or a callback the exception is printed and
    dropped; the next phase boundary (``at``) raises it again, so a signal always stops the run. Once one
    interruption is under way, repeated signals (a user pressing Ctrl-C three times while the run shuts down) do
    nothing: raising again inside the shutdown's ``finally`` blocks and finalisers would skip the clean-up and print
    "Exception ignored" tracebacks after the one line."""
    if state["pending"] is not None:
        return
    state["pending"] = exc_type
    raise exc_type()


def at(phase: str, step: int | None = None, run_dir: str | Path | None = None) -> None:
    """The run is now in ``phase`` (of 1-based ``step`` when given). Raises an interruption that was lost."""
    if state["pending"] is not None:
        raise state["pending"]()
    state["phase"] = phase
    if step is not None:
        state["step"] = step
    if run_dir is not None:
        state["run_dir"] = Path(run_dir)


def where() -> str:
    """' at step 3 (rollout)', or '' before a run started."""
    if state["phase"] is None:
        return ""
    step = f" at step {state['step']}" if state["step"] is not None else ""
    return f"{step} ({state['phase']})" if step else f" during {state['phase']}"
