"""Layer stacks as data: the run config's `stack:` section (StackSpace) and a stacked model (StackRecipe).

As in "Evolutionary Optimization of Model Merging Recipes" (Akiba et al., 2024), a stacked model is a sequence
of the sources' decoder layers, each with the scale of the hidden state entering it, under the embeddings,
final norm and head of one source. The StackRecipe is the contract of the data-flow space, as the Recipe is of
the parameter space: plain data, written to YAML, rebuilt exactly by `evomerge merge stack.yaml` and exported
as an ordinary checkpoint (evomerge/stack/engine.py). Its genome is evomerge/stack/genome.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from evomerge.errors import UsageError, validated
from evomerge.files import read_yaml
from evomerge.merge.recipe import Recipe, recipe_from_dict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _recipes_read(value: Any, info: ValidationInfo) -> Any:
    """A source given as a mapping is an inline merge recipe, checked as a recipe file is (but for a stored
    config's: evomerge/merge/recipe.py, STORED_CONFIG)."""
    if not isinstance(value, list):
        return value
    return [
        recipe_from_dict(item, origin="stack source", context=info.context)
        if isinstance(item, dict)
        else item
        for item in value
    ]


#: stack sources: model references, or inline merge recipes whose merged model is a source
Sources = Annotated[list[str | Recipe], BeforeValidator(_recipes_read), Field(min_length=1)]


class StackSpace(_Frozen):
    """The run config's `stack:` section: the sources whose layers are stacked and the shape of the search."""

    sources: Sources = Field(
        description="the models whose layers are stacked: model references, inline merge recipes, or "
        "search:best (a hybrid run's best merge)"
    )
    repeats: int = Field(3, ge=1, description="how many times the sources' layer sequence is laid out")
    min_depth: int = Field(1, ge=1, description="the fewest layers a stack keeps")
    max_depth: int | None = Field(
        None, ge=1, description="the most layers a stack keeps (default: every slot)"
    )
    scale_low: float = Field(
        1.0,
        gt=0,
        description="the lowest scale of the hidden state entering a kept layer (scales are "
        "searched when it differs from scale_high)",
    )
    scale_high: float = Field(
        1.0, gt=0, description="the highest scale of the hidden state entering a kept layer"
    )
    embeddings: int = Field(0, ge=0, description="the source whose embeddings, final norm and head are used")

    @model_validator(mode="after")
    def _consistent(self) -> StackSpace:
        if self.scale_low > self.scale_high:
            raise ValueError(f"stack: scale_low {self.scale_low} > scale_high {self.scale_high}")
        if self.max_depth is not None and self.max_depth < self.min_depth:
            raise ValueError(
                f"stack: max_depth {self.max_depth} < min_depth {self.min_depth}; no stack can meet both"
            )
        if self.embeddings >= len(self.sources):
            raise ValueError(
                f"stack: embeddings {self.embeddings} names no source (there are {len(self.sources)})"
            )
        return self

    @property
    def searches_scales(self) -> bool:
        return self.scale_low != self.scale_high


class StackLayer(_Frozen):
    source: int = Field(ge=0)
    layer: int = Field(ge=0)
    scale: float = Field(1.0, gt=0)


class StackRecipe(_Frozen):
    """A stacked model: its layers in order, each a source's decoder layer with the scale of its input."""

    sources: Sources
    embeddings: int = Field(0, ge=0, description="the source whose embeddings, final norm and head are used")
    layers: list[StackLayer] = Field(min_length=1)

    @model_validator(mode="after")
    def _indices(self) -> StackRecipe:
        for index in [self.embeddings, *(layer.source for layer in self.layers)]:
            if index >= len(self.sources):
                raise ValueError(f"source index {index} names no source (there are {len(self.sources)})")
        return self

    @property
    def models(self) -> list[str]:
        """The model references it is made of: each source's, an inline merge's own models in its place."""
        return [model for s in self.sources for model in (s.models if isinstance(s, Recipe) else [s])]

    def to_yaml(self) -> str:
        data = self.model_dump(exclude_none=True)
        data["layers"] = [[layer.source, layer.layer, layer.scale] for layer in self.layers]  # one line each
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def is_stack_data(data: Any) -> bool:
    """Whether plain recipe data describes a stack (it has `layers`, or is a mergekit passthrough of slices)
    rather than a parameter-space merge."""
    from evomerge.merge.mergekit_input import is_mergekit_stack

    return isinstance(data, dict) and ("layers" in data or is_mergekit_stack(data))


def stack_from_dict(data: Any, origin: str = "stack recipe") -> StackRecipe:
    """Validate plain data as a StackRecipe; a layer may be a mapping or a [source, layer, scale] list. A
    mergekit passthrough of slices is read as the stack it writes (evomerge/merge/mergekit_input.py)."""
    from evomerge.merge.mergekit_input import is_mergekit_stack, mergekit_stack_data

    if is_mergekit_stack(data):
        data = mergekit_stack_data(data, origin)
    if not isinstance(data, dict):
        raise UsageError(
            f"{origin}: expected a mapping with 'sources' and 'layers', got {type(data).__name__}"
        )
    layers = data.get("layers")
    if isinstance(layers, list):
        keys = ("source", "layer", "scale")
        data = {
            **data,
            "layers": [dict(zip(keys, item)) if isinstance(item, list) else item for item in layers],
        }
    return validated(StackRecipe, data, origin)


def load_stack(path: str | Path) -> StackRecipe:
    path = Path(path)
    return stack_from_dict(read_yaml(path, "stack recipe"), origin=f"stack recipe '{path}'")
