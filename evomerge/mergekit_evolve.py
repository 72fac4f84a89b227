"""A mergekit-evolve configuration read as the evomerge run config that searches the same merges.

mergekit-evolve (mergekit/evo, https://github.com/arcee-ai/mergekit/blob/main/docs/evolve.md) runs CMA-ES over
a genome of merge parameters and scores each merge with lm-eval tasks. Data is a mergekit-evolve config when
its `genome` is a mapping (evomerge's own `genome` is a list). `load_config` (evomerge/config.py) reads it
through `evolve_run_config`, and `evomerge convert` prints the run config so that it can be kept and edited.

- `genome.models`, `merge_method`, `base_model`, `tokenizer_source`: the `recipe`, the merge of
  mergekit-evolve's starting genotype (each weight 1 / number of models, density 1, SLERP's t 0.5), read as a
  mergekit config (evomerge/merge/mergekit_input.py); `genome.normalize` (default: true for linear, ties and
  dare_ties) is its `normalize`.
- The searched parameters (weight; density for ties and dare_ties; t for slerp) are the `genome`, DARE's
  density as evomerge's drop = 1 - density; `layer_granularity` (layers per gene group, 0: one group) is
  `granularity: group` with `group_size` (1: `layer`, 0: `global`); `filters` (with layer_granularity 0) are
  `granularity: kind`; `allow_negative_weights` widens the weight's bounds from [0, 1] to [-1, 1].
- Each of `tasks` (an lm-eval `name`, `weight`, `metric`) is a task `{kind: lm_eval, task: NAME}`, whose
  documents evomerge splits into search and held-out by a seeded hash, and an objective on its metric
  (without lm-eval's `,none` filter), a negative weight minimized; `limit` is each task's `limit`,
  `apply_chat_template` its `chat_template` (when the tokenizer has one), `num_fewshot` its `num_fewshot`.
- Its options `--max-fevals` (100), `--sigma0` (1/6), `--random-seed` (0), `--storage-path` and
  `--task-search-path` are `budget.evaluations`, `optimizer.sigma` (in the unit cube: sigma0 over the
  weight's range), `seed`, `run_dir` and each task's `include_path` (EvolveOptions).

mergekit-evolve merges in bfloat16; the recipe stores bfloat16 (evomerge computes in float32). Its CMA-ES is
unbounded and takes absolute values (density clipped to [0, 1]); evomerge's genes have bounds: weight [0, 1],
density [0.05, 1], DARE's drop [0, 0.95], t [0, 1].

What evomerge cannot do is one UsageError line: `smooth` (a gradient through the groups), filters together
with layer groups, a layer_granularity that does not divide the layer count, a SLERP of more than two models.
What it does differently is a warning: each task's documents are half searched and half held out (where
mergekit-evolve searches on all of them), `limit` takes a seeded random subsample, k-shot examples under the
chat template are always turns (`fewshot_as_multiturn`), `filters` become one gene per module kind,
`random_init` starts from the template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.errors import UsageError, validated

#: mergekit-evolve's searched parameters per method (mergekit/evo/genome.py METHOD_PARAM_MAPS).
SEARCHED = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
#: evomerge's name and bounds of each, per method (DARE searches the drop, 1 - density).
BOUNDS = {"weight": ("weight", 0.0, 1.0), "density": ("density", 0.05, 1.0), "t": ("t", 0.0, 1.0)}
DARE_DENSITY = ("drop", 0.0, 0.95)


@dataclass(frozen=True)
class EvolveOptions:
    """mergekit-evolve's command-line options that shape the search, with its defaults."""

    max_fevals: int = 100
    sigma0: float = 1 / 6
    random_seed: int = 0
    storage_path: str | None = None
    task_search_path: str | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Genome(_Strict):
    models: list[str] = Field(min_length=1)
    merge_method: str
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False


class _Task(_Strict):
    name: str = Field(min_length=1)
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class _Evolve(_Strict):
    genome: _Genome
    tasks: list[_Task] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = None
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


def is_evolve_config(data: Any) -> bool:
    """Whether plain data is a mergekit-evolve config (its `genome` is a mapping)."""
    return isinstance(data, dict) and isinstance(data.get("genome"), dict)


def evolve_run_config(
    data: dict[str, Any], origin: str, options: EvolveOptions = EvolveOptions()
) -> tuple[dict[str, Any], list[str]]:
    """The evomerge run config (plain data) of a mergekit-evolve config, and warnings of what it does
    differently; UsageError naming the key of what it cannot do."""
    from evomerge.merge.mergekit_input import mergekit_recipe_data, model_layer_count

    evolve = validated(_Evolve, data, f"{origin} (a mergekit-evolve config)")
    genome = evolve.genome
    method = genome.merge_method
    if method not in SEARCHED:
        raise UsageError(
            f"{origin}: genome.merge_method '{method}': mergekit-evolve searches {', '.join(SEARCHED)}"
        )
    if genome.smooth:
        raise UsageError(
            f"{origin}: genome.smooth: evomerge's genome holds one value per layer group; a gradient through "
            "the groups is not supported yet: remove smooth"
        )
    if method == "slerp" and len(genome.models) != 2:
        raise UsageError(
            f"{origin}: genome.models: mergekit-evolve's slerp picks two of {len(genome.models)} models per "
            "layer group; evomerge's slerp merges two fixed models: list two"
        )
    warnings: list[str] = []
    recipe = mergekit_recipe_data(_start(genome), f"{origin}: genome")
    layers = model_layer_count(genome.models[0])
    granularity = _granularity(genome, layers, origin, warnings)
    searched = []
    for name in SEARCHED[method]:
        param, low, high = DARE_DENSITY if (method, name) == ("dare_ties", "density") else BOUNDS[name]
        if name == "weight" and genome.allow_negative_weights:
            low = -1.0
        searched.append({"param": param, **granularity, "low": low, "high": high})
    chat_template = evolve.apply_chat_template and _has_chat_template(genome.base_model or genome.models[0])
    if evolve.apply_chat_template and not chat_template:
        warnings.append(
            "apply_chat_template: the tokenizer of the models has no chat template; the prompts are scored "
            "as they are"
        )
    tasks, objectives = _tasks(evolve, options, chat_template, origin, warnings)
    if evolve.random_init:
        warnings.append(
            "random_init: evomerge's CMA-ES starts from the template (mergekit-evolve's fixed starting point)"
        )
    config: dict[str, Any] = {
        "recipe": recipe,
        "genome": searched,
        "tasks": tasks,
        "objectives": objectives,
        "optimizer": {
            "name": "cmaes",
            "sigma": options.sigma0 / (searched[0]["high"] - searched[0]["low"]),
        },
        "budget": {"evaluations": options.max_fevals},
        "seed": options.random_seed,
    }
    if options.storage_path is not None:
        config["run_dir"] = options.storage_path
    return config, warnings


def _start(genome: _Genome) -> dict[str, Any]:
    """The mergekit config of mergekit-evolve's starting genotype (each weight 1 / number of models, density
    1; SLERP at t 0.5 from the first model), in bfloat16 as mergekit-evolve merges."""
    start = {"weight": 1 / len(genome.models)}
    if genome.merge_method in ("ties", "dare_ties"):
        start["density"] = 1.0
    normalize = genome.normalize
    if normalize is None:
        normalize = genome.merge_method in ("ties", "dare_ties", "linear")
    config: dict[str, Any] = {
        "merge_method": genome.merge_method,
        "dtype": "bfloat16",
        "parameters": {"normalize": normalize},
        "tokenizer_source": genome.tokenizer_source,
    }
    if genome.merge_method == "slerp":
        return {
            **config,
            "base_model": genome.models[0],
            "models": [{"model": model} for model in genome.models],
            "parameters": {"t": 0.5},
        }
    if genome.base_model is not None:
        config["base_model"] = genome.base_model
    config["models"] = [{"model": m, "parameters": start} for m in genome.models]
    return config


def _granularity(genome: _Genome, layers: int, origin: str, warnings: list[str]) -> dict[str, Any]:
    size = genome.layer_granularity
    if genome.filters:
        if size > 0:
            raise UsageError(
                f"{origin}: genome.filters with layer_granularity {size}: evomerge's genome varies a "
                "parameter by layer group or by module kind, not both yet; set layer_granularity: 0, or "
                "remove filters"
            )
        warnings.append(
            f"genome.filters {genome.filters}: evomerge searches one value per module kind (embedding, "
            "attention, mlp, norm, head), mergekit-evolve one per filter and one for the rest"
        )
        return {"granularity": "kind"}
    if size == 0:
        return {"granularity": "global"}
    if layers % size:
        divisors = [d for d in range(1, layers + 1) if layers % d == 0]
        raise UsageError(
            f"{origin}: genome.layer_granularity {size} does not divide the models' {layers} layers; use one "
            f"of {', '.join(map(str, divisors))}, or 0 for one value for all layers"
        )
    return {"granularity": "layer"} if size == 1 else {"granularity": "group", "group_size": size}


def _has_chat_template(ref: str) -> bool:
    """Whether a model's tokenizer has a chat template (in tokenizer_config.json or chat_template.jinja)."""
    from evomerge.sources import model_directory

    directory = model_directory(ref)
    config = directory / "tokenizer_config.json"
    in_config = config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return in_config or (directory / "chat_template.jinja").is_file()


def _tasks(
    evolve: _Evolve, options: EvolveOptions, chat_template: bool, origin: str, warnings: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tasks: dict[str, Any] = {}
    objectives = []
    for i, task in enumerate(evolve.tasks):
        if task.name in tasks:
            raise UsageError(f"{origin}: tasks[{i}]: '{task.name}' is listed twice")
        if task.weight == 0:
            raise UsageError(f"{origin}: tasks[{i}].weight 0 scores nothing; remove the task")
        spec: dict[str, Any] = {"kind": "lm_eval", "task": task.name}
        if chat_template:
            spec["chat_template"] = True
        if evolve.num_fewshot:
            spec["num_fewshot"] = evolve.num_fewshot
        if options.task_search_path is not None:
            spec["include_path"] = options.task_search_path
        if evolve.limit is not None:
            spec["limit"] = evolve.limit
        tasks[task.name] = spec
        metric, _, filter_name = task.metric.partition(",")
        objectives.append(
            {
                "task": task.name,
                "metric": metric if filter_name in ("", "none") else task.metric,
                "direction": "maximize" if task.weight > 0 else "minimize",
                "weight": abs(task.weight),
            }
        )
        warnings.append(
            f"task '{task.name}': its documents are split in two by a seeded hash, half searched and half "
            "held out (held_out_fraction, split_seed), where mergekit-evolve searches on all of them"
        )
    if chat_template and not evolve.fewshot_as_multiturn and evolve.num_fewshot:
        warnings.append(
            "fewshot_as_multiturn false: evomerge's lm_eval tasks with the chat template give the k-shot "
            "examples as turns of the conversation"
        )
    if evolve.limit is not None and not evolve.shuffle:
        warnings.append(
            f"limit {evolve.limit}: evomerge scores a seeded random subsample of {evolve.limit} documents "
            "per task, mergekit-evolve the first ones"
        )
    return tasks, objectives


def converted_yaml(config: dict[str, Any], warnings: list[str], origin: str) -> str:
    """The run config as YAML, with what the conversion does differently as comments above it."""
    header = [f"# evomerge run config converted from the mergekit-evolve config {origin}", "#"]
    header += [f"# warning: {warning}" for warning in warnings]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)
