"""The run config: what a search merges, what it varies, what it optimizes, and for how long.

```yaml
recipe:                 # the template: method, base, sources and every parameter the search leaves fixed
  method: ties
  base: zoo:base
  sources: [{model: zoo:expert_add}, {model: zoo:expert_reverse}, {model: zoo:expert_shift}]
genome:                 # what the search varies (see evomerge/genome.py)
  - {param: weight, granularity: layer, low: 0.0, high: 1.5}
  - {param: density, granularity: layer, low: 0.2, high: 1.0}
tasks:                  # data with search.jsonl and held_out.jsonl (fields prompt, answer)
  add: {data: zoo:add, limit: 64}
objectives:
  - {task: add, metric: exact_match, direction: maximize}
optimizer: {name: cmaes, population_size: 8, sigma: 0.3}
budget: {evaluations: 48}
seed: 0
run_dir: runs/demo      # the ledger (ledger.db), the log and the config live here
```

Every mistake is reported as one line naming the field (`load_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.errors import UsageError, first_validation_problem
from evomerge.files import read_yaml
from evomerge.genome import SearchedParam
from evomerge.recipe import Recipe, recipe_from_dict

OPTIMIZERS = ("cmaes", "tpe", "optuna-cmaes", "nsga2", "nsga3", "gp", "random")
MULTI_OBJECTIVE = ("nsga2", "nsga3", "tpe", "gp", "random")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskSpec(_Frozen):
    """A prompt -> answer data set scored by greedy exact match (the evaluator issue grows more kinds)."""

    data: str = Field(description="zoo:SKILL, or a directory with search.jsonl and held_out.jsonl")
    limit: int | None = Field(None, ge=1, description="examples scored per split (the first N)")


class Objective(_Frozen):
    task: str
    metric: Literal["exact_match"] = "exact_match"
    direction: Literal["maximize", "minimize"] = "maximize"
    weight: float = Field(1.0, gt=0)


class OptimizerConfig(_Frozen):
    name: Literal["cmaes", "tpe", "optuna-cmaes", "nsga2", "nsga3", "gp", "random"] = "cmaes"
    population_size: int | None = Field(None, ge=2, description="default: the optimizer's own")
    sigma: float = Field(0.3, gt=0, description="CMA-ES initial step size, in the unit cube")
    scalarization: Literal["weighted_sum", "chebyshev"] = "weighted_sum"


class Budget(_Frozen):
    evaluations: int | None = Field(None, ge=1)
    wall_clock_seconds: float | None = Field(None, gt=0)
    max_consecutive_failures: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.evaluations is None and self.wall_clock_seconds is None:
            raise ValueError("set budget.evaluations or budget.wall_clock_seconds")
        return self


class RunConfig(_Frozen):
    recipe: Recipe
    genome: list[SearchedParam] = Field(min_length=1)
    seed_recipes: list[Path] = Field(default_factory=list)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    budget: Budget
    seed: int = 0
    storage: str | None = Field(None, description="an Optuna RDB URL; default sqlite in the run directory")
    study: str = Field("evomerge", min_length=1, description="the study's name in the storage")
    run_dir: Path = Path("runs/run")
    device: str = "cpu"

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe(cls, value: Any) -> Recipe:
        return value if isinstance(value, Recipe) else recipe_from_dict(value, origin="recipe")

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        for objective in self.objectives:
            if objective.task not in self.tasks:
                raise ValueError(
                    f"objective names task '{objective.task}', which is not under 'tasks' ({', '.join(self.tasks)})"
                )
        if len(self.objectives) > 1 and self.optimizer.name not in (*MULTI_OBJECTIVE, "cmaes"):
            raise ValueError(
                f"optimizer '{self.optimizer.name}' optimizes one objective but {len(self.objectives)} are "
                f"listed; use one of {', '.join(MULTI_OBJECTIVE)} for a Pareto front, or cmaes with a scalarization"
            )
        return self

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'ledger.db').resolve()}"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def config_from_dict(data: Any, origin: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except UsageError as error:
        raise UsageError(f"{origin}: {error}") from None
    except ValidationError as error:
        raise UsageError(f"{origin}: {first_validation_problem(error)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config YAML; `overrides` (dotted keys such as 'budget.evaluations') replace its values."""
    path = Path(path)
    data = read_yaml(path, "config")
    for dotted, value in (overrides or {}).items() if isinstance(data, dict) else ():
        target = data
        *parents, last = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return config_from_dict(data, origin=f"config '{path}'")
