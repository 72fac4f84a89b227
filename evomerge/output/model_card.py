"""The README.md model card of an exported merge or layer stack: what it is made of, how it was found, how
well it scores."""

from __future__ import annotations

import yaml
from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.evaluate.scores import Scores
from evomerge.evaluate.specs import TaskSpec
from evomerge.search.optimizers import get_optimizer
from evomerge.search.space import Candidate, space_of
from evomerge.sources import hub_model_id


def task_description(spec: TaskSpec) -> str:
    """How a task is scored and on what data, in a few words."""
    return spec.describe()


def front_matter(models: list[str]) -> str:
    """The card's YAML header as the hub reads a merge's: `base_model:` listing the hub models it is made of
    (each once; a local or plug-in model has no hub name to list), `tags: [merge, evomerge]`,
    `library_name: transformers`."""
    hub_models = list(dict.fromkeys(m for m in map(hub_model_id, models) if m is not None))
    header = {
        **({"base_model": hub_models} if hub_models else {}),
        "library_name": "transformers",
        "tags": ["merge", "evomerge"],
    }
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---"


def model_card(
    config: RunConfig,
    trial: FrozenTrial,
    candidate: Candidate,
    held_out: Scores | None,
    chosen_as: str,
    evaluations: int,
) -> str:
    """The README.md of an exported candidate: a merge recipe or a layer stack, with how it was found and
    its scores on both splits."""
    title, body, searched = space_of(config).card_parts(candidate)
    objectives = {(o.task, o.metric) for o in config.objectives}
    score_rows = [
        f"| {task} | {metric} | {value:.4f} | "
        + (f"{held_out[task][metric]:.4f}" if held_out else "–")
        + " | "
        + ("yes" if (task, metric) in objectives else "no")
        + " |"
        for task, metrics in trial.user_attrs["scores"].items()
        for metric, value in metrics.items()
    ]
    held_out_text = (
        "scores were computed after the search and stored in the run's ledger."
        if held_out
        else f"scores are not in the run's ledger yet: `evomerge score {config.run_dir} "
        f"--trial {trial.number}` computes them; export again to have them here."
    )
    data = "\n".join(f"- `{name}`: {task_description(spec)}" for name, spec in config.tasks.items())
    return f"""{front_matter(candidate.models)}
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
{held_out_text}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/DIRECTORY")
tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/DIRECTORY")
```
"""


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
        text
        for text in (
            f"{budget.evaluations} evaluations" if budget.evaluations else "",
            f"{budget.wall_clock_seconds:g} s" if budget.wall_clock_seconds else "",
        )
        if text
    )
