"""Helpers the search tests share: configs (over tiny models or the zoo), runs in this process and their
ledgers, and `evomerge` processes, with a fault injected at a chosen step (evomerge/search/faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from evomerge.config import config_from_dict
from evomerge.search.faults import VARIABLE as FAULT_VARIABLE
from evomerge.search.loop import Search

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: How long a test waits for an `evomerge` process before it fails: a guard against a hang, never a measure.
PROCESS_DEADLINE = 900


def config_data(tiny_models, task_dir, run_dir, optimizer="cmaes", evaluations=9, **changes) -> dict:
    """A TIES search over two tiny models (per-layer weights, a global density) on the task in `task_dir`."""
    data = {
        "recipe": {
            "method": "ties",
            "base": str(tiny_models["base"]),
            "sources": [{"model": str(tiny_models["a"])}, {"model": str(tiny_models["b"])}],
        },
        "genome": [
            {"param": "weight", "granularity": "layer", "low": 0.0, "high": 1.5},
            {"param": "density", "granularity": "global", "low": 0.2, "high": 1.0},
        ],
        "tasks": {"t": {"data": str(task_dir), "limit": 4}},
        "objectives": [{"task": "t"}],
        "optimizer": {"name": optimizer, "population_size": 4},
        "budget": {"evaluations": evaluations},
        "run_dir": str(run_dir),
    }
    data.update(changes)
    return data


def small_demo_config(path: Path, run_dir: Path, evaluations: int) -> Path:
    """configs/demo.yaml (on the zoo) with 24 examples per skill and 4 candidates a generation, at `path`."""
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data["tasks"] = {name: {**task, "limit": 24} for name, task in data["tasks"].items()}
    data["optimizer"]["population_size"] = 4
    data["budget"] = {"evaluations": evaluations}
    data["run_dir"] = str(run_dir)
    return write_config(path, data)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def run_search(data: dict) -> optuna.Study:
    """A one-process run of the config `data`, in this process."""
    return Search(config_from_dict(data), progress=False).run()


def ledger_rows(study: optuna.Study) -> list[tuple]:
    """What two runs that ended alike share: each trial's number, state, values and parameters."""
    return [(t.number, t.state, t.values, t.params) for t in study.get_trials()]


def run_study(run_dir: Path, name: str = "evomerge") -> optuna.Study:
    """The study `name` of the ledger in `run_dir`."""
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'ledger.db'}")


def evomerge_process(*args: object, fault: str | None = None, **popen) -> subprocess.Popen:
    """An `evomerge ARGS` process (stderr piped as text) with `fault` as its EVOMERGE_FAULT, and one torch
    thread: several share the 2 cores of CI, and two threads each would make every one of them wait for a
    descheduled thread."""
    env = {key: value for key, value in os.environ.items() if key != FAULT_VARIABLE}
    env["OMP_NUM_THREADS"] = "1"
    if fault is not None:
        env[FAULT_VARIABLE] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def evomerge_result(*args: object, fault: str | None = None) -> tuple[int, str]:
    """Run `evomerge ARGS` (with `fault` injected) to its end: its return code and what it wrote to stderr."""
    process = evomerge_process(*args, fault=fault)
    _, errors = process.communicate(timeout=PROCESS_DEADLINE)
    return process.returncode, errors
