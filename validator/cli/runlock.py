"""One validator per state dir: an advisory lock file holding the holder's pid.

Two validators on one state dir would overwrite each other's state and eval caches. The
lock is `flock` on `<dir>/validator.lock` (the kernel drops it when the holder dies, even
by SIGKILL), and the file holds the holder's pid for the messages. A file with a pid whose
lock is free was left by a validator that died: it is taken over and `took_over` says so.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "validator.lock"


class LockHeld(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, pid: int | None, directory: Path) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another validator ({who}) uses {directory}")
        self.pid = pid
        self.directory = directory


def _read_pid(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


class RunLock:
    """`with RunLock(state_dir) as lock:` holds the dir's lock; LockHeld if another has it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.took_over: int | None = None  # pid of a dead holder whose lock was taken over
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(os.pread(fd, 32, 0).decode("ascii", errors="replace"))
            os.close(fd)
            raise LockHeld(pid, self.directory) from None
        except OSError:
            os.close(fd)
            raise
        previous = _read_pid(os.pread(fd, 32, 0).decode("ascii", errors="replace"))
        # a pid left in the file with the lock free: that holder died without releasing it
        self.took_over = previous if previous is not None and previous != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file (a clean exit leaves no pid to take over) and drop the lock. The file
        stays: removing it would let a third process lock a new file while a second waits on
        the old one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
