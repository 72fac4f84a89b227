"""Linear merge: a weighted average of the sources (Wortsman et al. 2022, https://arxiv.org/abs/2203.05482)."""

from __future__ import annotations

import torch

from evomerge.methods.params import WEIGHT, normalize_param
from evomerge.methods.registry import MergeMethod, register


def linear(
    base: torch.Tensor | None,
    sources: list[torch.Tensor],
    *,
    weight: list[float],
    normalize: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """result = sum_i w_i * x_i, divided by sum_i w_i when `normalize` (unless |sum_i w_i| < 1e-8); float32.

    The base, if the recipe names one, takes no part.
    """
    result = torch.zeros(sources[0].shape, dtype=torch.float32, device=sources[0].device)
    for w, source in zip(weight, sources, strict=True):
        result += w * source.float()
    total = float(sum(weight))
    if normalize and abs(total) >= 1e-8:
        result /= total
    return result


LINEAR = register(
    MergeMethod(
        name="linear",
        function=linear,
        params=(WEIGHT, normalize_param(True)),
        needs_base=False,
        reference="https://arxiv.org/abs/2203.05482",
    )
)
