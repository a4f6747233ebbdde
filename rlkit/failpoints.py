"""Named fault-injection points for the crash tests: ``RLKIT_FAILPOINTS="checkpoint@2,update@1"`` kills the
process with SIGKILL the 2nd time it reaches ``checkpoint`` (or the 1st time it reaches ``update``).

Points: ``rollout`` (after a step's generation), ``update`` (after the policy update, before weight sync),
``checkpoint`` (checkpoint files written, not yet published), ``publish`` (checkpoint renamed into place, old
ones not yet rotated), ``log`` (after a metrics row is written). Without the variable a hit is a dict lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get("RLKIT_FAILPOINTS", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition("@")
        out[name] = int(nth or 1)
    return out


def hit(name: str) -> None:
    """Count a pass through point ``name``; SIGKILL this process on the armed pass."""
    if "RLKIT_FAILPOINTS" not in os.environ:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _armed().get(name) == _counts[name]:
        os.kill(os.getpid(), signal.SIGKILL)
