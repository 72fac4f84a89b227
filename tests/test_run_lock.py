"""One writer per run directory, and preemption: real `evomerge` processes, stopped at a chosen trial."""

from __future__ import annotations

import os
import signal

from optuna.trial import TrialState
from runs import (
    PROCESS_DEADLINE,
    config_data,
    evomerge_process,
    evomerge_result,
    ledger_rows,
    run_search,
    run_study,
    write_config,
)


def test_a_second_process_on_a_running_run_directory_refuses_and_names_the_first(
    tiny_models, task_dir, tmp_path
):
    config = write_config(
        tmp_path / "c.yaml", config_data(tiny_models, task_dir, tmp_path / "run", evaluations=4)
    )
    first = evomerge_process("run", config, fault="sigstop@1")  # stops itself after trial 1, holding the lock
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), first.stderr.read()
        for command in (("resume", tmp_path / "run"), ("run", config)):
            returncode, stderr = evomerge_result(*command)
            assert returncode == 2 and "Traceback" not in stderr
            assert (
                f"another evomerge process (PID {first.pid}) is running the run in {tmp_path / 'run'}"
                in stderr
            )
        assert len(run_study(tmp_path / "run").get_trials()) == 2  # the refused ones wrote nothing
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=PROCESS_DEADLINE)
    assert first.returncode == 0, stderr
    assert [t.state for t in run_study(tmp_path / "run").get_trials()] == [TrialState.COMPLETE] * 4
    returncode, stderr = evomerge_result("resume", tmp_path / "run")  # the lock went with its process
    assert returncode == 0, stderr


def test_sigterm_stops_a_run_as_ctrl_c_does_with_exit_143_and_it_resumes_exactly(
    tiny_models, task_dir, tmp_path
):
    whole = run_search(config_data(tiny_models, task_dir, tmp_path / "whole", evaluations=6))
    config = write_config(
        tmp_path / "c.yaml", config_data(tiny_models, task_dir, tmp_path / "run", evaluations=6)
    )
    returncode, stderr = evomerge_result("run", config, fault="sigterm@2")  # as a scheduler's preemption
    assert returncode == 143 and "Traceback" not in stderr
    assert f"nothing is lost: evomerge resume {tmp_path / 'run'}" in stderr
    assert len(run_study(tmp_path / "run").get_trials()) == 3
    returncode, stderr = evomerge_result("resume", tmp_path / "run")
    assert returncode == 0, stderr
    assert ledger_rows(run_study(tmp_path / "run")) == ledger_rows(whole)
