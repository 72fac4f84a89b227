"""Candidates per hour of the SmolLM2 search (configs/smollm2.yaml), and where a candidate's time goes.

    python experiments/smollm2/speed.py [--candidates 100] [--device cpu|cuda] [--limit 100] [--out FILE]

Runs the experiment's search (DARE-TIES of the two experts per layer group, CMA-ES, early stopping, scored on
arith_words) for `--candidates` candidates in a temporary run directory, and reports:
- candidates per hour, from the candidates' merge + evaluation seconds and from the wall clock;
- the median merge and evaluation seconds, and evaluation's share of a candidate's time;
- for the last candidate, its evaluation split into prefill (greedy generation of one token for every
  prompt: the prompts' forward passes), decode (the other generated tokens) and the rest (tokenizing,
  matching, Python), each scored on the whole search split, the fastest of two runs;
- peak RSS of the process, in model sizes (one float32 SmolLM2-135M, 538 MB).

The built family is used when it is in the cache (`evomerge zoo build --family smollm2`). Otherwise, or
with `--stand-in`, the experts are stand-ins made in a temporary directory (the base plus seeded noise of
1 % of each tensor's spread) and the data are made from the family's settings: the same shapes and prompts,
so the same cost per candidate, except that the stand-ins do not stop generating early (every answer runs
to max_new_tokens, so decoding is timed at its longest). That is how experiments/gpu_check.sh measures a
fresh GPU machine without an hour of training. Saves experiments/results/smollm2_speed[_DEVICE].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from evomerge.config import load_config  # noqa: E402
from evomerge.evaluate.generate import greedy_completions  # noqa: E402
from evomerge.evaluate.tasks import GenerateTask  # noqa: E402
from evomerge.families import write_jsonl  # noqa: E402
from evomerge.search.loop import Search  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smollm2.yaml"
RESULTS = ROOT / "experiments" / "results"
EXPERTS = ("expert_arith", "expert_words")


def stand_in_family(root: Path) -> dict[str, str]:
    """Overrides of configs/smollm2.yaml that point it at stand-in experts and data made under `root`."""
    import shutil

    from evomerge.gguf import dequantized_directory
    from evomerge.smollm2.settings import FamilySettings
    from evomerge.smollm2.skills import TASKS, task_splits
    from evomerge.smollm2.source import gguf_path

    base = dequantized_directory(gguf_path())
    generator = torch.Generator().manual_seed(0)
    for expert in EXPERTS:
        shutil.copytree(base, root / expert)
        weights = root / expert / "model.safetensors"
        tensors = load_file(weights)
        for name, tensor in tensors.items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensors[name] = tensor + 0.01 * tensor.float().std() * noise
        save_file(tensors, weights, metadata={"format": "pt"})
    splits = task_splits(FamilySettings())
    for task in TASKS:
        for split, rows in splits[task].items():
            write_jsonl(root / "data" / task / f"{split}.jsonl", rows)
    return {
        "recipe.base": str(base),
        "recipe.sources": [{"model": str(root / expert)} for expert in EXPERTS],
        **{f"tasks.{task}.data": str(root / "data" / task) for task in load_config(CONFIG).tasks},
    }


def family_is_built() -> bool:
    from evomerge.smollm2.build import default_family_dir, read_manifest

    return read_manifest(default_family_dir()) is not None


def seconds(action, repeats: int = 2) -> float:
    """The fastest of `repeats` runs of `action`."""
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        action()
        synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evaluation_breakdown(search: Search) -> dict[str, float]:
    """The target model as the last candidate left it, scored on the search split: the whole evaluation,
    and its prefill and decoding (every generate task's prompts through greedy_completions)."""
    model, evaluator = search.scorer.model, search.scorer.evaluator
    whole = seconds(lambda: evaluator.score(model, "search"))
    tasks = [t for t in evaluator.tasks if isinstance(t, GenerateTask)]

    def generate(max_new_tokens: int | None) -> None:
        for task in tasks:
            greedy_completions(
                model,
                task.tokenizer,
                task.prompts["search"],
                max_new_tokens or task.max_new_tokens,
                task.spec.stop,
                task.spec.batch_size,
            )

    prefill = seconds(lambda: generate(1))
    generation = seconds(lambda: generate(None))
    return {
        "evaluation_seconds": whole,
        "prefill_seconds": prefill,
        "decode_seconds": generation - prefill,
        "other_seconds": whole - generation,
        "examples": sum(t.size("search") for t in evaluator.tasks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=100, help="candidates evaluated (default 100)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--limit", type=int, help="examples per task and split (default: the config's, 100)")
    parser.add_argument(
        "--stand-in", action="store_true", help="stand-in experts even if the family is built"
    )
    parser.add_argument("--out", type=Path, help="the JSON written")
    args = parser.parse_args()
    stand_in = args.stand_in or not family_is_built()
    with tempfile.TemporaryDirectory() as scratch:
        overrides = stand_in_family(Path(scratch)) if stand_in else {}
        overrides.update(
            {
                "run_dir": str(Path(scratch) / "run"),
                "budget.evaluations": args.candidates,
                "device": args.device,
            }
        )
        if args.limit:
            overrides.update({f"tasks.{task}.limit": args.limit for task in load_config(CONFIG).tasks})
        config = load_config(CONFIG, overrides)
        started = time.perf_counter()
        search = Search(config, progress=sys.stderr.isatty())
        setup = time.perf_counter() - started
        study = search.run()
        wall = time.perf_counter() - started - setup
        trials = [t for t in study.trials if "merge_seconds" in t.user_attrs]
        merge = [t.user_attrs["merge_seconds"] for t in trials]
        evaluate = [t.user_attrs["eval_seconds"] for t in trials]
        breakdown = evaluation_breakdown(search)
        model_bytes = sum(p.numel() * p.element_size() for p in search.scorer.model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "family": "stand-in experts (speed only)" if stand_in else "built",
        "candidates": len(trials),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "examples_per_task": {task.name: task.size("search") for task in search.scorer.evaluator.tasks},
        "setup_seconds": round(setup, 1),
        "wall_seconds_after_setup": round(wall, 1),
        "merge_seconds_median": round(statistics.median(merge), 3),
        "eval_seconds_median": round(statistics.median(evaluate), 3),
        "evaluation_share": round(sum(evaluate) / (sum(merge) + sum(evaluate)), 4),
        "candidates_per_hour_merge_plus_eval": round(3600 * len(trials) / (sum(merge) + sum(evaluate)), 1),
        "candidates_per_hour_wall": round(3600 * len(trials) / wall, 1),
        "last_candidate_full_evaluation": {k: round(v, 3) for k, v in breakdown.items()},
        "peak_rss_bytes": peak,
        "peak_rss_models": round(peak / model_bytes, 2),
    }
    print(json.dumps(result, indent=2))
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    out = args.out or RESULTS / f"smollm2_speed{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
