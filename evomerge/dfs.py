"""The data-flow space: which decoder layers of which source, in which order, make up the merged model.

As in "Evolutionary Optimization of Model Merging Recipes" (Akiba et al., 2024), the sources' layers are
laid out in order (every layer of source 0, then of source 1, ...) and the whole sequence repeated `repeats`
times: T = (layers of all sources) x repeats slots. A genome holds, per slot, an inclusion gene (the slot is
kept when its value is above 0.5) and a scale gene (the hidden state entering the kept layer is multiplied by
it). Both are real genes in the unit cube, so CMA-ES and every Optuna sampler search the same space.

Depth guards: a genome that keeps fewer than `min_depth` slots also keeps the excluded slots with the highest
inclusion values until it has `min_depth`; one that keeps more than `max_depth` drops its lowest. Decoding is
therefore total and deterministic.

The StackRecipe is the contract, like the Recipe of parameter space: plain data, written to YAML, rebuilt
exactly by `evomerge merge stack.yaml` and exported as an ordinary checkpoint (evomerge/stacking.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from evomerge.errors import UsageError, validated
from evomerge.files import read_yaml
from evomerge.genome import Gene, GeneSpace, SearchedParam
from evomerge.recipe import Recipe, recipe_from_dict

INCLUDED, EXCLUDED = 0.75, 0.25  # inclusion values of an encoded stack: a quarter away from the threshold


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _recipes_read(value: Any) -> Any:
    """A source given as a mapping is an inline merge recipe, checked as a recipe file is."""
    if not isinstance(value, list):
        return value
    return [
        recipe_from_dict(item, origin="stack source") if isinstance(item, dict) else item for item in value
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
        1.0, gt=0, description="the lowest scale of the hidden state entering a kept layer (scales are "
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

    def to_yaml(self) -> str:
        data = self.model_dump(exclude_none=True)
        data["layers"] = [[layer.source, layer.layer, layer.scale] for layer in self.layers]  # one line each
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def is_stack_data(data: Any) -> bool:
    """Whether plain recipe data describes a stack (it has `layers`) rather than a parameter-space merge."""
    return isinstance(data, dict) and "layers" in data


def stack_from_dict(data: Any, origin: str = "stack recipe") -> StackRecipe:
    """Validate plain data as a StackRecipe; a layer may be a mapping or a [source, layer, scale] list."""
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


class DfsGenome(GeneSpace):
    """Inclusion and scale genes over the slots of a StackSpace whose sources have `source_layers` layers."""

    def __init__(self, space: StackSpace, source_layers: Sequence[int]) -> None:
        self.space = space
        self.slots = [
            (source, layer)
            for _ in range(space.repeats)
            for source, count in enumerate(source_layers)
            for layer in range(count)
        ]
        total = len(self.slots)
        self.max_depth = space.max_depth if space.max_depth is not None else total
        if space.min_depth > total:
            raise UsageError(
                f"stack: min_depth {space.min_depth} is more than the {total} slots "
                f"({sum(source_layers)} layers x {space.repeats} repeats); lower it or raise repeats"
            )
        include = SearchedParam(param="include", granularity="global", low=0.0, high=1.0)
        scale = SearchedParam(param="scale", granularity="global", low=space.scale_low, high=space.scale_high)
        genes = []
        for slot, (source, layer) in enumerate(self.slots):
            genes.append(Gene(f"slot{slot}.include", include, source, (layer,), None))
            if space.searches_scales:
                genes.append(Gene(f"slot{slot}.scale", scale, source, (layer,), None))
        self.genes = genes

    def kept_slots(self, values: Mapping[str, float]) -> list[int]:
        """The slots a genome keeps, in order, after the depth guards."""
        include = [float(values[f"slot{slot}.include"]) for slot in range(len(self.slots))]
        kept = {slot for slot, value in enumerate(include) if value > 0.5}
        by_value = sorted(range(len(include)), key=lambda slot: (-include[slot], slot))
        if len(kept) < self.space.min_depth:
            kept.update([slot for slot in by_value if slot not in kept][: self.space.min_depth - len(kept)])
        if len(kept) > self.max_depth:
            kept = set([slot for slot in by_value if slot in kept][: self.max_depth])
        return sorted(kept)

    def decode(self, values: Mapping[str, float]) -> StackRecipe:
        layers = []
        for slot in self.kept_slots(values):
            source, layer = self.slots[slot]
            scale = float(values[f"slot{slot}.scale"]) if self.space.searches_scales else self.space.scale_low
            layers.append(StackLayer(source=source, layer=layer, scale=scale))
        return StackRecipe(sources=self.space.sources, embeddings=self.space.embeddings, layers=layers)

    def encode(self, stack: StackRecipe) -> dict[str, float]:
        """Gene values that decode to `stack`: each of its layers takes the first free slot of that layer
        after the previous one's. UsageError when the stack does not fit this layout (order, sources,
        repeats)."""
        if stack.sources != self.space.sources:
            raise UsageError(
                "a seed stack recipe must list the same sources, in the same order, as the search"
            )
        values = {}
        for slot in range(len(self.slots)):
            values[f"slot{slot}.include"] = EXCLUDED
            if self.space.searches_scales:
                values[f"slot{slot}.scale"] = min(self.space.scale_high, max(self.space.scale_low, 1.0))
        slot = 0
        for position, layer in enumerate(stack.layers):
            while slot < len(self.slots) and self.slots[slot] != (layer.source, layer.layer):
                slot += 1
            if slot == len(self.slots):
                raise UsageError(
                    f"the seed stack's layer {position} (source {layer.source}, layer {layer.layer}) has no "
                    f"slot left in this search's layout of {self.space.repeats} repeats"
                )
            values[f"slot{slot}.include"] = INCLUDED
            if self.space.searches_scales:
                values[f"slot{slot}.scale"] = min(
                    self.space.scale_high, max(self.space.scale_low, layer.scale)
                )
            slot += 1
        return values

    def source_stack(self, source: int, layers: int) -> StackRecipe:
        """The stack of one source as it is: its layers in order, scale 1 (clipped to the scale bounds)."""
        scale = min(self.space.scale_high, max(self.space.scale_low, 1.0))
        return StackRecipe(
            sources=self.space.sources,
            embeddings=self.space.embeddings,
            layers=[StackLayer(source=source, layer=layer, scale=scale) for layer in range(layers)],
        )
