"""The run config: what a search merges, what it varies, what it optimizes, and for how long.

```yaml
recipe:                 # the template: method, base, sources and every parameter the search leaves fixed
  method: ties
  base: zoo:base
  sources: [{model: zoo:expert_add}, {model: zoo:expert_reverse}, {model: zoo:expert_shift}]
genome:                 # what the search varies (see evomerge/merge/genome.py)
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
device: cuda            # where candidates are merged and scored (default: cpu)
sources_device: cpu     # optional: keep base and sources in host memory when the GPU cannot hold them all
sources_dtype: bfloat16 # optional: keep them in a lower precision
kernels: auto           # optional: compiled (one fused kernel per tensor), blocks, or auto (compiled for
                        # large models on CPU)
```

A layer-stacking (data-flow space) run has a `stack:` section instead of `recipe` and `genome`
(evomerge/stack/recipe.py: StackSpace):

```yaml
stack: {sources: [zoo:expert_add, zoo:expert_reverse], repeats: 2, max_depth: 6, scale_low: 0.5,
        scale_high: 1.5}
```

A hybrid run has all three: it searches the merge parameters first, then stacks the layers of its best merge
(the stack source `search:best`) and of the other stack sources, in one run directory with one ledger
(two studies: NAME and NAME-stack; evomerge/search/hybrid.py):

```yaml
stack: {sources: [search:best, zoo:expert_add], repeats: 2, max_depth: 8}
stack_budget: {evaluations: 32}   # the layer-stacking phase's budget (default: the same as `budget`)
```

`load_config` also reads a mergekit-evolve config as the run config it describes
(evomerge/mergekit_evolve.py), and a `recipe:` may be a mergekit config (evomerge/merge/mergekit_input.py).

Every mistake is reported as one line naming the field (`load_config`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from evomerge.errors import UsageError, validated
from evomerge.evaluate.specs import TaskSpec
from evomerge.files import read_yaml
from evomerge.merge.recipe import Recipe, recipe_from_dict
from evomerge.mergekit_evolve import evolve_run_config, is_evolve_config
from evomerge.search.genes import SearchedParam
from evomerge.search.optimizers import get_optimizer, optimizers, unknown_optimizer
from evomerge.stack.recipe import StackSpace

#: The stack source that stands for the best merge of a hybrid run's parameter-space phase.
SEARCH_BEST = "search:best"
#: The study of a hybrid run's layer-stacking phase is the run's study name with this suffix.
STACK_STUDY_SUFFIX = "-stack"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Objective(_Frozen):
    """One value to optimize: a task's metric (default: the task kind's first), in its natural direction
    unless given."""

    task: str = Field(description="the name of a task under `tasks`")
    metric: str | None = Field(
        None, description="the task's metric (default: its kind's first; an lm_eval task must name one)"
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: the metric's natural direction (maximize for an lm_eval task)"
    )
    weight: float = Field(
        1.0, gt=0, description="the objective's weight when several are scalarized into one"
    )


class EarlyStopping(_Frozen):
    """Stop scoring a candidate once it cannot, with this confidence, beat the k-th best so far (PRUNED)."""

    enabled: bool = Field(
        False, description="score candidates in chunks and prune those that cannot beat the top_k-th best"
    )
    chunk_size: int = Field(50, ge=1, description="examples per task between two checks")
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="one-sided confidence of the bound on the full score"
    )
    top_k: int = Field(
        1, ge=1, description="prune a candidate that cannot beat the k-th best candidate so far"
    )


class OptimizerConfig(_Frozen):
    """What proposes the candidates: pycma's CMA-ES or an Optuna sampler, seeded by the run's `seed`."""

    name: str = Field(
        "cmaes",
        description="a registered optimizer (evomerge/search/optimizers): cmaes (pycma) or an Optuna "
        "sampler; with several objectives a multi-objective sampler finds a Pareto front and cmaes optimizes "
        "their scalarization",
        json_schema_extra={"enum": [optimizer.name for optimizer in optimizers()]},
    )
    population_size: int | None = Field(
        None,
        ge=2,
        description="candidates per generation, for optimizers that have generations (default: "
        "the optimizer's own)",
    )
    sigma: float = Field(0.3, gt=0, description="CMA-ES initial step size, in the unit cube")
    scalarization: Literal["weighted_sum", "chebyshev"] = Field(
        "weighted_sum",
        description="how several objectives become one value (for cmaes, and to pick a run's best "
        "candidate): the weighted sum of their losses, or the largest weighted distance of a loss from the "
        "lowest seen so far (chebyshev)",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in {optimizer.name for optimizer in optimizers()}:
            raise ValueError(unknown_optimizer(name))
        return name


class Budget(_Frozen):
    """When a search stops: after `evaluations` candidates or `wall_clock_seconds`, whichever comes first
    (set at least one); both count the whole run, resumes included."""

    evaluations: int | None = Field(
        None, ge=1, description="candidates evaluated: completed, pruned or failed"
    )
    wall_clock_seconds: float | None = Field(None, gt=0, description="seconds spent searching")
    max_consecutive_failures: int = Field(
        10, ge=1, description="stop the run after this many failed candidates in a row"
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.evaluations is None and self.wall_clock_seconds is None:
            raise ValueError("set budget.evaluations or budget.wall_clock_seconds")
        return self


class RunConfig(_Frozen):
    """A run: what it merges (`recipe` and `genome`) or stacks (`stack`), what candidates are scored on
    (`tasks`, `objectives`), how they are proposed (`optimizer`) and for how long (`budget`). A
    merge-parameter search gives `recipe` and `genome`, a layer-stacking search `stack`, and a hybrid run all
    three: the merge search, then stacking its best merge's layers (the stack source `search:best`)."""

    recipe: Recipe | None = Field(
        None, description="the template: method, base, sources and every parameter the search leaves fixed"
    )
    genome: list[SearchedParam] = Field(
        default_factory=list, description="the recipe parameters the search varies"
    )
    stack: StackSpace | None = Field(None, description="the layer-stacking search")
    stack_budget: Budget | None = Field(
        None, description="a hybrid run's layer-stacking phase (default: budget)"
    )
    seed_recipes: list[Path] = Field(
        default_factory=list,
        description="recipe files evaluated right after the template (stack recipe files, after each source "
        "alone, in a layer-stacking run); not in a hybrid run",
    )
    tasks: dict[str, TaskSpec] = Field(
        min_length=1, description="what candidates are scored on, by task name"
    )
    objectives: list[Objective] = Field(min_length=1, description="the values the search optimizes")
    early_stopping: EarlyStopping = Field(
        EarlyStopping(), description="pruning candidates before they are fully scored"
    )
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="what proposes the candidates")
    budget: Budget = Field(description="when the search stops")
    seed: int = Field(0, description="seeds the optimizer (pycma, and each trial's Optuna sampler)")
    storage: str | None = Field(None, description="an Optuna RDB URL; default sqlite in the run directory")
    study: str = Field("evomerge", min_length=1, description="the study's name in the storage")
    run_dir: Path = Field(
        Path("runs/run"),
        description="the run directory: its config, run.log, the report and (without storage) the ledger, "
        "ledger.db",
    )
    device: str = Field(
        "cpu", description="where candidates are merged and scored: a torch device (cpu, cuda, cuda:1)"
    )
    sources_device: str | None = Field(
        None,
        description="where the base and sources stay resident (default: device); cpu keeps them in host "
        "memory when the accelerator cannot hold them all (each tensor crosses when it is merged)",
    )
    sources_dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="the precision the resident base and sources are kept in (default: their own)"
    )
    kernels: Literal["auto", "compiled", "blocks"] = Field(
        "auto",
        description="how merges are computed: compiled kernels (torch.compile; needs a C++ compiler on CPU), "
        "blocks of torch operations, or auto: compiled on CPU for models of 33M+ parameters",
    )

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe(cls, value: Any, info: ValidationInfo) -> Recipe | None:
        if value is None or isinstance(value, Recipe):  # None: a layer-stacking run (its config as stored)
            return value
        return recipe_from_dict(value, origin="recipe", context=info.context)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.recipe is None and self.stack is None:
            raise ValueError(
                "give 'recipe' and 'genome' (a merge-parameter search), 'stack' (a layer-stacking search), "
                "or all three (a hybrid: the merge search, then stacking its best merge's layers)"
            )
        if self.recipe is not None and not self.genome:
            raise ValueError("genome: no parameter is searched; list at least one under 'genome'")
        if self.recipe is None and self.genome:
            raise ValueError("genome: a layer-stacking run searches its 'stack' section; remove 'genome'")
        best_stacked = self.stack is not None and SEARCH_BEST in self.stack.sources
        if self.hybrid and not best_stacked:
            raise ValueError(
                "stack.sources: a hybrid run (recipe, genome and stack) stacks the layers of its best "
                f"merge; list '{SEARCH_BEST}' among the stack sources"
            )
        if best_stacked and not self.hybrid:
            raise ValueError(
                f"stack.sources: '{SEARCH_BEST}' is the best merge of a hybrid run's merge search; add "
                "'recipe' and 'genome' for one, or name a model instead"
            )
        if self.recipe is None and (self.sources_device or self.sources_dtype):
            raise ValueError("sources_device, sources_dtype: they apply to merge-parameter runs; remove them")
        if self.stack_budget is not None and not self.hybrid:
            raise ValueError(
                "stack_budget: only a hybrid run (recipe, genome and stack) has a stacking phase"
            )
        if self.hybrid and self.seed_recipes:
            raise ValueError(
                "seed_recipes: a hybrid run starts from its template recipe; remove seed_recipes"
            )
        resolved = []
        for objective in self.objectives:
            if objective.task not in self.tasks:
                raise ValueError(
                    f"objective names task '{objective.task}', which is not under 'tasks' "
                    f"({', '.join(self.tasks)})"
                )
            resolved.append(_resolved(objective, self.tasks[objective.task]))
        object.__setattr__(self, "objectives", resolved)  # frozen: set once, here, while validating
        if len(self.objectives) > 1 and get_optimizer(self.optimizer.name).several_objectives == "refused":
            pareto = [o.name for o in optimizers() if o.several_objectives == "pareto"]
            scalarized = [o.name for o in optimizers() if o.several_objectives == "scalarized"]
            raise ValueError(
                f"optimizer '{self.optimizer.name}' optimizes one objective but {len(self.objectives)} are "
                f"listed; use one of {', '.join(pareto)} for a Pareto front, or {', '.join(scalarized)} "
                "with a scalarization"
            )
        return self

    @property
    def hybrid(self) -> bool:
        """A merge-parameter search followed by a layer-stacking search over its best merge."""
        return self.recipe is not None and self.stack is not None

    @property
    def stack_study(self) -> str:
        """The study of a hybrid run's layer-stacking phase."""
        return self.study + STACK_STUDY_SUFFIX

    def merge_phase(self) -> RunConfig:
        """A hybrid run's first phase: the merge-parameter search, as a run config of its own."""
        return config_from_dict({**self.to_json_dict(), "stack": None, "stack_budget": None}, "merge phase")

    def stack_phase(self, best: Recipe) -> RunConfig:
        """A hybrid run's second phase: the layer-stacking search with `best` (the first phase's best merge)
        as the stack source `search:best`, in the study `stack_study` of the same storage."""
        data = self.to_json_dict()
        stack = data["stack"]
        stack["sources"] = [best.model_dump(mode="json") if s == SEARCH_BEST else s for s in stack["sources"]]
        data.update(
            recipe=None,
            genome=[],
            stack=stack,
            stack_budget=None,
            budget=data["stack_budget"] or data["budget"],
            study=self.stack_study,
            sources_device=None,
            sources_dtype=None,
        )
        return config_from_dict(data, "stack phase")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.ledger_path.resolve()}"

    @property
    def ledger_path(self) -> Path:
        """The run directory's SQLite ledger (used when no storage URL is given)."""
        return self.run_dir / "ledger.db"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _resolved(objective: Objective, task: TaskSpec) -> Objective:
    """The objective with its metric and direction filled in from the task kind's declared metrics."""
    metrics = task.metrics
    if not metrics:  # a kind whose tasks declare their metrics when loaded (lm-eval's, in their YAML)
        if objective.metric is None:
            raise ValueError(
                f"objective on {task.kind} task '{objective.task}': name its metric (e.g. acc, exact_match)"
            )
        return objective.model_copy(update={"direction": objective.direction or "maximize"})
    metric = objective.metric or next(iter(metrics))
    if metric not in metrics:
        raise ValueError(
            f"objective on task '{objective.task}': a {task.kind} task has no metric '{metric}' "
            f"(it has: {', '.join(metrics)})"
        )
    direction = objective.direction or ("maximize" if metrics[metric] else "minimize")
    return objective.model_copy(update={"metric": metric, "direction": direction})


def config_from_dict(data: Any, origin: str = "config", context: dict[str, Any] | None = None) -> RunConfig:
    """`data` validated as a run config (`context`: pydantic's validation context, e.g. STORED_CONFIG)."""
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: expected a mapping of settings, got {type(data).__name__}")
    return validated(RunConfig, data, origin, context)


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, context: dict[str, Any] | None = None
) -> RunConfig:
    """Read a run config YAML (or a mergekit-evolve config: evomerge/mergekit_evolve.py, warnings printed);
    `overrides` (dotted keys such as 'budget.evaluations') replace its values.
    `context` is pydantic's validation context: STORED_CONFIG (evomerge/merge/recipe.py) for the config a run
    directory was started with, read by a command that only reads its ledger."""
    path = Path(path)
    data = read_yaml(path, "config")
    if is_evolve_config(data):
        data, warnings = evolve_run_config(data, f"config '{path}'")
        for warning in warnings:
            print(f"evomerge: warning: {warning}", file=sys.stderr)
    for dotted, value in (overrides or {}).items() if isinstance(data, dict) else ():
        target = data
        *parents, last = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return config_from_dict(data, origin=f"config '{path}'", context=context)
