"""Time one merge of the tiny zoo: in place into a resident model, and end to end as `evomerge merge` does.

    python experiments/bench_zoo_merge.py [--repeats N]

Prints the figures and saves them to experiments/results/bench_zoo_merge.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evomerge.merge.engine import MergeEngine
from evomerge.merge.recipe import load_recipe
from evomerge.output.model_dir import write_merge

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "bench_zoo_merge.json"


def seconds(action, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of each measurement")
    args = parser.parse_args()

    recipe = load_recipe(ROOT / "configs" / "merge_ties.yaml")
    load_seconds = seconds(lambda: MergeEngine.from_recipe(recipe), 1)[0]
    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target()
    engine.materialize(recipe, model)  # warm-up
    in_place = seconds(lambda: engine.materialize(recipe, model), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(args.repeats))
        end_to_end = seconds(lambda: write_merge(recipe, Path(tmp) / str(next(counter)), progress=False), 3)

    parameters = sum(p.numel() for p in model.parameters())
    figures = {
        "recipe": "configs/merge_ties.yaml (TIES, base + 3 experts, per-layer parameters)",
        "parameters": parameters,
        "load_sources_seconds": round(load_seconds, 3),
        "materialize_in_place_seconds_median": round(statistics.median(in_place), 4),
        "materialize_in_place_seconds_min": round(min(in_place), 4),
        "evomerge_merge_end_to_end_seconds_median": round(statistics.median(end_to_end), 3),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": "cpu",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:45} {value}")
    print(f"saved to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
