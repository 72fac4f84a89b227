"""One writer per run directory: `evomerge run` and `resume` hold an exclusive lock on it while they run.

Two processes writing one ledger would evaluate the same candidate twice, or one would take the other's live
trial for a lost one. The lock is `flock` on `RUN_DIR/.evomerge.lock`, which holds the PID of its holder: the
kernel releases it when the process ends however it ends (`kill -9` included), so a lock is never stale. A
second process refuses in one line naming the holder. Shared runs (`--storage`) have workers of their own that
write one study on purpose; they are not locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from evomerge.errors import UsageError

LOCK_FILE = ".evomerge.lock"
RUN_REFUSAL = (
    "another evomerge process (PID {holder}) is running the run in {directory}; wait for it to end, or stop "
    "it (nothing is lost) and then `evomerge resume` this directory"
)


class RunDirectoryLock:
    """Held from `acquire` until the process ends (or `release`). `refusal` is the one line a second process
    gets, formatted with the holder's PID and the directory (a family build locks its directory too)."""

    def __init__(self, run_dir: Path, refusal: str = RUN_REFUSAL) -> None:
        self.path = run_dir / LOCK_FILE
        self.refusal = refusal
        self.handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise UsageError naming the process that holds it."""
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open as long as the lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(self.refusal.format(holder=holder, directory=self.path.parent)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the lock
            self.handle = None
