"""One writer per folder: a lock held for the life of a run or a sweep (docs/reliability.md).

The lock is ``fcntl.flock`` on ``FOLDER/.lock``, which holds the writer's pid. The operating
system releases it when the process ends, however it ends (kill -9 included), so a lock left by
a dead process never blocks the next start; the file itself stays and is reused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

#: the lock file in a run or sweep folder
LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one writer is then the user's business
    fcntl = None


def _busy_error(folder: Path, what: str, pid: str) -> ConfigError:
    holder = f"process {pid}" if pid else "another process"
    return ConfigError(f"{folder} is in use by {holder}, which is writing this {what}; wait for "
                       f"it to end (or stop it) before starting another, or choose another "
                       f"--run-dir")


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def holder(folder: Path) -> str | None:
    """The pid of the process that holds ``folder``'s lock (``""`` if unknown); None if free.

    Writes nothing: a folder without a lock file is free. This process's own lock is free.
    """
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        return None if pid == str(os.getpid()) else pid
    except OSError:
        return None
    finally:
        os.close(fd)  # closing also drops the shared lock taken just now
    return None


def check_free(folder: Path, what: str = "run") -> None:
    """Refuse a folder another live process writes (a check only; see :class:`FolderLock`)."""
    pid = holder(folder)
    if pid is not None:
        raise _busy_error(Path(folder), what, pid)


class FolderLock:
    """The exclusive lock of one folder, taken with :meth:`acquire`.

    Args:
        folder: the run or sweep folder (it must exist when the lock is taken).
        what: ``"run"`` or ``"sweep"``, for the refusal.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run") -> None:
        self.folder = Path(folder)
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this pid into it.

        Raises:
            ConfigError: another live process holds it (the sentence names its pid).
        """
        if fcntl is None or self.fd is not None:
            return
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise _busy_error(self.folder, self.what, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; the next writer reuses it)."""
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None
