"""Running an elementwise merge block by block, straight into the tensor that receives it.

An elementwise merge computed over a whole tensor makes one float32 temporary per operation, each as large as
the tensor, and every temporary goes through memory. Computed over blocks of a few hundred thousand elements,
the temporaries stay in the CPU's cache and only the sources and the result travel: several times faster on
CPU (experiments/bench_merge.py). The result does not depend on the block size: every operation is
elementwise, so each element goes through the same float32 operations in the same order whatever block it
falls in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Elements per block on CPU: a float32 block is 1 MiB, so a method's few working blocks stay in L2/L3 cache.
CPU_BLOCK = 1 << 18
#: Elements per block on an accelerator: large enough that kernel launches cost nothing next to the work.
DEVICE_BLOCK = 1 << 24

#: Computes the merge of elements [start, stop) of the flattened tensors, in float32 (the tensor it returns
#: may be a working buffer that the next call overwrites).
BlockFunction = Callable[[int, int], torch.Tensor]


def block_size(like: torch.Tensor, block: int | None) -> int:
    """Elements per block for `like`: `block` when given, else the device's default; at most its size."""
    step = block or (CPU_BLOCK if like.device.type == "cpu" else DEVICE_BLOCK)
    return max(1, min(step, like.numel()))


def write_blocks(
    like: torch.Tensor,
    block_function: BlockFunction,
    out: torch.Tensor | None,
    block: int | None,
    checksum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill `out` (a new float32 tensor shaped like `like` when None) with `block_function` over every block.

    `out` may have any floating dtype: each float32 block is rounded into it as it is computed. `checksum` (a
    0-d float32 tensor), when given, receives the float32 sum of the values stored, block by block while each
    is in cache: NaN or Inf when one of them is.
    """
    if out is None:
        out = torch.empty(like.shape, dtype=torch.float32, device=like.device)
    if not out.is_contiguous():  # a view into something else: compute contiguously, then copy once
        out.copy_(write_blocks(like, block_function, None, block))
        if checksum is not None:
            checksum.copy_(out.sum(dtype=torch.float32))
        return out
    flat = out.view(-1)
    size = flat.numel()
    step = block_size(like, block)
    if checksum is not None:
        checksum.zero_()
    for start in range(0, size, step):
        stop = min(size, start + step)
        flat[start:stop].copy_(block_function(start, stop))
        if checksum is not None:
            checksum.add_(flat[start:stop].sum(dtype=torch.float32))
    return out
