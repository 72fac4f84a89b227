"""The genome of the data-flow space: an inclusion gene and a scale gene per slot of the sources' layers.

The sources' layers are laid out in order (every layer of source 0, then of source 1, ...) and the whole
sequence repeated `repeats` times. A slot is kept when its inclusion gene is above 0.5, and the hidden state
entering a kept layer is multiplied by its scale gene. Both are real genes in the unit cube, so CMA-ES and
every Optuna sampler search the same space. Depth guards: a genome that keeps fewer than `min_depth` slots
also keeps the excluded slots with the highest inclusion values until it has `min_depth`; one that keeps more
than `max_depth` drops its lowest. Decoding is therefore total and deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evomerge.errors import UsageError
from evomerge.search.genes import Gene, GeneSpace, SearchedParam
from evomerge.stack.recipe import StackLayer, StackRecipe, StackSpace

INCLUDED, EXCLUDED = 0.75, 0.25  # inclusion values of an encoded stack: a quarter away from the threshold


class StackGenome(GeneSpace):
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
