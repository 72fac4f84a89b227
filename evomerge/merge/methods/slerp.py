"""Spherical linear interpolation between two models (Shoemake 1985; popularized for LLMs by mergekit)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from evomerge.merge.methods.registry import MergeMethod, ParamSpec, register

#: Above this |cos| the two tensors are treated as colinear and interpolated linearly (sin(theta) ~ 0).
COLINEAR_COSINE = 0.9995


@dataclass(frozen=True)
class SlerpSettings:
    """One tensor's SLERP: the interpolation position t."""

    t: float


def slerp(base: torch.Tensor | None, sources: list[torch.Tensor], settings: SlerpSettings) -> torch.Tensor:
    """Interpolate from sources[0] (t = 0) to sources[1] (t = 1) along the great circle, in float32.

    With v0, v1 the two tensors flattened and cos(theta) = <v0, v1> / (|v0| |v1|) clamped to [-1, 1]:
    result = sin((1 - t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1,
    and result = (1 - t) v0 + t v1 where |cos(theta)| > 0.9995 or either tensor is zero.
    """
    t = settings.t
    v0, v1 = sources[0].float(), sources[1].float()
    norms = v0.norm() * v1.norm()
    cosine = float((v0.flatten() @ v1.flatten()) / norms) if norms > 0 else 1.0
    cosine = max(-1.0, min(1.0, cosine))
    if abs(cosine) > COLINEAR_COSINE:
        return (1 - t) * v0 + t * v1
    theta = math.acos(cosine)
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) / sin_theta) * v0 + (math.sin(t * theta) / sin_theta) * v1


SLERP = register(
    MergeMethod(
        name="slerp",
        function=slerp,
        params=(
            ParamSpec("t", "global", 0.5, "interpolation position, 0 = first source", low=0.0, high=1.0),
        ),
        needs_base=False,
        settings=SlerpSettings,
        min_sources=2,
        max_sources=2,
        reference="https://dl.acm.org/doi/10.1145/325165.325242",
    )
)
