"""Scoring the zoo: each model's greedy exact match per skill (the accuracy matrix) and the merge check,
the accuracy of simple merges of the experts materialized by the MergeEngine."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evomerge.errors import UsageError
from evomerge.evaluate.generate import greedy_exact_match
from evomerge.merge.engine import MergeEngine
from evomerge.merge.recipe import Recipe, recipe_from_dict
from evomerge.zoo.skills import BASE_MODEL, SKILLS, SPLITS, expert_name, model_names, read_split


def model_accuracy(
    model_or_dir: PreTrainedModel | str | Path,
    zoo_dir: Path,
    split: str = "held_out",
    limit: int | None = None,
) -> dict[str, float]:
    """Greedy exact-match accuracy of one model on every skill's split: ``{skill: accuracy}``.

    `model_or_dir` is a loaded causal LM or a model directory; the tokenizer is the zoo base's (every zoo
    model and every merge of them shares it). `limit` scores only the first examples of each split.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    zoo_dir = Path(zoo_dir)
    if isinstance(model_or_dir, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir, dtype=torch.float32)
    else:
        model = model_or_dir
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / BASE_MODEL)
    accuracy = {}
    for skill in SKILLS:
        rows = read_split(zoo_dir, skill, split)[:limit]
        accuracy[skill] = greedy_exact_match(
            model, tokenizer, [e["prompt"] for e in rows], [e["answer"] for e in rows]
        )
    return accuracy


def accuracy_matrix(
    zoo_dir: Path, split: str = "held_out", limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Greedy exact-match accuracy of every zoo model on every skill: ``{model: {skill: accuracy}}``."""
    zoo_dir = Path(zoo_dir)
    return {name: model_accuracy(zoo_dir / name, zoo_dir, split, limit) for name in model_names()}


MERGE_CHECK_SCALE = 1.0


def merge_check_recipes(zoo_dir: Path) -> dict[str, Recipe]:
    """The simple merges the manifest reports: the uniform average of the experts and task arithmetic."""
    zoo_dir = Path(zoo_dir)
    sources = [{"model": str(zoo_dir / expert_name(s))} for s in SKILLS]
    return {
        "uniform average": recipe_from_dict({"method": "linear", "sources": sources}),
        f"task arithmetic scale={MERGE_CHECK_SCALE}": recipe_from_dict(
            {
                "method": "task_arithmetic",
                "base": str(zoo_dir / BASE_MODEL),
                "sources": sources,
                "parameters": {"scale": MERGE_CHECK_SCALE},
            }
        ),
    }


def merge_check(
    zoo_dir: Path, split: str = "held_out", limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Accuracy of each merge of `merge_check_recipes`, materialized with the MergeEngine: ``{merge: {skill:
    accuracy}}``."""
    recipes = merge_check_recipes(zoo_dir)
    return {label: recipe_accuracy(recipe, zoo_dir, split, limit) for label, recipe in recipes.items()}


def recipe_accuracy(
    recipe: Recipe, zoo_dir: Path, split: str = "held_out", limit: int | None = None
) -> dict[str, float]:
    """`model_accuracy` of the merge a recipe describes, materialized in memory with the MergeEngine."""
    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target(dtype=torch.float32)
    engine.materialize(recipe, model)
    return model_accuracy(model, zoo_dir, split, limit)
