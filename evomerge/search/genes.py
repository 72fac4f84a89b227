"""Genes: the coordinates an optimizer moves, shared by every search space.

A gene has bounds (optionally on a log scale) and maps a point u of the unit cube to a value
(`value`: low + u (high - low), or geometrically for `log`) and back (`unit`). A coordinate outside [0, 1] is
first reflected back into it (1.2 -> 0.8, -0.3 -> 0.3): an unbounded optimizer such as CMA-ES then sees no
flat plateau past the bounds. A `GeneSpace` (a search space's genome) turns gene values into a candidate
(`decode`) and a candidate into gene values (`encode`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from evomerge.merge.methods.registry import ParamSpec

Granularity = Literal["global", "layer", "group", "kind"]


class SearchedParam(BaseModel):
    """One method parameter the search varies: a gene per value of the granularity (and per source, for a
    parameter each source has its own value of), between `low` and `high`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    param: str = Field(description="the name of a parameter of the recipe's method")
    granularity: Granularity = Field(
        "layer",
        description="one value for every tensor (global), per layer, per group of group_size layers, or per "
        "module kind (embedding, attention, mlp, norm, head)",
    )
    group_size: int = Field(1, ge=1, description="consecutive layers per gene, with granularity group")
    low: float = Field(description="the lowest value searched")
    high: float = Field(description="the highest value searched (at least low)")
    log: bool = Field(False, description="search between low and high on a log scale (needs low > 0)")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> SearchedParam:
        if self.low > self.high:
            raise ValueError(f"bounds of '{self.param}': low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"bounds of '{self.param}': a log scale needs low > 0, got {self.low}")
        return self


@dataclass(frozen=True)
class Gene:
    """One coordinate of the search space and where its value lands in the recipe."""

    name: str
    param: SearchedParam
    source: int | None
    layers: tuple[int, ...] | None
    kind: str | None
    spec: ParamSpec | None = None  # the method's declaration of the parameter, for its grid

    def value(self, unit: float) -> float:
        u = reflect_into_unit(unit)
        low, high = self.param.low, self.param.high
        if self.param.log:
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        else:
            value = low + u * (high - low)
        return min(high, max(low, value))

    def on_grid(self, value: float) -> float:
        """`value` on the grid the method declares for the parameter, if any (ParamSpec.on_grid)."""
        return self.spec.on_grid(value, self.param.low, self.param.high) if self.spec is not None else value

    def unit(self, value: float) -> float:
        low, high = self.param.low, self.param.high
        if high == low:
            return 0.5
        if self.param.log:
            u = (math.log(max(value, low)) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            u = (value - low) / (high - low)
        return min(1.0, max(0.0, u))


class GeneSpace:
    """What the loop needs of a search space: its genes, `decode` (gene values -> candidate) and `encode`
    (candidate -> gene values); the unit-cube views follow from them."""

    genes: list[Gene]

    def decode(self, values: Mapping[str, float]) -> Any:
        raise NotImplementedError

    def encode(self, candidate: Any) -> dict[str, float]:
        raise NotImplementedError

    @property
    def dimension(self) -> int:
        return len(self.genes)

    @property
    def names(self) -> list[str]:
        return [gene.name for gene in self.genes]

    def decode_unit(self, unit: Sequence[float]) -> Any:
        """The candidate of a point of the unit cube, one coordinate per gene in `names` order."""
        if len(unit) != self.dimension:
            raise ValueError(f"expected {self.dimension} coordinates, got {len(unit)}")
        return self.decode({gene.name: gene.value(u) for gene, u in zip(self.genes, unit)})

    def encode_unit(self, candidate: Any) -> list[float]:
        values = self.encode(candidate)
        return [gene.unit(values[gene.name]) for gene in self.genes]


def reflect_into_unit(u: float) -> float:
    """u folded into [0, 1] by reflection at 0 and 1 (a triangle wave of period 2)."""
    folded = math.fmod(abs(u), 2.0)
    return folded if folded <= 1.0 else 2.0 - folded
