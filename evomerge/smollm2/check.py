"""Scoring the family with evomerge's own evaluator, as a search scores a candidate: greedy generation of
the chat-templated prompt, exact match of the answer (the `generate` task kind), for every model and for a
merge of the two experts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evomerge.evaluate.specs import GenerateSpec
from evomerge.evaluate.tasks import Evaluator, Partial, load_task
from evomerge.merge.engine import MergeEngine
from evomerge.merge.recipe import Recipe, recipe_from_dict
from evomerge.smollm2.skills import BASE_MODEL, SKILLS, TASKS, expert_name, model_names

#: The merge the manifest reports: task arithmetic of the two experts at full strength.
MERGE_CHECK = "task arithmetic scale=1.0"
#: Examples per greedy-generation batch.
EVAL_BATCH = 64


def task_spec(family_dir: Path, task: str) -> GenerateSpec:
    """The `generate` task a run config writes as ``{data: "smollm2:TASK", template: "{chat_prompt}"}``."""
    return GenerateSpec(
        data=str(Path(family_dir) / "data" / task), template="{chat_prompt}", batch_size=EVAL_BATCH
    )


def merge_check_recipe(family_dir: Path) -> Recipe:
    family_dir = Path(family_dir)
    return recipe_from_dict(
        {
            "method": "task_arithmetic",
            "base": str(family_dir / BASE_MODEL),
            "sources": [{"model": str(family_dir / expert_name(s))} for s in SKILLS],
            "parameters": {"scale": 1.0},
        }
    )


def _loaded(model_dir: Path) -> Callable[[], PreTrainedModel]:
    return lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _merged(recipe: Recipe) -> Callable[[], PreTrainedModel]:
    def merge() -> PreTrainedModel:
        engine = MergeEngine.from_recipe(recipe, kernels="blocks")
        model = engine.new_target(dtype=torch.float32)
        engine.materialize(recipe, model)
        return model

    return merge


def scored_models(family_dir: Path) -> dict[str, Callable[[], PreTrainedModel]]:
    """What the manifest scores, by row name: each model of the family, then the merge check."""
    family_dir = Path(family_dir)
    models = {name: _loaded(family_dir / name) for name in model_names()}
    return {**models, MERGE_CHECK: _merged(merge_check_recipe(family_dir))}


def accuracy_rows(
    family_dir: Path, models: dict[str, Callable[[], PreTrainedModel]], split: str, progress: bool
) -> Iterator[tuple[str, dict[str, float]]]:
    """``(name, {task: exact match})`` for each model, loaded (or merged) in turn, on every task's split."""
    family_dir = Path(family_dir)
    tasks = [load_task(task, task_spec(family_dir, task)) for task in TASKS]
    evaluator = Evaluator(tasks, AutoTokenizer.from_pretrained(family_dir / BASE_MODEL))
    per_model = sum(task.size(split) for task in tasks)
    with tqdm(
        total=len(models) * per_model, desc="smollm2: scoring", unit="example", disable=not progress
    ) as bar:
        for name, make in models.items():
            bar.set_description(f"smollm2: scoring {name}")
            start = bar.n

            def advance(partial: Partial) -> bool:
                bar.update(start + sum(partial.scored(task.name) for task in tasks) - bar.n)
                return True

            scores = evaluator.score_progressively(make(), split, EVAL_BATCH, advance).means()
            bar.update(start + per_model - bar.n)
            yield name, {task: scores[task]["exact_match"] for task in TASKS}
