"""Named fault-injection points for the crash tests: ``RLKIT_FAILPOINTS="checkpoint@2,update@1"`` kills the
process with SIGKILL the 2nd time it reaches ``checkpoint`` (or the 1st time it reaches ``update``). An action
after a colon replaces the kill: ``rollout@2:SIGINT`` / ``:SIGTERM`` send that signal to the process (what a user's
Ctrl-C or a scheduler's stop does; ``:SIGINTx3`` three SIGINTs 50 ms apart), ``checkpoint@2:ENOSPC`` raises the
OSError a full disk raises there.

Points: ``rollout`` (after a step's generation), ``update`` (after the policy update, before weight sync),
``checkpoint`` (checkpoint files written, not yet published), ``publish`` (checkpoint renamed into place, old
ones not yet rotated), ``log`` (after a metrics row is written), ``eval`` (a held-out evaluation in the loop starts). Without the variable a hit is a dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

_counts: dict[str, int] = {}


def _armed() -> dict[str, tuple[int, str]]:
    spec = os.environ.get("RLKIT_FAILPOINTS", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, action = item.partition(":")
        name, _, nth = point.partition("@")
        out[name] = (int(nth or 1), action or "KILL")
    return out


def hit(name: str, path: str | None = None) -> None:
    """Count a pass through point ``name``; on the armed pass SIGKILL this process (or do the armed action;
    ``path`` names the file an ENOSPC is about)."""
    if "RLKIT_FAILPOINTS" not in os.environ:
        return
    _counts[name] = _counts.get(name, 0) + 1
    nth, action = _armed().get(name, (0, ""))
    if nth != _counts[name]:
        return
    if action == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    if action == "SIGINTx3":  # an impatient user: three Ctrl-C in quick succession, the later ones during shutdown
        import threading
        import time

        def press(pid=os.getpid()):
            for _ in range(3):
                os.kill(pid, signal.SIGINT)
                time.sleep(0.05)
        threading.Thread(target=press, daemon=True).start()
        time.sleep(1)  # the first press interrupts this sleep
        return
    os.kill(os.getpid(), {"KILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}[action])
