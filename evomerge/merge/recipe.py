"""The Recipe: the contract between search and merge (what a search finds is what `evomerge merge` builds).

A recipe names the method, the base, the sources and the parameters. It is plain data that round-trips
through YAML, so anything the search finds can be rebuilt bit for bit by `evomerge merge recipe.yaml`:

```yaml
method: ties
base: zoo:base
sources:
  - model: zoo:expert_add
    weight: [0.6, 0.9]              # one value per layer
    density: {gradient: [0.3, 0.7]} # interpolated over depth
  - model: zoo:expert_reverse
    weight: 1.0                     # a scalar
    density: {attention: 0.4, mlp: [0.5, 0.7], default: 0.5}   # per module kind
parameters:                          # global parameters of the method
  scale: 1.0
seed: 0                              # seeds DARE's random masks
```

How a value resolves for one tensor (`resolve_value`, evomerge/merge/values.py): a per-kind map first picks
the entry for the tensor's module kind (embedding, attention, mlp, norm, head; `final_norm` for the norm after
the last layer, when given), else its `default`; a list gives the value of the tensor's layer; a gradient
places its points evenly from the first layer to the last and interpolates linearly. Tensors outside the layer
stack take the first layer's value (embeddings) or the last's (final norm, head).

A mergekit configuration (mergekit-yaml's YAML, told apart by its `merge_method`) is read as the recipe that
makes the same tensors (evomerge/merge/mergekit_input.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.errors import UsageError, first_validation_problem
from evomerge.files import read_yaml
from evomerge.merge.values import KIND_KEYS, resolve_value

if TYPE_CHECKING:
    from evomerge.merge.methods import MergeMethod, ParamSpec

#: The pydantic validation context of a config that a run directory or a study stored when its run started,
#: read again by a command that only reads the ledger (`evomerge status`): its recipes were checked against
#: their methods' declared parameters when the run started, so they are not checked again. That check needs
#: the method registry, whose methods import torch, which such a command has no other use for.
STORED_CONFIG = {"recipes_checked": True}
Dtype = Literal["float32", "float16", "bfloat16"]


class SourceSpec(BaseModel):
    """One source model and its per-source parameters (every key other than `model`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model: str = Field(
        min_length=1,
        description="the source model: zoo:NAME, a local Hugging Face directory or .gguf file, or a hub name",
    )

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Recipe(BaseModel):
    """A merge, fully specified: the method, the models and every parameter value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str = Field(
        description="the merge method's name (see the method registry, evomerge/merge/methods)"
    )
    base: str | None = Field(
        None,
        description="the model the sources were fine-tuned from, as a source's `model` is named; "
        "methods that merge task vectors need it",
    )
    sources: list[SourceSpec] = Field(
        min_length=1, description="the models merged, each with its per-source parameters"
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="the method's global parameters, by name"
    )
    seed: int = Field(0, description="seeds DARE's random drops")
    dtype: Dtype | None = Field(
        None,
        description="the dtype the merged model is stored in (default: that of the base, else the first "
        "source)",
    )

    @property
    def models(self) -> list[str]:
        """The model references it is made of: the base (if any), then each source's."""
        return [*([self.base] if self.base else []), *(source.model for source in self.sources)]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False)

    @property
    def method_def(self) -> MergeMethod:
        from evomerge.merge.methods import get_method  # imports torch: only once a recipe's method is used

        return get_method(self.method)


def recipe_from_dict(data: Any, origin: str = "recipe", context: Mapping[str, Any] | None = None) -> Recipe:
    """Validate plain data as a Recipe for its method; `origin` names it in error messages. Under the
    validation context STORED_CONFIG, a recipe read back from a started run's config, the method check
    (check_recipe) is left out."""
    if not isinstance(data, dict):
        raise UsageError(
            f"{origin}: expected a mapping with 'method' and 'sources', got {type(data).__name__}"
        )
    if "merge_method" in data:  # a mergekit configuration: the recipe that makes its tensors
        from evomerge.merge.mergekit_input import mergekit_recipe_data

        data = mergekit_recipe_data(data, origin)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise UsageError(f"{origin}: {first_validation_problem(error)}") from None
    if not (context or {}).get("recipes_checked"):
        check_recipe(recipe, origin)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    path = Path(path)
    return recipe_from_dict(read_yaml(path, "recipe"), origin=f"recipe '{path}'")


def check_recipe(recipe: Recipe, origin: str = "recipe") -> None:
    """Check a recipe against what its method declares: names, scopes, shapes of values and bounds.

    What needs the models (the layer count a list must match) is checked when the recipe is bound to them.
    """
    method = recipe.method_def
    if method.needs_base and recipe.base is None:
        raise UsageError(f"{origin}: method '{method.name}' needs a 'base' model")
    count = len(recipe.sources)
    if count < method.min_sources or (method.max_sources is not None and count > method.max_sources):
        wanted = (
            f"exactly {method.min_sources}"
            if method.min_sources == method.max_sources
            else f"at least {method.min_sources}"
        )
        raise UsageError(f"{origin}: method '{method.name}' takes {wanted} sources, the recipe lists {count}")
    scope_place = {"global": "under 'parameters'", "source": "under each source"}
    places = [("parameters", recipe.parameters, "global")]
    places += [(f"sources.{i}", source.parameters, "source") for i, source in enumerate(recipe.sources)]
    for place, params, scope in places:
        for name, value in params.items():
            spec = method.param(name)
            if spec.scope != scope:
                kind = "per-source" if spec.scope == "source" else "global"
                raise UsageError(
                    f"{origin}: '{name}' is a {kind} parameter of '{method.name}'; "
                    f"set it {scope_place[spec.scope]}"
                )
            _check_value(spec, value, f"{origin}: {place}.{name}")


def _check_value(spec: ParamSpec, value: Any, where: str) -> None:
    if spec.kind == "bool":
        spec.check(value, where)
        return
    if isinstance(value, dict) and "gradient" not in value:
        unknown = set(value) - set(KIND_KEYS)
        if unknown:
            raise UsageError(
                f"{where}: unknown module kind '{sorted(unknown)[0]}'; use {', '.join(KIND_KEYS)}"
            )
        for kind, inner in value.items():
            _check_layer_value(spec, inner, f"{where}.{kind}")
        return
    _check_layer_value(spec, value, where)


def _check_layer_value(spec: ParamSpec, value: Any, where: str) -> None:
    if isinstance(value, dict):
        points = value.get("gradient")
        if set(value) != {"gradient"} or not isinstance(points, list) or not points:
            raise UsageError(f"{where}: a gradient is written {{gradient: [first, ..., last]}}")
        for point in points:
            spec.check(point, where)
    elif isinstance(value, list):
        if not value:
            raise UsageError(f"{where}: an empty list gives no value; write one value per layer")
        for item in value:
            spec.check(item, where)
    else:
        spec.check(value, where)


def resolve_parameters(recipe: Recipe, layer: int | None, kind: str, num_layers: int) -> dict[str, Any]:
    """Every parameter of the recipe's method for one tensor: per-source ones as lists, global ones as
    scalars."""
    method = recipe.method_def
    resolved: dict[str, Any] = {}
    for spec in method.params:
        if spec.scope == "global":
            value = recipe.parameters.get(spec.name, spec.default)
            resolved[spec.name] = resolve_value(value, layer, kind, num_layers, f"parameters.{spec.name}")
        else:
            resolved[spec.name] = [
                resolve_value(
                    source.parameters.get(spec.name, spec.default),
                    layer,
                    kind,
                    num_layers,
                    f"sources.{i}.{spec.name}",
                )
                for i, source in enumerate(recipe.sources)
            ]
    return resolved
