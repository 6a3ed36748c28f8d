"""A run folder owned by one process at a time, and what state it is in.

`RunLock(folder).acquire()` takes an advisory lock (flock on `.densa-run.lock` inside the folder) that the
kernel drops when the process ends, however it ends: a second `densa train` on the same folder is
refused in one line naming the holder, and a killed run never blocks the next one. `check_new_run`
says whether a folder may receive a new run; no state of a folder is a dead end: each message names the
command that moves it on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ..core._io import WriteError
from ..core.checkpoint import RUN_FILES
from ..core.errors import DensaError

LOCK_FILE = ".densa-run.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; msvcrt locks a byte range of the open file instead
    fcntl = None


class RunBusy(DensaError):
    pass


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive ownership of a run folder for the life of this process (or until release())."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.created = False  # the folder did not exist before: remove it again if nothing was written

    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise DensaError(f"{self.folder} is a file; pass a folder for the run")
        try:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(100):  # the holder may remove the file between our open and flock: open again
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                if not _try_lock(fd):
                    os.close(fd)
                    raise RunBusy(
                        f"{self.folder} is in use by another densa run ({self.holder()}); wait for it to "
                        f"finish or stop it, or choose another folder"
                    )
                try:
                    if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            else:
                raise DensaError(f"{self.path} keeps changing; is another program removing it?")
            self.fd = fd
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            info["command"] = " ".join(["densa", *sys.argv[1:]])[:200]
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as e:
            self.release()
            raise WriteError(self.folder, e) from None
        return self

    def holder(self) -> str:
        """Who holds the lock, as its file says (it is written right after the lock is taken)."""
        try:
            info = json.loads(self.path.read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that is starting"

    def release(self) -> None:
        """Give the folder up: the lock file goes (while still held, so no one locks a removed file)."""
        if self.fd is None:
            if self.created:
                _remove_if_empty(self.folder)
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
        if self.created:
            _remove_if_empty(self.folder)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (or gone): it holds something worth keeping
        folder.rmdir()


def remove_temp_files(folder: Path) -> list[str]:
    """Delete `.NAME.*.tmp` files that an interrupted atomic write left behind (call with the lock held)."""
    removed = []
    for p in folder.glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def first_epoch_leftovers(folder: Path) -> list[Path] | None:
    """The files of a run stopped before its first checkpoint, or None if the folder holds anything else.

    A run writes metrics.jsonl and model.safetensors after each epoch, then checkpoint.pt; killed (or out
    of disk space) before the first checkpoint.pt, it can only be started again. Those files are
    recognised by their content (one epoch recorded), so a model saved there by hand is never taken.
    """
    files = [folder / n for n in ("metrics.jsonl", "model.safetensors") if (folder / n).exists()]
    if (folder / "checkpoint.pt").exists() or (folder / "summary.json").exists():
        return None
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        try:
            lines = metrics.read_text().splitlines()
            if len(lines) > 1 or (lines and json.loads(lines[0]).get("epoch") != 1):
                return None
        except (OSError, ValueError, AttributeError):
            return None
    model = folder / "model.safetensors"
    if model.exists():
        from ..core.checkpoint import read_meta

        try:
            if read_meta(model)["metrics"].get("epoch") != 1:
                return None
        except (DensaError, AttributeError):
            return None
    return files


def check_new_run(folder: Path, log=print) -> None:
    """May a new run start in `folder` (held by RunLock)? Leftovers of a run that never saved a
    checkpoint are removed; every other run's files are kept and the message says what to do."""
    removed = remove_temp_files(folder)
    if removed:
        log(f"removed {len(removed)} unfinished temp file(s) from {folder}/: {', '.join(sorted(removed))}")
    taken = [n for n in RUN_FILES if (folder / n).exists()]
    if not taken:
        return
    if (folder / "summary.json").exists():
        raise DensaError(
            f"--out {folder} already holds a run (finished); choose another folder, remove it, or train "
            f"it further with `densa train --resume {folder} --epochs N`"
        )
    if (folder / "checkpoint.pt").exists():
        raise DensaError(
            f"--out {folder} already holds a run (unfinished: {', '.join(taken)}); continue it with "
            f"`densa train --resume {folder}`, or choose another folder or remove it"
        )
    leftovers = first_epoch_leftovers(folder)
    if leftovers is None:
        raise DensaError(
            f"--out {folder} already holds files that are not an unfinished densa run ({', '.join(taken)}); "
            f"choose another folder or remove them"
        )
    for p in leftovers:
        p.unlink()
    log(f"{folder}/ held a run stopped before its first checkpoint: starting it again")


def check_space(folder: Path, need: int) -> None:
    """Refuse before training when the folder's disk cannot hold the run's files (`need` bytes)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer from the file system: the writes themselves will say
    if free < need:
        raise DensaError(
            f"{folder}: only {free / 1e6:.1f} MB free on its disk, and this run's files need about "
            f"{need / 1e6:.1f} MB; free some space or choose another --out"
        )
