"""Fault injection (evomerge/search/faults.py): what EVOMERGE_FAULT asks for, and that it fires once, at its
step. The kill, Ctrl-C and lost-database tests rely on it (test_search_zoo, test_hybrid, test_distributed)."""

from __future__ import annotations

import signal

import pytest

from evomerge.errors import MergeFailure, UsageError
from evomerge.search import faults
from evomerge.search.faults import (
    Fault,
    inject_after_claim,
    inject_after_record,
    inject_before_merge,
    planned_faults,
)


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("", []),
        ("sigint@3", [Fault(signal.SIGINT, None, 3)]),
        ("SIGKILL@evomerge-stack:4", [Fault(signal.SIGKILL, "evomerge-stack", 4)]),
        ("stop@claim", [Fault(signal.SIGSTOP, None, None)]),
        ("disk_full@2, sigkill@5", [Fault("disk_full", None, 2), Fault(signal.SIGKILL, None, 5)]),
        ("DB_LOST@s:1,overflow@0", [Fault("db_lost", "s", 1), Fault("overflow", None, 0)]),
    ],
)
def test_the_variable_names_faults_and_their_steps(value, fault, monkeypatch):
    monkeypatch.setenv("EVOMERGE_FAULT", value)
    assert planned_faults() == fault


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sigfoo@3", "no signal named 'sigfoo'"),
        ("sigint@three", "the step is"),
        ("sigint", "the step is"),
        ("overflow@claim", "the step is"),
    ],
)
def test_a_value_it_cannot_read_is_a_usage_error(value, message, monkeypatch):
    monkeypatch.setenv("EVOMERGE_FAULT", value)
    with pytest.raises(UsageError, match=message):
        planned_faults()


def test_a_fault_fires_once_at_its_step(monkeypatch):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
    try:
        monkeypatch.setattr(faults, "_fired", set())
        monkeypatch.setenv("EVOMERGE_FAULT", "sigusr1@s:2")
        inject_after_claim()
        inject_after_record("s", 1)
        inject_after_record("other", 2)
        assert received == []
        inject_after_record("s", 2)
        assert received == [signal.SIGUSR1]
        inject_after_record("s", 2)
        assert received == [signal.SIGUSR1]  # once per process
        monkeypatch.setenv("EVOMERGE_FAULT", "sigusr1@claim")
        inject_after_claim()
        inject_after_claim()  # a stopped worker that goes on does not stop at its next claim
        assert received == [signal.SIGUSR1] * 2
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_an_overflow_fails_the_merge_of_its_trial_only(monkeypatch):
    monkeypatch.setattr(faults, "_fired", set())
    monkeypatch.setenv("EVOMERGE_FAULT", "overflow@s:3")
    inject_before_merge("s", 2)
    inject_before_merge("t", 3)
    inject_after_record("s", 3)  # an overflow is a merge's fault, not a recorded trial's
    with pytest.raises(MergeFailure, match="NaN or Inf"):
        inject_before_merge("s", 3)
    inject_before_merge("s", 3)
