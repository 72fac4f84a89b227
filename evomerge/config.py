"""The run config: what a search merges, what it varies, what it optimizes, and for how long.

```yaml
recipe:                 # the template: method, base, sources and every parameter the search leaves fixed
  method: ties
  base: zoo:base
  sources: [{model: zoo:expert_add}, {model: zoo:expert_reverse}, {model: zoo:expert_shift}]
genome:                 # what the search varies (see evomerge/genome.py)
  - {param: weight, granularity: layer, low: 0.0, high: 1.5}
  - {param: density, granularity: layer, low: 0.2, high: 1.0}
tasks:                  # what candidates are scored on (evomerge/evaluate/specs.py: kinds and fields)
  add: {data: zoo:add, limit: 64}
objectives:             # metric and direction default to the task kind's first metric, its natural way
  - {task: add, metric: exact_match, direction: maximize}
early_stopping: {enabled: true, chunk_size: 50}   # prune hopeless candidates (PRUNED trials)
optimizer: {name: cmaes, population_size: 8, sigma: 0.3}
budget: {evaluations: 48}
seed: 0
run_dir: runs/demo      # the ledger (ledger.db), the log and the config live here
```

A layer-stacking (data-flow space) run has a `stack:` section instead of `recipe` and `genome`
(evomerge/dfs.py: StackSpace):

```yaml
stack: {sources: [zoo:expert_add, zoo:expert_reverse], repeats: 2, max_depth: 6, scale_low: 0.5, scale_high: 1.5}
```

Every mistake is reported as one line naming the field (`load_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evomerge.dfs import StackSpace
from evomerge.errors import UsageError, validated
from evomerge.evaluate.specs import TaskSpec
from evomerge.files import read_yaml
from evomerge.genome import SearchedParam
from evomerge.recipe import Recipe, recipe_from_dict

OPTIMIZERS = ("cmaes", "tpe", "optuna-cmaes", "nsga2", "nsga3", "gp", "random")
MULTI_OBJECTIVE = ("nsga2", "nsga3", "tpe", "gp", "random")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Objective(_Frozen):
    """One value to optimize: a task's metric (default: the task kind's first), in its natural direction
    unless given."""

    task: str
    metric: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    weight: float = Field(1.0, gt=0)


class EarlyStopping(_Frozen):
    """Stop scoring a candidate once it cannot, with this confidence, beat the k-th best so far (PRUNED)."""

    enabled: bool = False
    chunk_size: int = Field(50, ge=1, description="examples per task between two checks")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided confidence of the bound on the full score")
    top_k: int = Field(1, ge=1, description="prune a candidate that cannot beat the k-th best candidate so far")


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
    recipe: Recipe | None = None
    genome: list[SearchedParam] = Field(default_factory=list)
    stack: StackSpace | None = None
    seed_recipes: list[Path] = Field(default_factory=list)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    early_stopping: EarlyStopping = EarlyStopping()
    optimizer: OptimizerConfig = OptimizerConfig()
    budget: Budget
    seed: int = 0
    storage: str | None = Field(None, description="an Optuna RDB URL; default sqlite in the run directory")
    study: str = Field("evomerge", min_length=1, description="the study's name in the storage")
    run_dir: Path = Path("runs/run")
    device: str = "cpu"

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe(cls, value: Any) -> Recipe | None:
        if value is None or isinstance(value, Recipe):  # None: a layer-stacking run (its config as stored)
            return value
        return recipe_from_dict(value, origin="recipe")

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if (self.recipe is None) == (self.stack is None):
            raise ValueError(
                "give either 'recipe' and 'genome' (a merge-parameter search) or 'stack' (a layer-stacking search)"
            )
        if self.recipe is not None and not self.genome:
            raise ValueError("genome: no parameter is searched; list at least one under 'genome'")
        if self.stack is not None and self.genome:
            raise ValueError("genome: a layer-stacking run searches its 'stack' section; remove 'genome'")
        resolved = []
        for objective in self.objectives:
            if objective.task not in self.tasks:
                raise ValueError(
                    f"objective names task '{objective.task}', which is not under 'tasks' ({', '.join(self.tasks)})"
                )
            resolved.append(_resolved(objective, self.tasks[objective.task]))
        object.__setattr__(self, "objectives", resolved)  # frozen: set once, here, while validating
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


def _resolved(objective: Objective, task: TaskSpec) -> Objective:
    """The objective with its metric and direction filled in from the task kind's declared metrics."""
    metrics = task.metrics
    if task.kind == "lm_eval":  # lm-eval tasks declare their metrics in their YAML, checked on loading
        if objective.metric is None:
            raise ValueError(f"objective on lm-eval task '{objective.task}': name its metric (e.g. acc, exact_match)")
        return objective.model_copy(update={"direction": objective.direction or "maximize"})
    metric = objective.metric or next(iter(metrics))
    if metric not in metrics:
        raise ValueError(
            f"objective on task '{objective.task}': a {task.kind} task has no metric '{metric}' "
            f"(it has: {', '.join(metrics)})"
        )
    direction = objective.direction or ("maximize" if metrics[metric] else "minimize")
    return objective.model_copy(update={"metric": metric, "direction": direction})


def config_from_dict(data: Any, origin: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: expected a mapping of settings, got {type(data).__name__}")
    return validated(RunConfig, data, origin)


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
