"""Gathers the three JSONs of experiments/gpu_check.sh into OUT/gpu_check.json, with each goal met or not.

python experiments/gpu_check_summary.py OUT SECONDS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Share of the memory-bound time each method's merge should reach.
MERGE_GOALS = {"linear": 0.5, "task_arithmetic": 0.5, "ties": 0.25, "dare_ties": 0.25}
EVAL_GOAL = 3.0
EVALUATION_SHARE_GOAL = 0.95


def summary(out: Path, seconds: float) -> dict:
    merge = json.loads((out / "gpu_check_merge.json").read_text())
    evaluation = json.loads((out / "gpu_check_eval.json").read_text())
    search = json.loads((out / "gpu_check_search.json").read_text())
    shares = {
        row["method"]: round(row["ours"]["memory_bound_seconds"] / row["ours"]["seconds"], 3)
        for row in merge["rows"]
    }
    speedup = evaluation["built_in_speedup_over_lm_eval"]
    return {
        "device": search["device"],
        "seconds": seconds,
        "merge_share_of_memory_bound": shares,
        "merge_goals_met": {m: shares[m] >= goal for m, goal in MERGE_GOALS.items() if m in shares},
        "built_in_speedup_over_lm_eval": speedup,
        "eval_goal_met": {kind: value >= EVAL_GOAL for kind, value in speedup.items()},
        "search_candidates_per_hour": search["candidates_per_hour_wall"],
        "search_evaluation_share": search["evaluation_share"],
        "evaluation_share_goal_met": search["evaluation_share"] >= EVALUATION_SHARE_GOAL,
        "search_family": search["family"],
        "files": ["gpu_check_merge.json", "gpu_check_eval.json", "gpu_check_search.json"],
    }


def main() -> None:
    out = Path(sys.argv[1])
    result = summary(out, float(sys.argv[2]))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"saved {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
