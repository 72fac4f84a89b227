"""The CLI's one error boundary: what any failure that is the user's or the machine's says, and its exit code.

Errors are mapped by kind, not by case, so that inputs no one has tried yet behave too:

- evomerge's own errors (errors.py) carry their line and exit code;
- `OSError` by errno: a full disk, a quota, a file too large, a permission, a read-only file system, a path
  that does not exist or is not a directory, an I/O error... (also when safetensors' Rust writer reports one
  as `(os error N)` in a `SafetensorError`);
- the run ledger's database failing (SQLite's error code, such as SQLITE_FULL for a full disk, or the
  connection to PostgreSQL lost), however deep in the chain Optuna and SQLAlchemy wrapped it;
- a file that is not text (`UnicodeDecodeError`);
- memory exhausted (`MemoryError`, torch's out-of-memory error).

Whatever maps to none of these is a bug: the CLI shows its traceback and says so (exit 1). The mapping walks
the chain of causes from the outermost error in, so an evomerge error raised while handling another wins.
Modules of torch and SQLAlchemy are looked up only if already imported: an error cannot be of a type whose
module was never loaded, and `status` must not pay for importing them.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator

from evomerge.errors import EvomergeError

EXIT_BUG = 1
EXIT_USAGE = 2

#: What to do about an OSError, by errno.
_ADVICE = {
    errno.ENOSPC: "free some space on that disk (or write elsewhere) and run the command again",
    errno.EDQUOT: "free some of your disk quota (or write elsewhere) and run the command again",
    errno.EFBIG: "the file outgrew the largest file allowed here (a limit such as `ulimit -f`, or the file "
    "system's): raise the limit or write elsewhere",
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: check the path",
    errno.EISDIR: "a file was expected there: check the path",
    errno.EIO: "the disk or network file system failed: check it, then run the command again",
    errno.ENOMEM: "close other programs or use a machine with more memory",
    errno.EMFILE: "raise the open-file limit (`ulimit -n`)",
    errno.ENFILE: "the system's open-file table is full: close other programs",
}
#: The errno that SQLite's result codes (the primary code, the low byte) stand for.
_SQLITE_ERRNO = {"SQLITE_FULL": errno.ENOSPC, "SQLITE_IOERR": errno.EIO, "SQLITE_READONLY": errno.EROFS}
#: safetensors' writer and reader, written in Rust, report an OS error as "... (os error N)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def explained(error: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an error that is the user's or the machine's; None for a bug."""
    for link in _chain(error):
        if isinstance(link, EvomergeError):
            return str(link), link.exit_code
        line = machine_fault(link) or _memory_line(link) or _input_fault(link)
        if line is not None:
            return line, EXIT_USAGE
    return None


def machine_fault(error: BaseException) -> str | None:
    """The line for a failure of the machine (a disk, a file system, the ledger's database) anywhere in
    `error`'s chain of causes, or None. A search stops on one of these rather than recording the candidate as
    failed, since every candidate after it would fail the same way. (Memory is not among them: a candidate
    that needs more than another is a failed candidate.)"""
    for link in _chain(error):
        line = _os_error_line(link) or _database_line(link)
        if line is not None:
            return line
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def _os_error_line(error: BaseException) -> str | None:
    if isinstance(error, OSError):
        return os_error_line(error.errno, error.filename)
    if type(error).__name__ == "SafetensorError" and (match := _RUST_OS_ERROR.search(str(error))):
        return os_error_line(int(match.group(1)), None)
    return None


def os_error_line(number: int | None, filename: object | None) -> str | None:
    """`strerror` of errno `number` at `filename`, with what to do about it (None without an errno)."""
    if number is None:
        return None
    where = f": '{os.fsdecode(filename)}'" if isinstance(filename, (str, bytes, os.PathLike)) else ""
    advice = _ADVICE.get(number)
    return f"{os.strerror(number).lower()}{where}" + (f"; {advice}" if advice else "")


def _database_line(error: BaseException) -> str | None:
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", "") or ""
        number = _SQLITE_ERRNO.get("_".join(name.split("_")[:2]))  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
        if number is not None:
            return f"the run ledger (SQLite) failed: {os_error_line(number, None)}"
        return f"the run ledger (SQLite) failed: {error}; check the ledger file and its disk"
    exc = sys.modules.get("sqlalchemy.exc")
    if exc is not None and isinstance(error, exc.DBAPIError) and not _is_sqlite(error.orig):
        said = str(error.orig).strip()
        first = said.splitlines()[0] if said else type(error.orig).__name__
        return f"lost the run ledger's database: {first}; check that it is up and reachable"
    return None


def _is_sqlite(error: BaseException | None) -> bool:
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(error, sqlite3.Error)


def _memory_line(error: BaseException) -> str | None:
    torch = sys.modules.get("torch")
    if isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
        return "out of memory; use a machine or device with more memory, or a smaller dtype (recipe dtype)"
    return None


def _input_fault(error: BaseException) -> str | None:
    if isinstance(error, UnicodeDecodeError):
        return (
            f"a file that should be text is not UTF-8 ({error.reason} at byte {error.start}); "
            "check that the path names the right file"
        )
    return None
