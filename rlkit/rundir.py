"""A run directory belongs to one live run, and rlkit deletes only what rlkit wrote.

The lock: ``RUN_DIR/.rlkit.lock``, an advisory ``flock`` held by the run's main process for the run's life, with
the holder's host, pid and start time written in it. A second ``train`` (with ``--resume`` or ``--overwrite`` or
neither) into a locked directory is refused in one line naming the holder. The OS releases the lock when its
holder dies, however it dies; the next run takes it over and says whose it was. On a clean end the file is
removed. ``flock`` works on local filesystems and on NFS (Linux emulates it with NFS byte-range locks); on
filesystems without working locks (some FUSE or SMB mounts) it cannot protect anything, and two runs started there
at the same moment are not detected.

``--overwrite`` deletes rlkit's own entries (``OWN``: the files and folders a run, ``rlkit eval`` and ``rlkit
report`` write, and their temporary files) and refuses, before anything is deleted, a directory that holds
anything else or that contains one of the run's own inputs (model, data, resume checkpoint, reward modules).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

from rlkit.errors import CheckpointError, UserError

LOCK_NAME = ".rlkit.lock"
OWN = frozenset({"run.json", "config.json", "metrics.jsonl", "lengths.jsonl", "completions.jsonl",
                 "eval_summary.json", "checkpoints", "report", "evals", "wandb", LOCK_NAME})
MARKERS = ("run.json", "metrics.jsonl", "checkpoints")  # any of these: an rlkit run directory
_TMP = re.compile(r"^\..+\.tmp-\d+$")  # atomic_write_text's temporary files
_CHECKPOINT_ENTRY = re.compile(r"^step_\d{6,}(\.tmp-.+|\.old)?$")
# the complete checkpoints of a run directory (rlkit.trainers.checkpoint writes them): step_NNNNNN with COMPLETE
STEP_DIR = re.compile(r"^step_(\d{6,})$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _own(name: str) -> bool:
    return name in OWN or bool(_TMP.match(name))


def unwritable(path: Path, e: OSError) -> UserError:
    """One line for an output path that cannot be written (read-only filesystem, a file in the way, no space)."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
           errno.ENOTDIR: "a path component is a file, not a directory",
           errno.EEXIST: "a file of that name is in the way"}.get(e.errno, e.strerror or type(e).__name__)
    return UserError(f"output_dir {path} cannot be written ({why}: {e.filename or path})")


class RunLock:
    """The advisory lock of one run directory (see the module docstring). ``acquire`` creates the directory when
    needed; ``release(discard=True)`` also removes a directory that the acquire created and nothing filled."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created = False
        self.token = ""

    def acquire(self) -> list[str]:
        """Take the lock or raise CheckpointError naming the holder; returns console notes (a stale lock taken
        over)."""
        try:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise unwritable(self.run_dir, e) from None
        if not self.run_dir.is_dir():
            raise CheckpointError(f"output_dir {self.run_dir} exists and is not a directory")
        import fcntl

        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise _not_a_lock(self.path) from None
                raise unwritable(self.run_dir, e) from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)  # a device, fifo or a hard link to someone else's file: never truncated
                raise _not_a_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise unwritable(self.path, e) from None
                raise CheckpointError(f"output_dir {self.run_dir} is in use by another rlkit run ({_describe(holder)});"
                                      " wait for it to end or choose another output_dir") from None
            try:  # the file we locked is still the lock (a releasing holder may have removed it meanwhile)
                same = os.lstat(self.path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read(fd)
            self.token = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:6]})
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, self.token.encode(), 0)
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise unwritable(self.path, e) from None
            self.fd = fd
            return [f"output_dir {self.run_dir}: took over the lock of a run that is gone ({_describe(previous)})"] \
                if previous else []
        raise CheckpointError(f"output_dir {self.run_dir}: could not take its lock {self.path} (it keeps being "
                              "replaced); is another program removing it?")

    def release(self, discard: bool = False) -> None:
        """Drop the lock (the file is removed first, so a waiting run never locks a stale file); with ``discard``
        a directory this lock created is removed if nothing else was written into it."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if discard and self.created:
            try:
                self.run_dir.rmdir()  # only when empty
            except OSError:
                pass


def _not_a_lock(path: Path) -> CheckpointError:
    """The lock path exists but is not a plain file of its own (a symlink, a hard link, a directory, a fifo):
    rlkit never opens through it, so a link to a file elsewhere cannot be truncated."""
    return CheckpointError(f"output_dir {path.parent}: its lock path {path} is not a regular file of its own "
                           "(a symlink, hard link, directory or device); rlkit never writes through it: remove it "
                           "or choose another output_dir")


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(holder: dict) -> str:
    if not holder:
        return "no holder recorded"
    if holder.get("unreadable"):
        return "holder unknown"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(run_dir: Path, overwrite: bool, inputs: dict[str, Path] | None = None) -> bool:
    """A fresh run needs an empty (or missing) ``output_dir`` (its own lock aside), or ``--overwrite`` on an rlkit
    run directory that holds nothing but rlkit's entries and none of the run's inputs (``inputs``: what -> path).
    Returns whether the directory must be cleared first. Deletes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"output_dir {run_dir} exists and is not a directory")
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if not entries:
        return False
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    if not overwrite:
        if "run.json" in entries and not list_checkpoints(run_dir):
            raise CheckpointError(f"output_dir {run_dir} holds an rlkit run that stopped before its first checkpoint "
                                  f"({shown}); pass --resume auto to start it again from step 0 (what it logged is "
                                  "replaced), --overwrite to delete it, or choose another output_dir")
        raise CheckpointError(f"output_dir {run_dir} is not empty ({shown}); pass --resume auto to continue that run, "
                              "--overwrite to delete it and start again, or choose another output_dir")
    if not any(name in MARKERS for name in entries):
        raise CheckpointError(f"--overwrite: {run_dir} does not look like an rlkit run directory (none of "
                              f"{', '.join(MARKERS)}; it holds {shown}); refusing to delete it")
    foreign = [name for name in entries if not _own(name)]
    ckpt = run_dir / "checkpoints"
    if ckpt.is_dir():
        foreign += [f"checkpoints/{p.name}" for p in sorted(ckpt.iterdir()) if not _CHECKPOINT_ENTRY.match(p.name)]
    if foreign:
        raise CheckpointError(f"--overwrite: {run_dir} holds entries rlkit did not write ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); refusing to delete anything: move them out or "
                              "choose another output_dir")
    for what, path in (inputs or {}).items():
        if _inside(path, run_dir):
            raise CheckpointError(f"--overwrite: {what} {path} lies inside output_dir {run_dir}, which --overwrite "
                                  "would delete; copy it elsewhere first or choose another output_dir")
    return True


def clear(run_dir: Path) -> None:
    """``--overwrite``: remove rlkit's own entries (checked by ``check_output_dir``), never the lock or anything
    else."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_NAME or not _own(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
