"""What k-shot examples, a system prompt and a chat template cost the built-in scorer: prompt tokens and
seconds per candidate, by number of shots.

    python experiments/bench_prompts.py [--model zoo:expert_add] [--device cpu] [--shots 0 1 3 5]

The zoo's addition data (200 search examples; shots from its train split) as a generate task and a two-option
choice task, scored by one model with 0, 1, 3, 5 shots; with a chat template and a system prompt too when the
model's tokenizer has a template (the zoo's has none). Every prompt of a task shares its head (system prompt
and shots), so the columns say how much longer a prompt gets and what that costs without a KV cache shared
across examples. Prints a table and saves experiments/results/bench_prompts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_eval import best_seconds  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from evomerge.evaluate.specs import TaskSpec  # noqa: E402
from evomerge.evaluate.tasks import Evaluator, load_task  # noqa: E402
from evomerge.sources import resolve_ref  # noqa: E402
from evomerge.zoo.build import ensure_zoo  # noqa: E402
from evomerge.zoo.skills import read_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_prompts.json"
TASKS = {
    "generate": {"max_new_tokens": 5},
    "choice": {"kind": "choice", "choices": "options", "target": "label"},
}


def write_data(root: Path, zoo_dir: Path) -> Path:
    """The addition skill's search, held-out and train splits, each example with a near-miss option."""
    for split in ("search", "held_out", "train"):
        rows = read_split(zoo_dir, "add", split)[:200]
        for row in rows:
            row["options"] = [str((int(row["answer"][0]) + 1) % 10) + row["answer"][1:], row["answer"]]
            row["label"] = 1
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def prompt_tokens(task) -> float:
    """Mean tokens the model reads per example (a choice's context once per option)."""
    if hasattr(task, "prompts"):
        lengths = [len(ids) for ids in task.prompts["search"]]
    else:
        lengths = [len(c) + len(o) for options in task.requests["search"] for c, o in options]
    return sum(lengths) / len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="zoo:expert_add", help="the model scored (default: zoo:expert_add)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3, 5], help="numbers of shots")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions (the fastest counts)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    directory = resolve_ref(args.model)
    model = AutoModelForCausalLM.from_pretrained(directory).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompting = [{"chat_template": False, "delimiter": "", "fewshot_delimiter": " "}]
    if tokenizer.chat_template:
        prompting.append({"chat_template": True, "system_prompt": "Add the two numbers."})
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = write_data(Path(scratch), ensure_zoo())
        for name, fields in TASKS.items():
            for settings in prompting:
                for shots in args.shots:
                    spec = {**fields, **settings, "data": str(data), "num_fewshot": shots}
                    task = load_task(name, TypeAdapter(TaskSpec).validate_python(spec))
                    evaluator = Evaluator([task], tokenizer)
                    scores = evaluator.score(model)[name]
                    seconds = best_seconds(lambda: evaluator.score(model), args.repeats)
                    rows.append(
                        {
                            "task": name,
                            "chat_template": settings["chat_template"],
                            "shots": shots,
                            "prompt_tokens": round(prompt_tokens(task), 1),
                            "seconds": round(seconds, 3),
                            "scores": scores,
                        }
                    )
                    row = rows[-1]
                    print(
                        f"{name:<9} chat={row['chat_template']!s:<5} shots={shots}  "
                        f"tokens={row['prompt_tokens']:>6}  seconds={row['seconds']:>7.3f}  {scores}"
                    )
    result = {
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        ),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "model": args.model,
        "examples": 200,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
