"""Linear merge: a weighted average of the sources (Wortsman et al. 2022, https://arxiv.org/abs/2203.05482)."""

from __future__ import annotations

import torch

from evomerge.methods.blocks import block_size, write_blocks
from evomerge.methods.params import WEIGHT, normalize_param
from evomerge.methods.registry import MergeMethod, register


def linear(
    base: torch.Tensor | None,
    sources: list[torch.Tensor],
    *,
    weight: list[float],
    normalize: bool = True,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """result = sum_i w_i * x_i, divided by sum_i w_i when `normalize` (unless |sum_i w_i| < 1e-8); float32.

    The base, if the recipe names one, takes no part. The sum runs in source order, in float32. The result is
    written into `out` when given (in its dtype), computed `block` elements at a time (see methods/blocks.py).
    """
    flats = [source.reshape(-1) for source in sources]
    total = float(sum(weight))
    divide = normalize and abs(total) >= 1e-8
    work = torch.empty(2, block_size(sources[0], block), dtype=torch.float32, device=sources[0].device)

    def merged_block(start: int, stop: int) -> torch.Tensor:
        result, term = work[0, : stop - start].zero_(), work[1, : stop - start]
        for w, source in zip(weight, flats, strict=True):
            term.copy_(source[start:stop]).mul_(w)
            result.add_(term)
        return result.div_(total) if divide else result

    return write_blocks(sources[0], merged_block, out, block)


LINEAR = register(
    MergeMethod(
        name="linear",
        function=linear,
        params=(WEIGHT, normalize_param(True)),
        needs_base=False,
        reference="https://arxiv.org/abs/2203.05482",
        writes_into=True,
    )
)
