"""Private io helpers: files written atomically (temp file beside the target, fsync, one rename), and the
one-line error for a write that the disk or the folder refuses (full, read-only, not ours)."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DensaError


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and reset."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# errno -> what to do, for the write failures a user can fix (full disk, read-only or foreign folder)
_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
}


class WriteError(DensaError):
    """A file could not be written (full disk, read-only or foreign folder); nothing was replaced."""

    def __init__(self, path: Path, err: OSError):
        hint = _WRITE_HINTS.get(err.errno, "check the folder and try again")
        super().__init__(f"cannot write {path}: {err.strerror or err}; {hint}")
        self.path, self.errno = path, err.errno


@contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; when the block succeeds it replaces `path` in one rename.

    Readers never see half a file, and a failure leaves nothing behind (the old `path`, if any, is
    untouched). The file gets the mode of any new file (0666 minus the umask), not mkstemp's private 0600.
    An OSError in the block or in the rename is raised as WriteError naming `path`, not the temp file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write `data` to `path` atomically (see atomic_path), flushed to the disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
