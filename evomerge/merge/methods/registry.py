"""The one registry of merge methods, and what each method declares about its parameters.

A method is a pure function of tensors and parameters. It declares its parameters here (name, whether each
source has its own value or the value is global to the merge, default, bounds), and everything else reads that
declaration: recipe validation, and later the search space. There is no second table of method -> parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from evomerge.errors import UsageError
from evomerge.merge.methods.fused import KernelCall
from evomerge.merge.methods.magnitude_cut import MagnitudeRanks
from evomerge.registry import Registry, suggestion

#: The largest float32, the dtype merges accumulate in: a parameter beyond it cannot even be multiplied in.
FLOAT32_MAX = torch.finfo(torch.float32).max

Scope = Literal["source", "global"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method takes.

    `scope="source"` means every source has its own value (a weight per model); `"global"` means one value for
    the merge (TIES' scale, SLERP's t). Either can still vary by layer and by module kind in a recipe.
    Bounds are closed unless `low_open` / `high_open` say otherwise; `None` means unbounded. A search rounds
    the values it proposes to multiples of 1 / `grid` when one is set (see `on_grid`).
    """

    name: str
    scope: Scope
    default: float | bool
    description: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    kind: Literal["float", "bool"] = "float"
    grid: int | None = None

    def check(self, value: float | bool, where: str) -> None:
        """Raise UsageError if `value` is out of this parameter's bounds (`where`: its place in a recipe)."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"{where}: '{self.name}' must be true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: '{self.name}' must be a number, got {value!r}")
        if abs(value) > FLOAT32_MAX:
            raise UsageError(
                f"{where}: '{self.name}' = {value:g} is beyond float32's range (±{FLOAT32_MAX:.1e}), "
                "in which merges are computed"
            )
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high or math.isnan(value):
            raise UsageError(f"{where}: '{self.name}' = {value} is outside {self.range_text()}")

    def on_grid(self, value: float, low: float, high: float) -> float:
        """`value` rounded to the nearest multiple of 1 / grid within [low, high] (unchanged without a grid,
        or when no multiple lies within the bounds)."""
        if self.grid is None:
            return value
        steps = min(math.floor(high * self.grid), max(math.ceil(low * self.grid), round(value * self.grid)))
        rounded = steps / self.grid
        return rounded if low <= rounded <= high and not (self.low_open and rounded == self.low) else value

    def range_text(self) -> str:
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{low}, {high}{right}"


MergeFunction = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that takes no parameters and draws nothing."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its settings, its function, what it declares, and what it needs.

    One tensor's merge is described by one settings object, `settings_for(params, seed)`: the method's
    `settings` type called with its `fixed` settings (the variant: TIES is task arithmetic with a magnitude
    sparsification and sign consensus), the declared parameters as recipe.resolve_parameters gives them (each
    per-source one a list with one value per source, each global one a scalar), and, for a `seeded` method
    (one that draws random numbers: DARE), `seed`, the tensor's seed. The function is called as
    `function(base, sources, settings)`, where `base` is the base tensor (or None) and `sources` the source
    tensors; it returns the merged tensor in float32. A method that `writes_into` also takes, as keywords,
    `out` (a tensor to write the result into, in its dtype), `block` (elements computed at a time), `compiled`
    (write it with one compiled kernel, methods/fused.py) and `checksum` (see `merge_into`). A method that
    `uses_ranks` also takes `ranks`: each source's MagnitudeRanks (or None), for its magnitude cuts. A method
    with a `kernel_call` can plan its compiled kernel call without running it, called as
    `kernel_call(out, base, sources, settings)` (and `ranks`): see `planned_call`.
    """

    name: str
    function: MergeFunction
    params: tuple[ParamSpec, ...]
    needs_base: bool
    settings: Callable[..., object] = NoSettings
    min_sources: int = 1
    max_sources: int | None = None
    reference: str = ""
    fixed: dict[str, object] = field(default_factory=dict)
    seeded: bool = False
    writes_into: bool = False
    uses_ranks: bool = False
    kernel_call: Callable[..., KernelCall | None] | None = None

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise UsageError(
            f"method '{self.name}' has no parameter '{name}'{suggestion(name, self.param_names())}"
        )

    def param_names(self) -> list[str]:
        return [spec.name for spec in self.params]

    def settings_for(self, params: dict[str, object], seed: int = 0) -> object:
        """One tensor's settings: these parameters (every declared one) and, if seeded, the tensor's seed."""
        seeded = {"seed": seed} if self.seeded else {}
        return self.settings(**self.fixed, **params, **seeded)

    def merge(
        self, base: torch.Tensor | None, sources: Sequence[torch.Tensor], settings: object
    ) -> torch.Tensor:
        """The merged tensor in float32."""
        return self.function(base, list(sources), settings)

    def merge_into(
        self,
        out: torch.Tensor,
        base: torch.Tensor | None,
        sources: Sequence[torch.Tensor],
        settings: object,
        block: int | None = None,
        compiled: bool = False,
        ranks: list[MagnitudeRanks | None] | None = None,
        checksum: torch.Tensor | None = None,
    ) -> None:
        """Write the merge into `out` (in its dtype): the values `merge` returns, rounded to `out`'s dtype.

        A method that `writes_into` computes straight into `out`, by blocks or one compiled kernel; any other
        makes its float32 result first. `ranks` go to a method that `uses_ranks`. `checksum` (a 0-d float32
        tensor), when given, receives the float32 sum of the values written (NaN or Inf when one of them is),
        computed on the way where the method writes into `out`.
        """
        extra = {"ranks": ranks} if self.uses_ranks else {}
        if self.writes_into:
            self.function(
                base,
                list(sources),
                settings,
                out=out,
                block=block,
                compiled=compiled,
                checksum=checksum,
                **extra,
            )
            return
        out.copy_(self.merge(base, sources, settings))
        if checksum is not None:
            checksum.copy_(out.sum(dtype=torch.float32))

    def planned_call(
        self,
        out: torch.Tensor,
        base: torch.Tensor | None,
        sources: Sequence[torch.Tensor],
        settings: object,
        ranks: list[MagnitudeRanks | None] | None = None,
    ) -> KernelCall | None:
        """The compiled kernel call that writes the merge into `out` as `merge_into` would, not run yet
        (fused.run_many runs calls of one size together); None where this method or these tensors have no
        kernel."""
        if self.kernel_call is None:
            return None
        extra = {"ranks": ranks} if self.uses_ranks else {}
        return self.kernel_call(out, base, list(sources), settings, **extra)


_METHODS: Registry[MergeMethod] = Registry("merge method", sorted_names=True)


def register(method: MergeMethod) -> MergeMethod:
    """Add a method to the registry; a name can be registered once."""
    return _METHODS.add(method.name, method)


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`, or a UsageError that lists the names (and the closest one)."""
    return _METHODS.get(name)


def method_names() -> list[str]:
    return _METHODS.names()
