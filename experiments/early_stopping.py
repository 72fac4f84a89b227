"""What early stopping saves on the demo search, and whether it changes the held-out result.

    python experiments/early_stopping.py [--seeds 0 1] [--chunk-size 25] [--top-k 1]

Runs configs/demo.yaml (64 candidates, CMA-ES, three zoo skills with 100 search examples each) with early
stopping off and on, with the same seeds, and compares: candidates stopped early, examples scored, evaluation
seconds, search wall time, and the best candidate's search and held-out scores (the loop scores the best on
the held-out split at the end of each run). Prints a table and saves experiments/results/early_stopping.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from optuna.trial import TrialState  # noqa: E402

from evomerge.config import load_config  # noqa: E402
from evomerge.search.loop import Search  # noqa: E402
from evomerge.search.results import best_trial, held_out_scores  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "early_stopping.json"


def one_run(run_dir: Path, seed: int, early: dict | None) -> dict:
    overrides = {"run_dir": str(run_dir), "seed": seed}
    if early is not None:
        overrides["early_stopping"] = early
    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    started = time.perf_counter()
    study = Search(config, progress=False).run()
    wall = time.perf_counter() - started
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(config, complete)
    held_out = held_out_scores(study)[best.number]
    full = sum(spec.limit for spec in config.tasks.values())
    return {
        "early_stopping": early is not None,
        "seed": seed,
        "candidates": len(trials),
        "stopped_early": sum(t.state == TrialState.PRUNED for t in trials),
        "examples_scored": sum(t.user_attrs.get("examples_scored", full) for t in trials),
        "eval_seconds": round(sum(t.user_attrs.get("eval_seconds", 0.0) for t in trials), 1),
        "wall_seconds": round(wall, 1),
        "best_trial": best.number,
        "best_search_mean": round(sum(best.values) / len(best.values), 4),
        "best_held_out": {o.task: round(held_out[o.task][o.metric], 4) for o in config.objectives},
        "best_held_out_mean": round(
            sum(held_out[o.task][o.metric] for o in config.objectives) / len(config.objectives), 4
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (default: 0)")
    parser.add_argument("--chunk-size", type=int, default=25, help="examples per task between two checks")
    parser.add_argument("--top-k", type=int, default=1, help="prune what cannot beat the k-th best")
    args = parser.parse_args()
    early = {"enabled": True, "chunk_size": args.chunk_size, "top_k": args.top_k}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for setting in (None, early):
                run_dir = Path(scratch) / f"seed{seed}-{'early' if setting else 'full'}"
                rows.append(one_run(run_dir, seed, setting))
                print(json.dumps(rows[-1]))
    header = (
        f"{'early':<7}{'seed':>5}{'stopped':>9}{'examples':>10}"
        f"{'eval s':>8}{'wall s':>8}{'search':>8}{'held-out':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{str(r['early_stopping']):<7}{r['seed']:>5}{r['stopped_early']:>9}{r['examples_scored']:>10}"
            f"{r['eval_seconds']:>8}{r['wall_seconds']:>8}{r['best_search_mean']:>8}{r['best_held_out_mean']:>9}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"settings": early, "config": "configs/demo.yaml", "rows": rows}, indent=2) + "\n"
    )
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
