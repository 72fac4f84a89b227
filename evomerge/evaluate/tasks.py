"""Tasks and the evaluator the search calls.

The evaluator's contract (DESIGN.md decision 4): `score(model, "search")` is all the optimizer ever sees;
`score(model, "held_out")` is for reports. The two splits are loaded once, checked disjoint, and never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.config import TaskSpec
from evomerge.errors import UsageError
from evomerge.evaluate.exact_match import greedy_exact_match

SPLITS = ("search", "held_out")
#: What an evaluator returns: `{task: {metric: value}}`.
Scores = dict[str, dict[str, float]]
ZOO_DATA_PREFIX = "zoo:"


@dataclass(frozen=True)
class Examples:
    prompts: list[str]
    answers: list[str]


@dataclass(frozen=True)
class Task:
    name: str
    splits: dict[str, Examples]


def task_data_dir(data: str) -> Path:
    """The directory of a task's data: `zoo:SKILL` names a zoo skill's data, anything else is a path."""
    if data.startswith(ZOO_DATA_PREFIX):
        from evomerge.zoo import SKILLS, ensure_zoo

        skill = data[len(ZOO_DATA_PREFIX) :]
        if skill not in SKILLS:
            raise UsageError(f"the zoo has no skill '{skill}'; it has: {', '.join(SKILLS)}")
        return ensure_zoo() / "data" / skill
    return Path(data).expanduser()


def load_task(name: str, spec: TaskSpec) -> Task:
    """Read a task's search and held-out splits (the first `limit` examples of each), checked disjoint."""
    directory = task_data_dir(spec.data)
    splits = {split: _read_split(name, directory / f"{split}.jsonl", spec.limit) for split in SPLITS}
    shared = set(splits["search"].prompts) & set(splits["held_out"].prompts)
    if shared:
        raise UsageError(
            f"task '{name}': {len(shared)} prompts are in both the search and the held-out split "
            f"(e.g. {sorted(shared)[0]!r}); the held-out split must be disjoint"
        )
    return Task(name, splits)


def _read_split(task: str, path: Path, limit: int | None) -> Examples:
    if not path.is_file():
        raise UsageError(f"task '{task}': no data file '{path}' (a task directory holds search.jsonl and held_out.jsonl)")
    prompts, answers = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(row["prompt"])
                answers.append(row["answer"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise UsageError(f"task '{task}': {path} line {number} is not a JSON object with prompt and answer ({error})") from None
            if limit is not None and len(prompts) == limit:
                break
    if not prompts:
        raise UsageError(f"task '{task}': {path} holds no examples")
    return Examples(prompts, answers)


class Evaluator:
    """Scores a model on every task of a split: `{task: {metric: value}}`."""

    def __init__(self, tasks: list[Task], tokenizer: PreTrainedTokenizerBase) -> None:
        self.tasks = tasks
        self.tokenizer = tokenizer

    def score(self, model: PreTrainedModel, split: str = "search") -> Scores:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        return {
            task.name: {
                "exact_match": greedy_exact_match(
                    model, self.tokenizer, task.splits[split].prompts, task.splits[split].answers
                )
            }
            for task in self.tasks
        }
