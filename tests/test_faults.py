"""Fault injection (evomerge/search/faults.py): what EVOMERGE_FAULT asks for, and that it fires once, at its
step. The kill, Ctrl-C and lost-database tests rely on it (test_search_zoo, test_hybrid, test_distributed)."""

from __future__ import annotations

import signal

import pytest

from evomerge.errors import UsageError
from evomerge.search import faults
from evomerge.search.faults import Fault, inject_after_claim, inject_after_record, planned_fault


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("", None),
        ("sigint@3", Fault(signal.SIGINT, None, 3)),
        ("SIGKILL@evomerge-stack:4", Fault(signal.SIGKILL, "evomerge-stack", 4)),
        ("stop@claim", Fault(signal.SIGSTOP, None, None)),
    ],
)
def test_the_variable_names_a_signal_and_a_step(value, fault, monkeypatch):
    monkeypatch.setenv("EVOMERGE_FAULT", value)
    assert planned_fault() == fault


@pytest.mark.parametrize(
    ("value", "message"),
    [("sigfoo@3", "no signal named 'sigfoo'"), ("sigint@three", "the step is"), ("sigint", "the step is")],
)
def test_a_value_it_cannot_read_is_a_usage_error(value, message, monkeypatch):
    monkeypatch.setenv("EVOMERGE_FAULT", value)
    with pytest.raises(UsageError, match=message):
        planned_fault()


def test_a_fault_fires_once_at_its_step(monkeypatch):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
    try:
        monkeypatch.setattr(faults, "_fired", False)
        monkeypatch.setenv("EVOMERGE_FAULT", "sigusr1@s:2")
        inject_after_claim()
        inject_after_record("s", 1)
        inject_after_record("other", 2)
        assert received == []
        inject_after_record("s", 2)
        assert received == [signal.SIGUSR1]
        monkeypatch.setenv("EVOMERGE_FAULT", "sigusr1@claim")
        inject_after_claim()
        assert received == [signal.SIGUSR1]  # once per process
    finally:
        signal.signal(signal.SIGUSR1, previous)
