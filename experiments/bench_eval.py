"""Examples per second of the built-in scorer and of lm-eval, side by side, on the same tasks and model.

    python experiments/bench_eval.py [--model zoo:expert_add] [--device cpu] [--batch-size 64] [--repeats 3]

Two tasks over the zoo's addition data (200 search examples each): greedy generation scored by exact match,
and a two-option choice scored by log-likelihood. Each runs through evomerge's built-in scorer and through
lm-eval's `simple_evaluate` on the same in-memory model with the same batch size (lm-eval's task YAML made by
`lm_eval_task_config` from the same spec); the accuracies are printed too, as a parity check. A candidate's
cost is what is timed: tokenizing the splits (once per run for the built-in scorer) is reported apart.
Prints a table and saves experiments/results/bench_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from evomerge.evaluate.lm_eval_task import lm_eval_task_config  # noqa: E402
from evomerge.evaluate.specs import TaskSpec  # noqa: E402
from evomerge.evaluate.tasks import Evaluator, load_task  # noqa: E402
from evomerge.sources import resolve_ref  # noqa: E402
from evomerge.zoo.build import ensure_zoo  # noqa: E402
from evomerge.zoo.skills import read_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_eval.json"
SPLITS = ("search", "held_out")


def write_tasks(root: Path, zoo_dir: Path, batch_size: int) -> dict[str, dict]:
    """The two built-in task specs and their lm-eval twins, data and YAMLs under `root`."""
    specs = {
        "generate": {"max_new_tokens": 5},
        "choice": {"kind": "choice", "choices": "options", "target": "label", "delimiter": ""},
    }
    for name in specs:
        (root / name).mkdir()
    (root / "yaml").mkdir()
    for split in SPLITS:
        rows = read_split(zoo_dir, "add", split)
        choice = [
            {
                "prompt": r["prompt"],
                "options": [str((int(r["answer"][0]) + 1) % 10) + r["answer"][1:], r["answer"]],
                "label": 1,
            }
            for r in rows
        ]
        for name, examples in (("generate", rows), ("choice", choice)):
            data_file = root / name / f"{split}.jsonl"
            data_file.write_text("".join(json.dumps(r) + "\n" for r in examples))
            specs[name] = {**specs[name], "data": str(root / name), "batch_size": batch_size}
            spec = TypeAdapter(TaskSpec).validate_python(specs[name])
            task = f"bench_{name}_{split}"
            (root / "yaml" / f"{task}.yaml").write_text(
                yaml.safe_dump(lm_eval_task_config(task, data_file, spec))
            )
    lm_eval = {
        f"lm_eval_{name}": {
            "kind": "lm_eval",
            "task": f"bench_{name}_search",
            "held_out_task": f"bench_{name}_held_out",
            "include_path": str(root / "yaml"),
            "batch_size": batch_size,
        }
        for name in specs
    }
    return {**specs, **lm_eval}


def best_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="zoo:expert_add", help="the model scored (default: zoo:expert_add)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per batch, for both scorers")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (the fastest counts)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    zoo_dir = ensure_zoo()
    directory = resolve_ref(args.model)
    model = AutoModelForCausalLM.from_pretrained(directory).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        specs = write_tasks(Path(scratch), zoo_dir, args.batch_size)
        for name, fields in specs.items():
            task = load_task(name, TypeAdapter(TaskSpec).validate_python(fields))
            started = time.perf_counter()
            evaluator = Evaluator([task], tokenizer)
            prepare = time.perf_counter() - started
            scores = evaluator.score(model)[name]
            seconds = best_seconds(lambda: evaluator.score(model), args.repeats)
            examples = task.size("search")
            rows.append(
                {
                    "task": name,
                    "examples": examples,
                    "seconds": round(seconds, 3),
                    "examples_per_second": round(examples / seconds, 1),
                    "prepare_seconds": round(prepare, 3),
                    "scores": scores,
                }
            )
    by_task = {row["task"]: row for row in rows}
    speedup = {
        name: round(by_task[f"lm_eval_{name}"]["seconds"] / by_task[name]["seconds"], 2)
        for name in ("generate", "choice")
    }
    result = {
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        ),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "rows": rows,
        "built_in_speedup_over_lm_eval": speedup,
        "note": "GPU figures (100M+ model) not taken: no GPU was lent to this task",
    }
    print(f"{'task':<18}{'examples':>9}{'seconds':>9}{'ex/s':>9}  scores")
    for row in rows:
        print(
            f"{row['task']:<18}{row['examples']:>9}{row['seconds']:>9.3f}"
            f"{row['examples_per_second']:>9.1f}  {row['scores']}"
        )
    print("built-in speed-up over lm-eval:", speedup)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
