"""Shared search on the tiny zoo over a throwaway PostgreSQL server: 1 worker vs 3, and 3 with one killed.

Each scenario runs the demo search (configs/demo.yaml with 8 examples per task, TPE, a budget of BUDGET
candidates) as real `evomerge run --storage` / `evomerge worker` processes on one study, and reports the wall
time, the search time (first candidate started to last one recorded: no imports or model loading), the
throughput in candidates per minute over the search time, and how many candidates were lost with a killed
worker and retried. The server comes from tests/postgres.py (Debian's `postgresql` package).

    python experiments/bench_shared_search.py   # prints; writes experiments/results/bench_shared_search.json
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from postgres import Postgres  # noqa: E402

from evomerge.search.ledger import counts_toward_budget  # noqa: E402
from evomerge.zoo.build import ensure_zoo  # noqa: E402

BUDGET = 24
RESULTS = ROOT / "experiments" / "results" / "bench_shared_search.json"


def config_file(directory: Path) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    data["tasks"] = {name: {**task, "limit": 8} for name, task in data["tasks"].items()}
    data.update(optimizer={"name": "tpe"}, budget={"evaluations": BUDGET}, run_dir=str(directory / "run"))
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def evomerge(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def scenario(url: str, config: Path, study: str, workers: int, kill_one: bool) -> dict:
    started = time.monotonic()
    processes = [evomerge("run", config, "--storage", url, "--study", study, "--heartbeat", "2")]
    while study not in [s.study_name for s in optuna.get_all_study_summaries(url)]:
        time.sleep(0.2)
    processes += [
        evomerge("worker", "--storage", url, "--study", study, "--run-dir", config.parent / f"w{i}")
        for i in range(1, workers)
    ]
    if kill_one:
        victim = f"{socket.gethostname()}:{processes[-1].pid}"
        while not any(
            t.state == TrialState.RUNNING and t.user_attrs.get("worker") == victim
            for t in optuna.load_study(study_name=study, storage=url).get_trials()
        ):
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(processes[-1].pid, signal.SIGKILL)
    codes = [process.wait() for process in processes]
    wall = time.monotonic() - started
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    counted = [t for t in trials if counts_toward_budget(t)]
    search = (
        max(t.datetime_complete for t in counted) - min(t.datetime_start for t in trials)
    ).total_seconds()
    return {
        "workers": workers,
        "killed": int(kill_one),
        "exit_codes": codes,
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "evaluated": len(counted),
        "lost_and_retried": sum(t.state == TrialState.FAIL and not counts_toward_budget(t) for t in trials),
        "by_worker": sorted(
            sum(t.user_attrs.get("worker") == w for t in counted)
            for w in {t.user_attrs.get("worker") for t in counted}
        ),
        "wall_seconds": round(wall, 1),
        "search_seconds": round(search, 1),
        "candidates_per_minute": round(len(counted) / search * 60, 1),
    }


def main() -> None:
    ensure_zoo()
    server = Postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = []
            for workers, kill_one in ((1, False), (3, False), (3, True)):
                directory = Path(tmp) / f"{workers}-{kill_one}"
                directory.mkdir()
                runs.append(scenario(server.url, config_file(directory), directory.name, workers, kill_one))
                print(json.dumps(runs[-1]))
    finally:
        server.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "budget": BUDGET,
                "cpu_cores": os.cpu_count(),
                "machine": platform.machine(),
                "load_average_at_end": os.getloadavg(),
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
