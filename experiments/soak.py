"""Soak test of kill and resume: a seeded search killed at many points, resumed each time, against one run
that was never interrupted.

A small search over the tiny zoo (configs/demo.yaml: CMA-ES over per-layer DARE weights and drop rates, with
`--limit` examples per skill and 4 candidates a generation) runs as `evomerge run` processes. One run goes
through uninterrupted. The other is stopped `--kills` times: each process sends itself SIGKILL or SIGTERM
right after a chosen trial is recorded (`EVOMERGE_FAULT=SIGNAL@N`, evomerge/search/faults.py), the trials and
the signals drawn from a seeded generator, so that no timing is involved; `evomerge resume` then carries on,
and is stopped at the next point. A SIGTERM must exit 143 and print the resume command, a SIGKILL die by its
signal (-9), and each stopped process must leave exactly the trials up to its point in the ledger. At the end
the two ledgers must hold the same trials (number, state, objective values, genes) and the same held-out
records.

    python experiments/soak.py                       # 24 kills in a run of 48 candidates
    python experiments/soak.py --kills 30 --candidates 64 --out /tmp/soak.json

Prints each kill and the verdict, writes JSON (default experiments/results/soak.json), exits 1 if the
ledgers differ or a stopped process did not behave as it must.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from evomerge.search.faults import VARIABLE as FAULT_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
RESULTS = ROOT / "experiments" / "results" / "soak.json"
SIGNALS = (signal.SIGKILL, signal.SIGTERM)
#: A guard against a hung process, never a measure.
PROCESS_DEADLINE = 900


def write_config(path: Path, run_dir: Path, candidates: int, limit: int) -> Path:
    """configs/demo.yaml (seed 0) with `limit` examples per skill, 4 candidates a generation, `candidates`."""
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["tasks"] = {name: {**task, "limit": limit} for name, task in data["tasks"].items()}
    data["optimizer"]["population_size"] = 4
    data["budget"] = {"evaluations": candidates}
    data["run_dir"] = str(run_dir)
    path.write_text(yaml.safe_dump(data))
    return path


def kill_plan(kills: int, candidates: int, seed: int) -> list[tuple[int, signal.Signals]]:
    """`kills` distinct trial numbers in ascending order, each with its signal: as many SIGKILLs as SIGTERMs
    (one more SIGKILL for an odd count), in a seeded random order."""
    rng = random.Random(seed)
    points = sorted(rng.sample(range(candidates), kills))
    signals = [SIGNALS[i % 2] for i in range(kills)]
    rng.shuffle(signals)
    return list(zip(points, signals))


def evomerge(*args: object, fault: str | None = None) -> tuple[int, str]:
    """Run `evomerge ARGS` to its end with `fault` as its EVOMERGE_FAULT: its return code and its stderr."""
    env = {key: value for key, value in os.environ.items() if key != FAULT_VARIABLE}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if fault is not None:
        env[FAULT_VARIABLE] = fault
    process = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=PROCESS_DEADLINE,
    )
    return process.returncode, process.stderr


def study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="evomerge", storage=f"sqlite:///{run_dir / 'ledger.db'}")


def ledger_rows(run_dir: Path) -> list[list]:
    """What two runs that ended alike share: each trial's number, state, objective values and genes."""
    return [[t.number, t.state.name, t.values, t.params] for t in study(run_dir).get_trials(deepcopy=False)]


def held_out_records(run_dir: Path) -> dict:
    """The held-out scores stored at the end of the run (study attributes `held_out.N`)."""
    return {k: v for k, v in sorted(study(run_dir).user_attrs.items()) if k.startswith("held_out.")}


def stop(run_dir: Path, command: tuple, after_trial: int, sent: signal.Signals) -> dict:
    """Run `command` with a fault planned after trial `after_trial`, and check how the process ended."""
    started = time.perf_counter()
    returncode, stderr = evomerge(*command, fault=f"{sent.name.lower()}@{after_trial}")
    recorded = len(study(run_dir).get_trials(deepcopy=False))
    if sent == signal.SIGTERM:
        expected_code = 128 + signal.SIGTERM
        resume_printed = f"nothing is lost: evomerge resume {run_dir}" in stderr
    else:
        expected_code, resume_printed = -signal.SIGKILL, None
    ok = returncode == expected_code and resume_printed is not False and recorded == after_trial + 1
    if not ok:
        print(stderr[-2000:], file=sys.stderr)
    return {
        "after_trial": after_trial,
        "signal": sent.name,
        "command": command[0],
        "returncode": returncode,
        "expected_returncode": expected_code,
        "resume_command_printed": resume_printed,
        "trials_recorded": recorded,
        "as_expected": ok,
        "seconds": round(time.perf_counter() - started, 1),
    }


def soak(kills: int, candidates: int, limit: int, seed: int) -> dict:
    plan = kill_plan(kills, candidates, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        whole_dir, soaked_dir = root / "whole", root / "soaked"
        started = time.perf_counter()
        returncode, stderr = evomerge("run", write_config(root / "whole.yaml", whole_dir, candidates, limit))
        if returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{stderr[-2000:]}")
        whole_seconds = time.perf_counter() - started

        started = time.perf_counter()
        config = write_config(root / "soaked.yaml", soaked_dir, candidates, limit)
        stops = []
        for index, (after_trial, sent) in enumerate(plan):
            command = ("run", config) if index == 0 else ("resume", soaked_dir)
            stops.append(stop(soaked_dir, command, after_trial, sent))
            print(
                f"  {sent.name} after trial {after_trial}: exit {stops[-1]['returncode']}, "
                f"{stops[-1]['trials_recorded']} trials recorded"
                + ("" if stops[-1]["as_expected"] else "  NOT AS EXPECTED"),
                flush=True,
            )
        returncode, stderr = evomerge("resume", soaked_dir)
        if returncode != 0:
            raise SystemExit(f"the last resume failed:\n{stderr[-2000:]}")
        soaked_seconds = time.perf_counter() - started

        whole_rows, soaked_rows = ledger_rows(whole_dir), ledger_rows(soaked_dir)
        return {
            "config": {
                "base": "configs/demo.yaml",
                "optimizer": "cmaes",
                "population_size": 4,
                "examples_per_skill": limit,
                "candidates": candidates,
                "search_seed": 0,
                "kill_seed": seed,
            },
            "kills": len(stops),
            "kills_by_signal": {s.name: sum(k["signal"] == s.name for k in stops) for s in SIGNALS},
            "every_stop_as_expected": all(k["as_expected"] for k in stops),
            "ledgers_identical": whole_rows == soaked_rows,
            "held_out_identical": held_out_records(whole_dir) == held_out_records(soaked_dir),
            "trials": {"uninterrupted": len(whole_rows), "killed_and_resumed": len(soaked_rows)},
            "processes": len(stops) + 1,
            "seconds": {
                "uninterrupted": round(whole_seconds, 1),
                "killed_and_resumed": round(soaked_seconds, 1),
            },
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "stops": stops,
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kills", type=int, default=24, help="how many times the run is stopped (default 24)"
    )
    parser.add_argument("--candidates", type=int, default=48, help="the run's candidates (default 48)")
    parser.add_argument(
        "--limit", type=int, default=24, help="examples per skill, a seeded sample of each split (default 24)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points and signals (default 0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the JSON written (default {RESULTS})")
    args = parser.parse_args()
    if not 0 < args.kills <= args.candidates:
        parser.error(f"--kills must be between 1 and --candidates ({args.candidates}), not {args.kills}")
    print(
        f"soak: {args.kills} kills in a run of {args.candidates} candidates (kill seed {args.seed})",
        flush=True,
    )
    result = soak(args.kills, args.candidates, args.limit, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    counts = ", ".join(f"{n} {name}" for name, n in result["kills_by_signal"].items())
    print(
        f"kills: {result['kills']} ({counts}); every stop as expected: {result['every_stop_as_expected']}; "
        f"ledgers identical: {result['ledgers_identical']} ({result['trials']['uninterrupted']} trials); "
        f"held-out records identical: {result['held_out_identical']}; "
        f"{result['seconds']['killed_and_resumed']} s against {result['seconds']['uninterrupted']} s "
        f"uninterrupted; written to {args.out}"
    )
    verdicts = ("every_stop_as_expected", "ledgers_identical", "held_out_identical")
    return 0 if all(result[key] for key in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
