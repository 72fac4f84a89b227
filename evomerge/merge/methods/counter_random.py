"""DARE's random draws as a counter-based hash of (seed, source, element index).

Why not torch's generators: the CPU one draws about 120 M numbers a second on one thread (half of a DARE
candidate's time), and the CPU and CUDA generators give different streams, so a candidate scored on a GPU
would be a different model when exported on a CPU. A hash of the element's index is the same on every device
and for every block size, can be computed inside a fused kernel, and costs a few integer operations per
element.

The hash is Chris Wellons' "lowbias32" (https://nullprogram.com/blog/2018/07/31/), a bijection of 32-bit
integers chosen for low bias on consecutive inputs. Tensors hold the 32 bits in int32: torch's int32
multiplication wraps modulo 2^32 (tests/test_counter_random.py checks it against Python's integers, eager and
compiled), and right shifts are made logical by masking.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
#: Draws are 31-bit integers: entry e is kept with probability `keep` when its draw < floor(keep * 2^31).
DRAW_RANGE = 1 << 31


def mix32_int(x: int) -> int:
    """lowbias32 of a Python integer (taken modulo 2^32), as an unsigned 32-bit integer."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _MULTIPLIERS[0]) & _MASK32
    x ^= x >> 15
    x = (x * _MULTIPLIERS[1]) & _MASK32
    return x ^ (x >> 16)


def _as_int32(x: int) -> int:
    """The signed int32 value with the same 32 bits as unsigned `x`."""
    return x - (1 << 32) if x >= 1 << 31 else x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of every element of an int32 tensor (its bits read as unsigned), elementwise."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _as_int32(_MULTIPLIERS[0])
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _as_int32(_MULTIPLIERS[1])
    return x ^ ((x >> 16) & 0xFFFF)


def source_key(seed: int, source: int) -> int:
    """The key of source `source`'s draws in a tensor whose seed is `seed`, as a signed int32 value."""
    return _as_int32(mix32_int(seed ^ mix32_int(source)))


def index_hash(start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """mix32 of the element indices [start, stop) taken modulo 2^32: shared by every source's draws."""
    if stop <= DRAW_RANGE:
        index = torch.arange(start, stop, dtype=torch.int32, device=device)
    else:  # indices past 2^31 wrap to their low 32 bits
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        index = index.bitwise_and_(_MASK32).to(torch.int32)
    return mix32(index)


def draws(hashed_index: torch.Tensor, key: int | torch.Tensor) -> torch.Tensor:
    """Each element's draw for one source: the top 31 bits of mix32(mix32(e) XOR key), uniform in
    [0, 2^31)."""
    return (mix32(hashed_index ^ key) >> 1) & 0x7FFFFFFF


def keep_limit(keep: float) -> int:
    """Draws below this are kept: floor(keep * 2^31), so an entry is kept with probability `keep` (to within
    2^-31)."""
    return int(keep * DRAW_RANGE)
