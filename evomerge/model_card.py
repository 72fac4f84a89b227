"""The README.md model card of an exported merge or layer stack: what it is made of, how it was found, how
well it scores."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.dfs import StackRecipe
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Scores
from evomerge.recipe import Recipe
from evomerge.search.optimizers import get_optimizer
from evomerge.stacking import folded_factors, source_label


def task_description(spec: TaskSpec) -> str:
    """How a task is scored and on what data, in a few words."""
    if spec.kind == "lm_eval":
        return f"the lm-eval task `{spec.task}` (held-out: `{spec.held_out_task}`)"
    scored = {
        "generate": "greedy generation, exact match of the answer",
        "choice": "log-likelihood of each option, accuracy of the most likely",
        "perplexity": "mean negative log-likelihood of the text",
    }[spec.kind]
    sample = f"a seeded random subsample of {spec.limit} examples per split" if spec.limit else "every example"
    return f"{spec.data}, {sample}; {scored}"


def model_card(
    config: RunConfig,
    trial: FrozenTrial,
    candidate: Recipe | StackRecipe,
    held_out: Scores,
    chosen_as: str,
    evaluations: int,
) -> str:
    """The README.md of an exported candidate: a merge recipe or a layer stack, with how it was found and
    its scores on both splits."""
    if isinstance(candidate, StackRecipe):
        title, body, searched = _stack_parts(config, candidate)
    else:
        title, body, searched = _merge_parts(config, candidate)
    objectives = {(o.task, o.metric) for o in config.objectives}
    score_rows = [
        f"| {task} | {metric} | {value:.4f} | {held_out[task][metric]:.4f} | "
        + ("yes" if (task, metric) in objectives else "no") + " |"
        for task, metrics in trial.user_attrs["scores"].items()
        for metric, value in metrics.items()
    ]
    data = "\n".join(f"- `{name}`: {task_description(spec)}" for name, spec in config.tasks.items())
    return f"""---
library_name: transformers
tags:
- merge
- evomerge
---
# {title}, found by evomerge

Trial {trial.number} of the evomerge run in `{config.run_dir}`, exported as the {chosen_as} candidate.

{body}
## Search

- optimizer: {_optimizer_text(config)}
- seed {config.seed}; budget {_budget_text(config)}; {evaluations} candidates evaluated
{searched}

## Scores

| task | metric | search split | held-out split | objective |
| --- | --- | ---: | ---: | --- |
{chr(10).join(score_rows)}

The tasks and how each is scored:

{data}

The search split is what the optimizer saw: this candidate was selected on it, so its search scores are
optimistic. The held-out split is disjoint from it (checked) and was never shown to the optimizer; its
scores were computed after the search, for this export or for the run's report.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/DIRECTORY")
tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/DIRECTORY")
```
"""


def _merge_parts(config: RunConfig, recipe: Recipe) -> tuple[str, str, str]:
    """Title, the models and method sections, and the searched parameters of a merge recipe."""
    title = f"Merge of {len(recipe.sources)} models: `{recipe.method}`"
    reference = recipe.method_def.reference or "see evomerge/methods/"
    body = f"""## Models

- base: {f"`{recipe.base}`" if recipe.base else "none"}
{chr(10).join(f"- source: `{s.model}`" for s in recipe.sources)}

## Method

`{recipe.method}` ({reference}), with the parameters in `recipe.yaml` (per source, per layer where the search
varied them). `evomerge merge recipe.yaml --out DIR` rebuilds this model's tensors bit for bit from the same
models.
"""
    searched = "- searched parameters:\n" + "\n".join(
        f"  - `{g.param}`: {g.granularity}"
        + (f" (groups of {g.group_size} layers)" if g.granularity == "group" else "")
        + f", {g.low:g} to {g.high:g}" + (" on a log scale" if g.log else "")
        for g in config.genome
    )
    return title, body, searched


def _stack_parts(config: RunConfig, stack: StackRecipe) -> tuple[str, str, str]:
    """Title, the models and layers sections, and the searched layout of a layer stack."""
    space = config.stack
    title = f"Layer stack of {len(stack.sources)} models ({len(stack.layers)} layers)"
    sources = "\n".join(
        f"- source {index}: `{ref}`" if isinstance(ref, str)
        else f"- source {index}: {source_label(ref)} (`{ref.method}`, its recipe inline in `recipe.yaml`)"
        for index, ref in enumerate(stack.sources)
    )
    layers = "\n".join(
        f"| {index} | {layer.source} | {layer.layer} | {layer.scale:.4f} | {factor:.6g} |"
        for index, (layer, factor) in enumerate(zip(stack.layers, folded_factors(stack)))
    )
    if all(layer.scale == 1.0 for layer in stack.layers):
        fold = (
            "Every scale is 1: each layer is a copy of its source's layer, and this checkpoint computes "
            "exactly the stack that was searched."
        )
    else:
        fold = (
            "The scales are folded into the weights: each layer's attention output projection (`o_proj`) "
            "and MLP down projection (`down_proj`) are multiplied by its folded factor, 1 over the product "
            "of the scales up to and including that layer. As RMSNorm(s h) = RMSNorm(h) but for the epsilon "
            "inside the norm, this computes the scaled stack exactly up to RMSNorm's epsilon "
            "(evomerge/stacking.py derives it). The scores below were measured on the searched stack (scales "
            "applied to the hidden states), not on this checkpoint."
        )
    body = f"""## Models

{sources}
- embeddings, final norm and head: source {stack.embeddings}

## Layers

The model's decoder layers in order, each a copy of a source's layer. During the search, the hidden state
entering each layer was multiplied by its scale.

| layer | source | source layer | scale | folded factor |
| ---: | ---: | ---: | ---: | ---: |
{layers}

This checkpoint is an ordinary model of the embeddings source's architecture with {len(stack.layers)} layers.
{fold} `evomerge merge recipe.yaml --out DIR` writes the same checkpoint again from the same models.
"""
    scales = (
        f"a scale per kept layer from {space.scale_low:g} to {space.scale_high:g}"
        if space.searches_scales else f"no scale (every scale {space.scale_low:g})"
    )
    searched = (
        "- searched layer stack:\n"
        f"  - the sources' layers laid out in order and repeated {space.repeats} times, a slot kept when its "
        "inclusion gene is above 0.5\n"
        f"  - depth from {space.min_depth} to {space.max_depth or 'every slot'} layers; {scales}"
    )
    return title, body, searched


def _optimizer_text(config: RunConfig) -> str:
    optimizer = config.optimizer
    scalarized = config.multi_objective and get_optimizer(optimizer.name).several_objectives == "scalarized"
    return (
        f"`{optimizer.name}`"
        + (f", population {optimizer.population_size}" if optimizer.population_size else "")
        + (f", initial step {optimizer.sigma:g}" if optimizer.name == "cmaes" else "")
        + (f", objectives scalarized by {optimizer.scalarization}" if scalarized else "")
    )


def _budget_text(config: RunConfig) -> str:
    budget = config.budget
    return " and ".join(
        text for text in (
            f"{budget.evaluations} evaluations" if budget.evaluations else "",
            f"{budget.wall_clock_seconds:g} s" if budget.wall_clock_seconds else "",
        ) if text
    )
