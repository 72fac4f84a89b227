"""Parameter declarations that several methods share, so each is defined (and bounded) once."""

from __future__ import annotations

from evomerge.methods.registry import ParamSpec

WEIGHT = ParamSpec("weight", "source", 1.0, "weight of this source's contribution")
DENSITY = ParamSpec(
    "density", "source", 1.0, "fraction of this source's task vector kept", low=0.0, high=1.0, low_open=True
)
DROP = ParamSpec(
    "drop", "source", 0.0, "DARE drop rate: probability that an entry of the task vector is dropped",
    low=0.0, high=1.0, high_open=True,
)
GAMMA = ParamSpec(
    "gamma", "source", 0.01, "breadcrumbs: fraction of largest-magnitude entries removed as outliers",
    low=0.0, high=1.0, high_open=True,
)
SCALE = ParamSpec("scale", "global", 1.0, "lambda: scale applied to the merged task vector")


def normalize_param(default: bool) -> ParamSpec:
    return ParamSpec(
        "normalize", "global", default, "divide by the sum of the weights that contribute", kind="bool"
    )
