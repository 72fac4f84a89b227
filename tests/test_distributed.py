"""Shared search: several worker processes on one study, over a real PostgreSQL server and over SQLite.

The PostgreSQL server is a throwaway cluster on loopback (tests/postgres.py); without PostgreSQL installed
these tests fail unless EVOMERGE_SKIP_POSTGRES=1 says to skip them.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import save_tiny_llama
from optuna.trial import FrozenTrial, TrialState
from postgres import PASSWORD, Postgres
from runs import CONFIGS, PROCESS_DEADLINE, evomerge_process

from evomerge.cli import main
from evomerge.fingerprint import BLOCK, SAMPLES, file_fingerprint, model_fingerprint
from evomerge.search.ledger import counts_toward_budget


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    yield server
    server.close()


@pytest.fixture(scope="module")
def numbers_task(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("task")
    for split, numbers in (("search", range(0, 6)), ("held_out", range(6, 10))):
        (data / f"{split}.jsonl").write_text(
            "".join(json.dumps({"prompt": f"n{i}=", "answer": str(i)}) + "\n" for i in numbers)
        )
    return data


def tiny_config(
    path: Path, models: dict[str, Path], task: Path, optimizer: str = "random", evaluations: int = 3
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "recipe": {
                    "method": "task_arithmetic",
                    "base": str(models["base"]),
                    "sources": [{"model": str(models["a"])}, {"model": str(models["b"])}],
                },
                "genome": [{"param": "weight", "granularity": "layer", "low": 0.0, "high": 1.5}],
                "tasks": {"t": {"data": str(task), "limit": 2}},
                "objectives": [{"task": "t"}],
                "optimizer": {"name": optimizer},
                "budget": {"evaluations": evaluations},
                "run_dir": str(path.parent / "run"),
            }
        )
    )
    return path


def cli(*args: object) -> int:
    return main([str(arg) for arg in args])


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per server: polling must be quick and not pile up connections."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})  # survives a server restart


def trials(url: str, study: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage(url)).get_trials()


def wait_for(condition, what: str, timeout: float = PROCESS_DEADLINE) -> None:
    """Poll `condition` until it holds; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_until_stopped(process: subprocess.Popen) -> None:
    """Wait for `process` to stop itself (its injected fault is SIGSTOP); fail with its errors if it ended."""
    status = []

    def changed() -> bool:
        pid, code = os.waitpid(process.pid, os.WUNTRACED | os.WNOHANG)
        status.append(code)
        return pid != 0

    wait_for(changed, f"process {process.pid} to stop itself")
    if not os.WIFSTOPPED(status[-1]):
        process.returncode = os.waitstatus_to_exitcode(status[-1])
        pytest.fail(f"process {process.pid} ended ({process.returncode}) instead: {process.stderr.read()}")


def study_exists(url: str, study: str) -> bool:
    return study in [s.study_name for s in optuna.get_all_study_summaries(url)]


def assert_exactly_the_budget_with_every_lost_candidate_retried(
    ledger: list[FrozenTrial], budget: int
) -> list[FrozenTrial]:
    """Exactly `budget` complete trials, none running, no candidate evaluated twice, and every trial lost with
    its worker evaluated again by a trial that names it, with the parameters it had: all of them, or those
    stored before its worker died inside `ask` (the retry draws the others). Returns the lost trials."""
    complete = [t for t in ledger if t.state == TrialState.COMPLETE]
    assert len(complete) == budget and sum(map(counts_toward_budget, ledger)) == budget
    assert not [t for t in ledger if t.state in (TrialState.RUNNING, TrialState.WAITING) and t.params], (
        "left running"
    )
    params = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(params)) == len(params), "a candidate was evaluated twice"
    lost = [t for t in ledger if t.state == TrialState.FAIL and not counts_toward_budget(t)]
    for trial in lost:
        retries = [t for t in complete if trial.number in t.system_attrs.get("retry_history", [])]
        assert len(retries) == 1 and trial.params.items() <= retries[0].params.items(), (
            f"trial {trial.number} was not retried once"
        )
    return lost


@pytest.mark.slow
def test_three_workers_on_the_zoo_one_killed_mid_candidate_end_with_exactly_the_budget(
    zoo_dir, postgres, tmp_path
):
    budget = 24
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data["tasks"] = {name: {**task, "limit": 12} for name, task in data["tasks"].items()}
    data.update(optimizer={"name": "tpe"}, budget={"evaluations": budget}, run_dir=str(tmp_path / "run"))
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump(data))

    # the victim (the same `run` command makes the study or joins it) kills itself once it has claimed its
    # first candidate: a RUNNING trial under its name, which the other workers must find lost and evaluate
    shared = ("--storage", postgres.url, "--study", "zoo", "--heartbeat", "1")
    victim_process = evomerge_process(
        "run", config, *shared, "--run-dir", tmp_path / "w2", fault="sigkill@claim"
    )
    victim = f"{socket.gethostname()}:{victim_process.pid}"
    wait_for(lambda: study_exists(postgres.url, "zoo") or victim_process.poll() is not None, "the study")
    others = [
        evomerge_process("run", config, *shared),
        evomerge_process("run", config, *shared, "--run-dir", tmp_path / "w1"),
    ]
    _, errors = victim_process.communicate(timeout=PROCESS_DEADLINE)
    assert victim_process.returncode == -signal.SIGKILL, errors
    for process in others:
        _, errors = process.communicate(timeout=PROCESS_DEADLINE)
        assert process.returncode == 0, errors

    ledger = trials(postgres.url, "zoo")
    lost = assert_exactly_the_budget_with_every_lost_candidate_retried(ledger, budget)
    assert [t.user_attrs["worker"] for t in lost if t.user_attrs["worker"] == victim], (
        "the killed candidate is not lost"
    )
    assert cli("status", "--storage", postgres.url, "--study", "zoo") == 0


def test_workers_on_one_machine_share_a_sqlite_ledger_without_lock_errors(
    tiny_models, numbers_task, tmp_path
):
    budget = 24
    config = tiny_config(tmp_path / "c.yaml", tiny_models, numbers_task, "tpe", evaluations=budget)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # each worker stops itself once it has claimed its first candidate, and all go on once all three have
    # one: so all three take part, whenever each starts. The heartbeat is long enough that a worker stopped
    # while the others start is not given up as lost (that is the next tests' subject).
    shared = ("--storage", url, "--study", "s", "--heartbeat", "60")
    processes = [evomerge_process("run", config, *shared, fault="sigstop@claim") for _ in range(3)]
    for process in processes:
        wait_until_stopped(process)
    for process in processes:
        os.kill(process.pid, signal.SIGCONT)
    for process in processes:
        _, errors = process.communicate(timeout=PROCESS_DEADLINE)
        assert process.returncode == 0 and "locked" not in errors, errors
    ledger = trials(url, "s")
    assert assert_exactly_the_budget_with_every_lost_candidate_retried(ledger, budget) == []
    assert len({t.user_attrs["worker"] for t in ledger}) == 3
    assert [t.params for t in ledger[:1]] == [
        {
            "sources.0.weight@layer0": 1.0,
            "sources.0.weight@layer1": 1.0,
            "sources.1.weight@layer0": 1.0,
            "sources.1.weight@layer1": 1.0,
        }
    ]


def test_a_worker_that_loses_the_database_gives_up_with_one_line_and_the_study_goes_on(
    tiny_models, numbers_task, postgres, tmp_path, capsys
):
    budget = 12
    config = tiny_config(tmp_path / "c.yaml", tiny_models, numbers_task, evaluations=budget)
    # the worker stops itself once trial 3 is recorded; the database goes down while it is stopped, so the
    # first thing it does when it goes on, claiming its next candidate, finds the database gone
    process = evomerge_process(
        "run",
        config,
        "--storage",
        postgres.url,
        "--study",
        "lost",
        "--heartbeat",
        "1",
        "--patience",
        "4",
        fault="sigstop@3",
    )
    wait_until_stopped(process)
    postgres.stop()
    try:
        os.kill(process.pid, signal.SIGCONT)
        _, errors = process.communicate(timeout=PROCESS_DEADLINE)
    finally:
        postgres.start()
    assert process.returncode == 2, errors
    last = errors.strip().splitlines()[-1]
    assert (
        last.startswith("evomerge: error: lost the storage")
        and "gave up after" in last
        and PASSWORD not in errors
    )

    assert cli("worker", "--storage", postgres.url, "--study", "lost", "--run-dir", tmp_path / "w") == 0
    assert (
        assert_exactly_the_budget_with_every_lost_candidate_retried(trials(postgres.url, "lost"), budget)
        is not None
    )
    assert f"progress: {budget}/{budget}" in capsys.readouterr().out


def test_the_retry_of_a_claim_that_died_inside_ask_draws_its_own_candidate(
    tiny_models, numbers_task, tmp_path
):
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    def run(evaluations: int) -> int:
        config = tiny_config(tmp_path / "c.yaml", tiny_models, numbers_task, evaluations=evaluations)
        return cli("run", config, "--storage", url, "--study", "s", "--heartbeat", "1")

    assert run(1) == 0
    # what a worker that lost the database between `ask` storing its trial and the trial's first parameter
    # leaves: a RUNNING trial without parameters or worker name, here older than the grace period
    died = optuna.trial.create_trial(state=TrialState.RUNNING)
    died.datetime_start -= timedelta(minutes=1)
    optuna.load_study(study_name="s", storage=url).add_trial(died)

    # the next claim fails it and asks its retry, which draws all the parameters; the new trial after it must
    # not draw them again
    assert run(4) == 0
    lost = assert_exactly_the_budget_with_every_lost_candidate_retried(trials(url, "s"), 4)
    assert [t.number for t in lost] == [1]


def test_bad_storages_studies_models_and_optimizers_get_one_line_and_exit_2(
    tiny_models, numbers_task, postgres, tmp_path, capsys
):
    models = {name: shutil.copytree(tiny_models[name], tmp_path / name) for name in ("base", "a", "b")}
    config = tiny_config(tmp_path / "c.yaml", models, numbers_task, evaluations=1)
    assert cli("run", config, "--storage", postgres.url, "--study", "known", "--heartbeat", "1") == 0
    serial = yaml.safe_load(config.read_text()) | {
        "storage": postgres.url,
        "study": "serial",
        "run_dir": str(tmp_path / "s"),
    }
    (tmp_path / "serial.yaml").write_text(yaml.safe_dump(serial))
    assert cli("run", tmp_path / "serial.yaml") == 0
    capsys.readouterr()

    def refused(*args: object) -> str:
        assert cli(*args) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1, error
        return error

    wrong_password = postgres.url.replace(PASSWORD, "not-the-password")
    error = refused("worker", "--storage", wrong_password, "--study", "known")
    assert "password authentication failed" in error and "not-the-password" not in error
    assert "cannot open the storage 'postgresql://evomerge:***@127.0.0.1:1/postgres'" in refused(
        "worker", "--storage", postgres.url.replace(str(postgres.port), "1"), "--study", "known"
    )
    assert "no study 'nope'" in (error := refused("worker", "--storage", postgres.url, "--study", "nope"))
    assert "it has: known" in error and "serial" in error
    assert "one-process run" in refused("worker", "--storage", postgres.url, "--study", "serial")
    assert "tpe, nsga2, nsga3, optuna-cmaes, gp, random" in refused(
        "run",
        tiny_config(tmp_path / "cma" / "c.yaml", models, numbers_task, "cmaes"),
        "--storage",
        postgres.url,
    )

    save_tiny_llama(models["b"], seed=99)  # same architecture, other weights, at the path the study knows
    error = refused("worker", "--storage", postgres.url, "--study", "known")
    assert f"model '{models['b']}' here differs from the one the study 'known'" in error
    assert cli("status", "--storage", postgres.url, "--study", "known") == 0
    assert "progress: 1/1" in capsys.readouterr().out


def test_a_fingerprint_samples_big_files_and_tells_fine_tunes_apart(tiny_models, tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(random.Random(0).randbytes(3 * SAMPLES * BLOCK))
    big.write_bytes(data)
    before = file_fingerprint(big)
    data[-1] ^= 1  # in the last sampled block
    big.write_bytes(data)
    changed = file_fingerprint(big)
    data[BLOCK + 10] ^= 1  # between the first and second samples: not seen, by design
    big.write_bytes(data)
    assert before != changed == file_fingerprint(big)
    assert model_fingerprint(str(tiny_models["a"])) != model_fingerprint(str(tiny_models["b"]))
    copy = shutil.copytree(tiny_models["a"], tmp_path / "copy")
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_models["a"]))
