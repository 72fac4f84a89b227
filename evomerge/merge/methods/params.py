"""Parameter declarations that several methods share, so each is defined (and bounded) once."""

from __future__ import annotations

from evomerge.merge.methods.magnitude_cut import RANK_GRID
from evomerge.merge.methods.registry import ParamSpec

WEIGHT = ParamSpec("weight", "source", 1.0, "weight of this source's contribution")
# A search proposes densities and gammas on the grid of the magnitude ranks an engine keeps (MagnitudeRanks),
# so its TIES and breadcrumbs cuts are lookups; a recipe may give any value.
DENSITY = ParamSpec(
    "density",
    "source",
    1.0,
    "fraction of this source's task vector kept",
    low=0.0,
    high=1.0,
    low_open=True,
    grid=RANK_GRID,
)
DROP = ParamSpec(
    "drop",
    "source",
    0.0,
    "DARE drop rate: probability that an entry of the task vector is dropped",
    low=0.0,
    high=1.0,
    high_open=True,
)
GAMMA = ParamSpec(
    "gamma",
    "source",
    0.01,
    "breadcrumbs: fraction of largest-magnitude entries removed as outliers",
    low=0.0,
    high=1.0,
    high_open=True,
    grid=RANK_GRID,
)
SCALE = ParamSpec("scale", "global", 1.0, "lambda: scale applied to the merged task vector")


def normalize_param(default: bool) -> ParamSpec:
    return ParamSpec(
        "normalize", "global", default, "divide by the sum of the weights that contribute", kind="bool"
    )
