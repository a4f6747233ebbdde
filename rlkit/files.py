"""Durable file writes: a file or directory is published by ``os.rename`` only after its bytes and its
directory entries are on disk (fsync), so a crash or SIGKILL leaves either the old version or the new one.

This module imports nothing from rlkit: every layer may import it.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# a Rust writer's I/O error as its message shows it (safetensors: "I/O error: No space left on device (os error 28)",
# older releases "IoError(Os { code: 28, kind: StorageFull ...")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (new, renamed and removed names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up (``root`` last)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory: fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def os_error_of(e: BaseException, path: str | Path) -> OSError | None:
    """The operating-system error behind ``e``: ``e`` itself when it is an OSError, the one a foreign writer wrapped
    in its own exception type (safetensors' SafetensorError carries "Os { code: 28 ..." in its message, torch's
    RuntimeError "No space left on device"), as an OSError naming ``path``; None for anything else."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    found = _RUST_OS_ERROR.search(text)
    code = int(found.group(1) or found.group(2)) if found else next(
        (c for c in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO) if os.strerror(c) in text), None)
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


def unwritable_reason(path: str | Path, *, directory: bool = False) -> str | None:
    """Why ``path`` (a file to write, or a ``directory`` to write into) cannot be written, checked without creating
    anything: a component that is a file, an existing entry of the wrong kind, no write permission on the nearest
    existing folder. None when it can be written (as far as the permissions say; a full disk shows only on write)."""
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            return f"{path} exists and is not a directory"
        if not directory and path.is_dir():
            return f"{path} is a directory, not a file"
        if not os.access(path, os.W_OK):
            return f"{path}: permission denied"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory (in the path {path})"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent}: permission denied (to write {path})"
    return None
