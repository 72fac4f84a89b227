"""Linear merge: a weighted average of the sources.

Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evomerge.merge.methods import fused
from evomerge.merge.methods.blocks import block_size, write_blocks
from evomerge.merge.methods.params import WEIGHT, normalize_param
from evomerge.merge.methods.registry import MergeMethod, register


@dataclass(frozen=True)
class LinearSettings:
    """One tensor's linear merge: each source's weight, and whether the weights are divided by their sum."""

    weight: Sequence[float]
    normalize: bool = True

    def coefficients(self) -> list[float]:
        """c_i (see `linear`)."""
        total = float(sum(self.weight))
        if self.normalize and abs(total) >= 1e-8:
            return [w / total for w in self.weight]
        return list(self.weight)


def linear(
    base: torch.Tensor | None,
    sources: list[torch.Tensor],
    settings: LinearSettings,
    *,
    compiled: bool = False,
    out: torch.Tensor | None = None,
    block: int | None = None,
    checksum: torch.Tensor | None = None,
) -> torch.Tensor:
    """result = sum_i c_i * x_i, with c_i = w_i / sum_j w_j when `normalize` (unless |sum_j w_j| < 1e-8), else
    c_i = w_i; float32.

    The base, if the recipe names one, takes no part. Each term is added in source order, in float32 (x_i
    converted exactly, then result + c_i * x_i in one fused step). The result is written into `out` when given
    (in its dtype): by one compiled kernel when `compiled` (methods/fused.py, equal up to float32 rounding),
    else `block` elements at a time (see methods/blocks.py). `checksum`: see write_blocks.
    """
    flats = [source.reshape(-1) for source in sources]
    coefficients = settings.coefficients()
    if (
        compiled
        and out is not None
        and fused.usable(out, sources)
        and fused.weighted_sum(out, sources, coefficients, checksum)
    ):
        return out
    work = torch.empty(block_size(sources[0], block), dtype=torch.float32, device=sources[0].device)

    def merged_block(start: int, stop: int) -> torch.Tensor:
        result = work[: stop - start].zero_()
        for c, source in zip(coefficients, flats, strict=True):
            result.add_(source[start:stop], alpha=c)  # one pass: converts, scales and adds
        return result

    return write_blocks(sources[0], merged_block, out, block, checksum)


def linear_call(
    out: torch.Tensor, base: torch.Tensor | None, sources: list[torch.Tensor], settings: LinearSettings
) -> fused.KernelCall | None:
    """The compiled kernel call that writes linear's merge into `out`, planned but not run; None where no
    kernel can (fused.usable)."""
    if not fused.usable(out, sources):
        return None
    return fused.weighted_sum_call(out, sources, settings.coefficients())


LINEAR = register(
    MergeMethod(
        name="linear",
        function=linear,
        params=(WEIGHT, normalize_param(True)),
        needs_base=False,
        settings=LinearSettings,
        reference="https://arxiv.org/abs/2203.05482",
        writes_into=True,
        kernel_call=linear_call,
    )
)
