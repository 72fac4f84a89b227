"""Fault injection, a testing aid: a search process that meets a chosen fault at a chosen step.

The tests of what survives a crash or an interrupt (exact resume after `kill -9`, Ctrl-C, SIGTERM, a full
disk, a lost database, a merge that overflows, a worker lost with its candidate) need the fault to land at a
known step. A signal sent from outside after a sleep lands wherever the process happens to be, which a slow
or loaded machine changes. With the environment variable

    EVOMERGE_FAULT=FAULT@STEP[,FAULT@STEP...]

the process meets each FAULT when it reaches its STEP. FAULT is one of:

- a signal name (sigint, sigkill, sigstop, sigterm...): the process sends it to itself;
- `disk_full`: from then on, every statement to the run ledger's database fails as SQLite fails on a full
  disk (SQLITE_FULL, "database or disk is full"), raised by the database driver itself, so that SQLAlchemy and
  Optuna wrap it as they would a real one;
- `db_lost`: the same, as a database that has gone away fails (SQLite's SQLITE_CANTOPEN, or the driver's
  OperationalError for another database);
- `overflow`: the merge of the candidate at STEP fails as one whose weights overflow (MergeFailure, "NaN or
  Inf"), which the search records as a failed candidate.

STEP is:

- `N`: right after trial number N of its study is recorded (the end of `Search._after`); for `overflow`, the
  merge of trial N (the candidate evaluated when N trials are finished);
- `STUDY:N`: the same, in the study named STUDY only (a hybrid run's stacking phase is `NAME-stack`);
- `claim`: right after a worker of a shared run claims a candidate, before it evaluates it: the trial is
  RUNNING under the worker's name, so `sigkill@claim` loses a candidate in flight.

Each fault fires once per process (a stopped worker that is continued does not stop at its next claim).
Unset, as it always is outside tests, nothing happens; a value that cannot be read is a UsageError.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from evomerge.errors import MergeFailure, UsageError

VARIABLE = "EVOMERGE_FAULT"
CLAIM = "claim"
DISK_FULL = "disk_full"
DB_LOST = "db_lost"
OVERFLOW = "overflow"
#: The faults of the ledger's database: (SQLite's result code name and number, the driver's message).
_DATABASE_FAULTS = {
    DISK_FULL: ("SQLITE_FULL", 13, "database or disk is full"),
    DB_LOST: ("SQLITE_CANTOPEN", 14, "unable to open database file"),
}


@dataclass(frozen=True)
class Fault:
    """A fault (a signal, or one of DISK_FULL, DB_LOST, OVERFLOW) to meet at a step: after trial `number` (of
    `study`, or of any study when None) is recorded, or, with `number` None, after a claim."""

    kind: signal.Signals | str
    study: str | None
    number: int | None


_fired: set[Fault] = set()


def planned_faults() -> list[Fault]:
    """The faults the environment asks for, if any."""
    return [_fault(text.strip()) for text in os.environ.get(VARIABLE, "").split(",") if text.strip()]


def _fault(text: str) -> Fault:
    name, _, step = text.partition("@")
    kind = name.lower() if name.lower() in (*_DATABASE_FAULTS, OVERFLOW) else _signal(name, text)
    if step == CLAIM and kind != OVERFLOW:
        return Fault(kind, None, None)
    study, _, number = step.rpartition(":")
    if not number.isdigit():
        raise UsageError(f"{VARIABLE}={text}: the step is a trial number N, STUDY:N or '{CLAIM}'")
    return Fault(kind, study or None, int(number))


def _signal(name: str, text: str) -> signal.Signals:
    full_name = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    try:
        return signal.Signals[full_name]
    except KeyError:
        raise UsageError(
            f"{VARIABLE}={text}: no signal named '{name}' (e.g. sigint, sigkill) and no fault named so "
            f"({DISK_FULL}, {DB_LOST}, {OVERFLOW})"
        ) from None


def inject_after_record(study: str, number: int) -> None:
    """Meet the planned faults (not an overflow) that wait for trial `number` of `study`."""
    for fault in planned_faults():
        if fault.kind != OVERFLOW and _at(fault, study, number):
            _fire(fault)


def inject_after_claim() -> None:
    """Meet the planned faults that wait for a claim."""
    for fault in planned_faults():
        if fault.number is None:
            _fire(fault)


def inject_before_merge(study: str, number: int) -> None:
    """Fail the merge of trial `number` of `study` if an overflow is planned there."""
    for fault in planned_faults():
        if fault.kind == OVERFLOW and _at(fault, study, number):
            _fire(fault)


def _at(fault: Fault, study: str, number: int) -> bool:
    return fault.number == number and fault.study in (None, study)


def _fire(fault: Fault) -> None:
    if fault in _fired:
        return
    _fired.add(fault)
    if fault.kind == OVERFLOW:
        raise MergeFailure(f"the merge produced NaN or Inf in every tensor ({VARIABLE}: {OVERFLOW})")
    if fault.kind in _DATABASE_FAULTS:
        _fail_database_statements(*_DATABASE_FAULTS[fault.kind])
        return
    # To this very thread, the main one, so that it acts here and now: sent to the process (os.kill), it may
    # be taken by another thread, and a Python handler (SIGINT's KeyboardInterrupt) then runs wherever the
    # main thread has got to by the time it notices.
    signal.raise_signal(fault.kind)


def _fail_database_statements(code_name: str, code: int, message: str) -> None:
    """From now on, every SQL statement of this process fails in its database driver, as `message`."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def fail(connection, cursor, statement, parameters, context, executemany) -> None:
        error = connection.dialect.dbapi.OperationalError(message)
        if connection.dialect.name == "sqlite":  # as sqlite3 itself raises it
            error.sqlite_errorcode, error.sqlite_errorname = code, code_name
        raise error

    event.listen(Engine, "before_cursor_execute", fail)
