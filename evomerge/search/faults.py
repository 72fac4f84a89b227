"""Fault injection, a testing aid: a search process that sends itself a signal at a chosen step.

The tests of what survives a crash or an interrupt (exact resume after `kill -9`, Ctrl-C, a worker lost with
its candidate, a worker that loses the database) need the fault to land at a known step. A signal sent from
outside after a sleep lands wherever the process happens to be, which a slow or loaded machine changes. With
the environment variable

    EVOMERGE_FAULT=SIGNAL@STEP

the process sends itself SIGNAL (a name such as sigint, sigkill, sigstop or sigterm) when it reaches STEP:

- `N`: right after trial number N of its study is recorded (the end of `Search._after`);
- `STUDY:N`: the same, in the study named STUDY only (a hybrid run's stacking phase is `NAME-stack`);
- `claim`: right after a worker of a shared run claims a candidate, before it evaluates it: the trial is
  RUNNING under the worker's name, so `sigkill@claim` loses a candidate in flight.

A fault fires once per process (a stopped worker that is continued does not stop at its next claim). Unset,
as it always is outside tests, nothing happens; a value that cannot be read is a UsageError.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from evomerge.errors import UsageError

VARIABLE = "EVOMERGE_FAULT"
CLAIM = "claim"


@dataclass(frozen=True)
class Fault:
    """A signal to send at a step: after trial `number` (of `study`, or of any study when None) is recorded,
    or, with `number` None, after a claim."""

    signal: signal.Signals
    study: str | None
    number: int | None


_fired = False


def planned_fault() -> Fault | None:
    """The fault the environment asks for, if any."""
    text = os.environ.get(VARIABLE, "").strip()
    if not text:
        return None
    name, _, step = text.partition("@")
    full_name = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    try:
        sent = signal.Signals[full_name]
    except KeyError:
        raise UsageError(f"{VARIABLE}={text}: no signal named '{name}' (e.g. sigint, sigkill)") from None
    if step == CLAIM:
        return Fault(sent, None, None)
    study, _, number = step.rpartition(":")
    if not number.isdigit():
        raise UsageError(f"{VARIABLE}={text}: the step is a trial number N, STUDY:N or '{CLAIM}'")
    return Fault(sent, study or None, int(number))


def inject_after_record(study: str, number: int) -> None:
    """Send the planned signal if trial `number` of `study` is the step it waits for."""
    fault = planned_fault()
    if fault is not None and fault.number == number and fault.study in (None, study):
        _fire(fault)


def inject_after_claim() -> None:
    """Send the planned signal if a claim is the step it waits for."""
    fault = planned_fault()
    if fault is not None and fault.number is None:
        _fire(fault)


def _fire(fault: Fault) -> None:
    """Send the signal to this very thread, the main one, so that it acts here and now: sent to the process
    (os.kill), it may be taken by another thread, and a Python handler (SIGINT's KeyboardInterrupt) then
    runs wherever the main thread has got to by the time it notices."""
    global _fired
    if not _fired:
        _fired = True
        signal.raise_signal(fault.signal)
