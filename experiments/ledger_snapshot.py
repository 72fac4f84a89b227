"""Seeded runs on the tiny zoo, their ledgers written as JSON: the proof that a refactor changed no behaviour.

Runs `evomerge run` (the CLI, as a user would) on three configs at small budgets: the demo (CMA-ES, three
objectives), the Pareto config (NSGA-II, two objectives) and a hybrid (TIES merge phase, then a layer stack of
its best merge). Each ledger is read back with Optuna and written as every study's trials (number, state,
genes, objective values, user attributes) and study attributes, leaving out what measures time (merge and
evaluation seconds, elapsed search time). Two snapshots of the same code are identical; so must be a snapshot
taken before a refactor and one taken after.

    python experiments/ledger_snapshot.py --out experiments/results/ledger_snapshot.json
    python experiments/ledger_snapshot.py --out /tmp/after.json \\
        --compare experiments/results/ledger_snapshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TIMING = {"merge_seconds", "eval_seconds", "elapsed_seconds"}

HYBRID = {
    "recipe": {
        "method": "ties",
        "base": "zoo:base",
        "sources": [{"model": "zoo:expert_add"}, {"model": "zoo:expert_reverse"}],
        "parameters": {"normalize": False},
    },
    "genome": [
        {"param": "weight", "granularity": "layer", "low": 0.0, "high": 1.5},
        {"param": "density", "granularity": "global", "low": 0.2, "high": 1.0},
    ],
    "stack": {
        "sources": ["search:best", "zoo:expert_shift"],
        "repeats": 2,
        "max_depth": 6,
        "scale_low": 0.5,
        "scale_high": 1.5,
    },
    "stack_budget": {"evaluations": 8},
    "tasks": {
        "add": {"data": "zoo:add", "limit": 50},
        "reverse": {"data": "zoo:reverse", "limit": 50},
        "shift": {"data": "zoo:shift", "limit": 50},
    },
    "objectives": [{"task": "add"}, {"task": "reverse"}, {"task": "shift"}],
    "optimizer": {"name": "tpe"},
    "budget": {"evaluations": 8},
    "seed": 3,
}


def runs(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each snapshot's config file and the `evomerge run` options it is run with."""
    hybrid = root / "hybrid.yaml"
    hybrid.write_text(yaml.safe_dump(HYBRID, sort_keys=False))
    return {
        "demo": (CONFIGS / "demo.yaml", ["--budget", "16"]),
        "pareto": (CONFIGS / "pareto.yaml", ["--budget", "16"]),
        "hybrid": (hybrid, []),
    }


def ledger(run_dir: Path) -> dict:
    """Every study of a run's ledger, without timings."""
    storage = f"sqlite:///{run_dir / 'ledger.db'}"
    studies = {}
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        studies[summary.study_name] = {
            "user_attrs": {k: v for k, v in sorted(study.user_attrs.items()) if k not in TIMING},
            "trials": [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "params": t.params,
                    "values": t.values,
                    "user_attrs": {k: v for k, v in sorted(t.user_attrs.items()) if k not in TIMING},
                }
                for t in study.get_trials(deepcopy=False)
            ],
        }
    return studies


def snapshot() -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (config, options) in runs(root).items():
            run_dir = root / name
            command = [
                sys.executable,
                "-m",
                "evomerge.cli",
                "run",
                str(config),
                "--run-dir",
                str(run_dir),
                *options,
            ]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(
                command,
                check=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                stdout=subprocess.DEVNULL,
            )
            # the runs' directories are temporary: their path is written as RUN_ROOT
            found[name] = json.loads(json.dumps(ledger(run_dir)).replace(str(root), "RUN_ROOT"))
    return found


def differences(before: dict, after: dict, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        lines = [f"{path}/{k}: only in the first" for k in before.keys() - after.keys()]
        lines += [f"{path}/{k}: only in the second" for k in after.keys() - before.keys()]
        for key in sorted(before.keys() & after.keys(), key=str):
            lines += differences(before[key], after[key], f"{path}/{key}")
        return lines
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            line for i, (b, a) in enumerate(zip(before, after)) for line in differences(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {before!r} != {after!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the snapshot (JSON)")
    parser.add_argument("--compare", type=Path, help="a snapshot to compare with; exit 1 if they differ")
    args = parser.parse_args()
    found = snapshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    counts = {
        run: {study: len(data["trials"]) for study, data in studies.items()} for run, studies in found.items()
    }
    print(f"trials per study: {counts}; written to {args.out}")
    if args.compare is None:
        return 0
    diff = differences(json.loads(args.compare.read_text()), json.loads(args.out.read_text()))
    print("\n".join(diff[:50]) or f"identical to {args.compare}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
