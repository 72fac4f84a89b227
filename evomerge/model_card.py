"""The README.md model card of an exported merge: what was merged, how it was found, how well it scores."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Scores
from evomerge.recipe import Recipe


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
    config: RunConfig, trial: FrozenTrial, recipe: Recipe, held_out: Scores, chosen_as: str, evaluations: int
) -> str:
    method = recipe.method_def
    optimizer = config.optimizer
    objectives = {(o.task, o.metric) for o in config.objectives}
    score_rows = [
        f"| {task} | {metric} | {value:.4f} | {held_out[task][metric]:.4f} | "
        + ("yes" if (task, metric) in objectives else "no") + " |"
        for task, metrics in trial.user_attrs["scores"].items()
        for metric, value in metrics.items()
    ]
    data = "\n".join(f"- `{name}`: {task_description(spec)}" for name, spec in config.tasks.items())
    genome = "\n".join(
        f"  - `{g.param}`: {g.granularity}" + (f" (groups of {g.group_size} layers)" if g.granularity == "group" else "")
        + f", {g.low:g} to {g.high:g}" + (" on a log scale" if g.log else "")
        for g in config.genome
    )
    budget = config.budget
    limits = " and ".join(
        text for text in (
            f"{budget.evaluations} evaluations" if budget.evaluations else "",
            f"{budget.wall_clock_seconds:g} s" if budget.wall_clock_seconds else "",
        ) if text
    )
    optimizer_text = (
        f"`{optimizer.name}`"
        + (f", population {optimizer.population_size}" if optimizer.population_size else "")
        + (f", initial step {optimizer.sigma:g}" if optimizer.name == "cmaes" else "")
        + (f", objectives scalarized by {optimizer.scalarization}"
           if optimizer.name == "cmaes" and config.multi_objective else "")
    )
    return f"""---
library_name: transformers
tags:
- merge
- evomerge
---
# Merge of {len(recipe.sources)} models: `{recipe.method}`, found by evomerge

Trial {trial.number} of the evomerge run in `{config.run_dir}`, exported as the {chosen_as} candidate.

## Models

- base: {f"`{recipe.base}`" if recipe.base else "none"}
{chr(10).join(f"- source: `{s.model}`" for s in recipe.sources)}

## Method

`{recipe.method}` ({method.reference or "see evomerge/methods/"}), with the parameters in `recipe.yaml`
(per source, per layer where the search varied them). `evomerge merge recipe.yaml --out DIR` rebuilds this
model's tensors bit for bit from the same models.

## Search

- optimizer: {optimizer_text}
- seed {config.seed}; budget {limits}; {evaluations} candidates evaluated
- searched parameters:
{genome}

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
