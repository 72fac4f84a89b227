"""Compiled merge kernels: one tensor's whole merge in one loop that reads each source once and writes once.

The block path (methods/blocks.py) runs a dozen torch operations per block of a tensor, each one more pass
over the block. torch.compile (inductor) fuses the same operations into one loop, which on CPU is 2x faster for
task arithmetic and over 10x for TIES and DARE (experiments/bench_merge.py). The kernels run the block path's
float32 operations in the same order, so the two agree up to float32 rounding (a compiler may fuse a multiply
and an add into one rounding); their masks are identical.

A kernel merges a list of tensors of one size in one call (`run_many`; the engine plans each tensor's call,
KernelCall, and runs them GROUP_SIZE at a time), because every call has a cost of its own besides its work.

Compiling costs seconds to a minute per method, number of sources and number of tensors per call, once per
process (torch caches the compiled code on disk across processes), so the engine uses these kernels for large
models only (its `kernels` setting). When compiling fails (no C++ compiler, say), one warning says so and
every merge of the process computes by blocks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from evomerge.methods.counter_random import mix32

_MASK32 = 0xFFFFFFFF
#: Tensors of this many elements or more index them in int64 in masked_mix; smaller ones in int32.
WIDE_FROM_ELEMENTS = 1 << 31


def _store(out: torch.Tensor, checksum: torch.Tensor, value: torch.Tensor) -> None:
    """out = value in out's dtype, and checksum = the float32 sum of what was stored: in the same loop, so
    the engine's check for NaN and Inf costs no pass of its own."""
    stored = value.to(out.dtype)
    out.copy_(stored)
    checksum.copy_(stored.float().sum())


def _weighted_sum(
    out: torch.Tensor, checksum: torch.Tensor, tensors: list[torch.Tensor], coefficients: torch.Tensor
) -> None:
    """out = sum_i coefficients[i] * tensors[i], accumulated in float32 in order."""
    total = tensors[0].float() * coefficients[0]
    for i in range(1, len(tensors)):
        total = total + tensors[i].float() * coefficients[i]
    _store(out, checksum, total)


def _kept(size: torch.Tensor, index: torch.Tensor, threshold: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """MagnitudeCut.mask: above the threshold, or equal to it at an index <= last (NaN counts as above)."""
    return ~((size < threshold) | ((size == threshold) & (index > last)))


def _masked_mix(
    out: torch.Tensor,
    checksum: torch.Tensor,
    base: torch.Tensor,
    sources: list[torch.Tensor],
    numbers: torch.Tensor,
    last_indices: torch.Tensor,
    draws: torch.Tensor,
    magnitude: bool,
    band: bool,
    random: bool,
    consensus: bool,
    normalize: bool,
    wide: bool,
) -> None:
    """Sparsify each delta (`magnitude`: keep its upper cut, minus its lower cut when `band`; `random`: keep
    draws below the limit), weight it by its factor, mix (sum, or TIES' sign election and disjoint sum divided
    by the agreeing weights when `normalize`), and write base + scale * mix: task_arithmetic.py's definition.

    Per source i: `numbers` (float32) holds rows upper threshold, lower threshold, factor, weight, and scale
    (repeated), `last_indices` the upper and lower cuts' last indices, `draws` (int32) the draw key and the
    largest kept draw (limit - 1, so that keeping everything, 2^31 - 1, fits in int32: inductor compares an
    int32 draw with an int64 limit of 2^31 wrongly). Three tensors rather than nine: torch.compile checks every
    tensor argument on every call. Element indices (and the last indices) are int32 unless `wide` (a tensor of
    2^31 or more elements): half the work of int64 vectors."""
    upper_t, lower_t, factors, weights, scale = numbers[0], numbers[1], numbers[2], numbers[3], numbers[4, 0]
    upper_i, lower_i = last_indices[0], last_indices[1]
    keys, last_draws = draws[0], draws[1]
    b = base.float()
    index = torch.arange(b.shape[0], dtype=torch.int64 if wide else torch.int32, device=b.device)
    hashed = (mix32((index & _MASK32).to(torch.int32)) if wide else mix32(index)) if random else None
    weighted = []
    for i, source in enumerate(sources):
        delta = source.float() - b
        if magnitude:
            size = delta.abs()
            keep = _kept(size, index, upper_t[i], upper_i[i])
            if band:
                keep = keep & ~_kept(size, index, lower_t[i], lower_i[i])
            delta = torch.where(keep, delta, 0.0)
        if random:
            draw = (mix32(hashed ^ keys[i]) >> 1) & 0x7FFFFFFF
            delta = torch.where(draw <= last_draws[i], delta, 0.0)
        weighted.append(delta * factors[i])
    if not consensus:  # factors are the final coefficients
        total = b
        for d in weighted:
            total = total + d
        _store(out, checksum, total)
        return
    summed = weighted[0]
    for d in weighted[1:]:
        summed = summed + d
    elected = torch.where(summed >= 0, 1.0, -1.0)  # a zero sum elects +1
    mixed, divisor = None, None
    for i, d in enumerate(weighted):
        # d where it agrees (NaN kept), else 0: the block path's s * max(s * d, 0), with the same bits, in fewer
        # vector operations than the clamp (a NaN-propagating max) and the multiplication back by s
        signed = d * elected
        agreeing = torch.where(signed <= 0, 0.0, d)
        mixed = agreeing if mixed is None else mixed + agreeing
        if normalize:
            counted = torch.where(signed > 0, weights[i], 0.0)
            divisor = counted if divisor is None else divisor + counted
    if normalize:
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    _store(out, checksum, mixed * scale + b)


def _weighted_sums(
    outs: list[torch.Tensor], checksums: torch.Tensor, inputs: list[list[torch.Tensor]], params: list[torch.Tensor]
) -> None:
    """_weighted_sum of each tensor t: params[0][t] are its coefficients."""
    for t, out in enumerate(outs):
        _weighted_sum(out, checksums[t], inputs[t], params[0][t])


def _masked_mixes(
    outs: list[torch.Tensor],
    checksums: torch.Tensor,
    inputs: list[list[torch.Tensor]],
    params: list[torch.Tensor],
    **flags: bool,
) -> None:
    """_masked_mix of each tensor t: inputs[t] are its base and sources, params its numbers, last indices and
    draws (row t of each)."""
    for t, out in enumerate(outs):
        _masked_mix(out, checksums[t], inputs[t][0], inputs[t][1:], params[0][t], params[1][t], params[2][t], **flags)


_KERNELS: dict[str, Callable[..., None]] = {"weighted_sum": _weighted_sums, "masked_mix": _masked_mixes}
#: Inductor's settings for the kernels, given with each compile: parallelize every loop (inductor would judge by
#: the size of the first tensor it saw, which may be small); round a cast to a narrower dtype where it is cast
#: back (inductor would skip the round trip, so `_store`'s checksum would miss a float16 overflow).
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True, "emulate_precision_casts": True}
#: Most calls the engine runs as one (run_many), and the numbers of calls it runs as one are powers of two up to
#: this: each call of a compiled kernel costs 0.3-0.5 ms on CPU on top of its work (experiments/
#: bench_kernel_calls.py), while compiling a kernel for n calls takes about 2 s per call, once per number.
GROUP_SIZE = 4
_compiled: dict[str, Callable[..., None]] = {}
_compiled_for: set[tuple] = set()  # the signatures (see KernelCall.signature) that compiled in this process
_unavailable: list[str] = []  # why compiled kernels cannot run in this process, once known


@dataclass(frozen=True)
class KernelCall:
    """One tensor's merge by a kernel, planned: `run_many` runs it, alone or with calls like it in one call.

    `inputs` are read elementwise (each with `out`'s number of elements, contiguous); `params` are small tables
    of numbers, each a nested list and its dtype (the kernel sees them as tensors); `flags` are the kernel's
    compile-time switches."""

    kernel: str
    out: torch.Tensor
    inputs: list[torch.Tensor]
    params: tuple[tuple[list, torch.dtype], ...]
    flags: tuple[tuple[str, bool], ...] = ()

    def signature(self) -> tuple:
        """What the compiled code depends on besides the tensors' sizes: the kernel, its flags, the number,
        dtypes and devices of its tensors, and whether `out` has at most one element (a size torch.compile
        specializes)."""
        return (
            self.kernel, self.flags, self.out.dtype, self.out.device, self.out.numel() <= 1,
            tuple((t.dtype, t.device) for t in self.inputs), tuple(dtype for _, dtype in self.params),
        )

    def group(self) -> tuple:
        """Calls with equal groups can run as one: the same signature and number of elements."""
        return self.signature(), self.out.numel()


def usable(out: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    """Whether a kernel can merge `tensors` into `out`: all contiguous on one device, and kernels compile here
    (as far as is known yet)."""
    return not _unavailable and all(t.is_contiguous() and t.device == out.device for t in [out, *tensors])


def run(call: KernelCall, checksum: torch.Tensor | None = None) -> bool:
    """Run one planned call; `checksum` as in run_many (a 0-d tensor)."""
    return run_many([call], checksum.view(1) if checksum is not None else None)


def run_many(calls: list[KernelCall], checksums: torch.Tensor | None = None) -> bool:
    """Run calls of one group (KernelCall.group; see `usable`) as one call of their compiled kernel, and the
    float32 sum of what each stored into `checksums[t]` (a float32 tensor of one entry per call, when given);
    False, with nothing written, when compiled kernels turn out not to run here."""
    if _unavailable:
        return False
    first = calls[0]
    if first.kernel not in _compiled:
        _compiled[first.kernel] = torch.compile(_KERNELS[first.kernel], dynamic=True, options=_INDUCTOR_OPTIONS)
    device = first.out.device
    outs = [flat(call.out) for call in calls]
    inputs = [[flat(t) for t in call.inputs] for call in calls]
    params = [
        torch.tensor([call.params[j][0] for call in calls], dtype=dtype, device=device)
        for j, (_, dtype) in enumerate(first.params)
    ]
    sums = checksums if checksums is not None else torch.empty(len(calls), dtype=torch.float32, device=device)
    signature = (first.signature(), len(calls))
    try:
        with torch.no_grad():
            if signature in _compiled_for:
                _compiled[first.kernel](outs, sums, inputs, params, **dict(first.flags))
            else:
                with _recompile_settings():
                    _compiled[first.kernel](outs, sums, inputs, params, **dict(first.flags))
                _compiled_for.add(signature)
    except Exception as error:  # noqa: BLE001 - inductor's failures have many types; any one means "use blocks"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        _unavailable.append(reason)
        warnings.warn(
            f"evomerge: compiled merge kernels cannot run here ({reason}); merging block by block instead "
            "(slower; set kernels: blocks in the run config to skip compiling)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


@contextlib.contextmanager
def _recompile_settings() -> Iterator[None]:
    """Dynamo's settings around a call that may compile: each method, number of sources and number of calls
    run as one compiles anew, so allow many recompiles, and raise rather than run the kernel uncompiled
    (whole-tensor temporaries) past them. Set by hand, not by config.patch (about 0.1 ms), and only around calls
    of a new signature: setting them costs about 50 us, and a candidate runs hundreds of tensors."""
    dynamo = torch._dynamo.config
    saved = dynamo.recompile_limit, dynamo.accumulated_recompile_limit, dynamo.fail_on_recompile_limit_hit
    dynamo.recompile_limit, dynamo.accumulated_recompile_limit = 512, max(saved[1], 1024)
    dynamo.fail_on_recompile_limit_hit = True
    try:
        yield
    finally:
        dynamo.recompile_limit, dynamo.accumulated_recompile_limit, dynamo.fail_on_recompile_limit_hit = saved


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor as a 1-D tensor over the same memory that is not a view of it (the tensor itself
    when it is one): torch.compile guards on a view's base, so views of 1-D and 2-D tensors would compile the
    kernel twice."""
    if tensor.dim() == 1 and tensor._base is None:
        return tensor
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))


def weighted_sum_call(out: torch.Tensor, tensors: list[torch.Tensor], coefficients: list[float]) -> KernelCall:
    """The planned call out = sum_i c_i * t_i (float32 inside)."""
    return KernelCall("weighted_sum", out, tensors, ((coefficients, torch.float32),))


def weighted_sum(
    out: torch.Tensor, tensors: list[torch.Tensor], coefficients: list[float], checksum: torch.Tensor | None = None
) -> bool:
    """out = sum_i c_i * t_i (float32 inside) by a compiled kernel, and `checksum` as in `run`; False when it
    cannot run (nothing written)."""
    return run(weighted_sum_call(out, tensors, coefficients), checksum)
