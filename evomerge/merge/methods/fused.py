"""Compiled merge kernels: one tensor's whole merge in one loop that reads each source once and writes once.

The block path (methods/blocks.py) runs a dozen torch operations per block of a tensor, each one more pass
over the block. torch.compile (inductor) fuses the same operations into one loop, which on CPU is 2x faster
for task arithmetic and over 10x for TIES and DARE (experiments/bench_merge.py). The kernels run the block
path's float32 operations in the same order, so the two agree up to float32 rounding (a compiler may fuse a
multiply and an add into one rounding); their masks are identical.

A kernel merges tensors of one size that lie back to back in memory as the rows of one call (`run_many`; the
engine plans each tensor's call, KernelCall, and lays out its models so, evomerge/merge/layout.py), because
every call has a cost of its own besides its work.

Compiling costs seconds per method, number of sources and one row or more, once per process (torch caches the
compiled code on disk across processes), so the engine uses these kernels for large models only (its `kernels`
setting). When compiling fails (no C++ compiler, say), one warning says so and every merge of the process
computes by blocks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from evomerge.merge.methods.counter_random import index_hash, mix32

_MASK32 = 0xFFFFFFFF
#: Tensors of this many elements or more index them in int64 in masked_mix; smaller ones in int32.
WIDE_FROM_ELEMENTS = 1 << 31
#: Rows of up to this many elements take DARE's index hash (counter_random.index_hash) from a tensor computed
#: once per row length and kept (4 bytes per element: a few MB for a model's few row lengths), rather than
#: hashing the indices in every call: of a DARE-TIES kernel's S + 1 hashes per element that is one, but a
#: third of its time on CPU (1.35 to 0.90 ns per element, 3 sources). Longer rows (embeddings) hash in the
#: kernel.
KEPT_HASH_ELEMENTS = 1 << 23
_kept_hashes: dict[tuple[int, torch.device], torch.Tensor] = {}


def _store(out: torch.Tensor, checksums: torch.Tensor, value: torch.Tensor) -> None:
    """out = value in out's dtype, and checksums = each row's float32 sum of what was stored: in the same
    loop, so the engine's check for NaN and Inf costs no pass of its own."""
    stored = value.to(out.dtype)
    out.copy_(stored)
    checksums.copy_(stored.float().sum(dim=-1))


def _weighted_sum(
    out: torch.Tensor, checksums: torch.Tensor, tensors: list[torch.Tensor], coefficients: torch.Tensor
) -> None:
    """Row by row, out = sum_i coefficients[:, i] * tensors[i], accumulated in float32 in order."""
    total = tensors[0].float() * coefficients[:, 0:1]
    for i in range(1, len(tensors)):
        total = total + tensors[i].float() * coefficients[:, i : i + 1]
    _store(out, checksums, total)


def _kept(
    size: torch.Tensor, index: torch.Tensor, threshold: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """MagnitudeCut.mask: above the threshold, or equal to it at an index <= last (NaN counts as above)."""
    return ~((size < threshold) | ((size == threshold) & (index > last)))


def _masked_mix(
    out: torch.Tensor,
    checksums: torch.Tensor,
    inputs: list[torch.Tensor],
    numbers: torch.Tensor,
    last_indices: torch.Tensor,
    draws: torch.Tensor,
    hashed_index: torch.Tensor | None,
    switches: MixSwitches,
) -> None:
    """Row by row (each row one tensor; `inputs` are the base and the sources): sparsify each delta (by
    magnitude: keep its upper cut, minus its lower cut in a band; by draws: keep draws below the limit),
    weight it by its factor, mix (sum, or TIES' sign election and disjoint sum, divided by the agreeing
    weights when normalizing), and write base + scale * mix: task_arithmetic.py's definition. `switches` say
    which of these steps run (MixSwitches).

    Per row and source i: `numbers` (float32, [rows, 5, sources]) holds the upper threshold, lower threshold,
    factor, weight, and scale (repeated), `last_indices` ([rows, 2, sources]) the upper and lower cuts' last
    indices, `draws` (int32, [rows, 2, sources]) the draw key and the largest kept draw (limit - 1, so that
    keeping everything, 2^31 - 1, fits in int32: inductor compares an int32 draw with an int64 limit of 2^31
    wrongly). Three tensors rather than nine: torch.compile checks every tensor argument on every call.
    Element indices (within a row) and the last indices are int32 unless `wide` is on (rows of 2^31 or more
    elements): half the work of int64 vectors. A source that keeps its whole task vector has the cut (0, n)
    and the largest kept draw 2^31 - 1, which keep everything with `magnitude` and `random` on as well (see
    MixSwitches.group).
    `hashed_index`: counter_random.index_hash of the row's elements, when kept (see KEPT_HASH_ELEMENTS); else
    the kernel hashes the indices itself."""
    upper_t, lower_t, factors, weights, scale = (
        numbers[:, 0],
        numbers[:, 1],
        numbers[:, 2],
        numbers[:, 3],
        numbers[:, 4, 0:1],
    )
    upper_i, lower_i = last_indices[:, 0], last_indices[:, 1]
    keys, last_draws = draws[:, 0], draws[:, 1]
    sources = inputs[1:]
    b = inputs[0].float()
    index = torch.arange(b.shape[-1], dtype=torch.int64 if switches.wide else torch.int32, device=b.device)
    if switches.random and hashed_index is None:
        hashed_index = mix32((index & _MASK32).to(torch.int32)) if switches.wide else mix32(index)
    weighted = []
    for i, source in enumerate(sources):
        column = slice(i, i + 1)  # source i's number of each row, as a column: it broadcasts along the row
        delta = source.float() - b
        if switches.magnitude:
            size = delta.abs()
            keep = _kept(size, index, upper_t[:, column], upper_i[:, column])
            if switches.band:
                keep = keep & ~_kept(size, index, lower_t[:, column], lower_i[:, column])
            delta = torch.where(keep, delta, 0.0)
        if switches.random:
            draw = (mix32(hashed_index ^ keys[:, column]) >> 1) & 0x7FFFFFFF
            delta = torch.where(draw <= last_draws[:, column], delta, 0.0)
        weighted.append(delta * factors[:, column])
    if not switches.consensus:  # factors are the final coefficients
        total = b
        for d in weighted:
            total = total + d
        _store(out, checksums, total)
        return
    summed = weighted[0]
    for d in weighted[1:]:
        summed = summed + d
    elected = torch.where(summed >= 0, 1.0, -1.0)  # a zero sum elects +1
    mixed, divisor = None, None
    for i, d in enumerate(weighted):
        # d where it agrees (NaN kept), else 0: the block path's s * max(s * d, 0), with the same bits, in
        # fewer vector operations than the clamp (a NaN-propagating max) and the multiplication back by s
        signed = d * elected
        agreeing = torch.where(signed <= 0, 0.0, d)
        mixed = agreeing if mixed is None else mixed + agreeing
        if switches.normalize:
            counted = torch.where(signed > 0, weights[:, i : i + 1], 0.0)
            divisor = counted if divisor is None else divisor + counted
    if switches.normalize:
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    _store(out, checksums, mixed * scale + b)


_KERNELS: dict[str, Callable[..., None]] = {"weighted_sum": _weighted_sum, "masked_mix": _masked_mix}
#: Inductor's settings for the kernels, given with each compile: parallelize every loop (inductor would judge
#: by the size of the first tensor it saw, which may be small); round a cast to a narrower dtype where it is
#: cast back (inductor would skip the round trip, so `_store`'s checksum would miss a float16 overflow).
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True, "emulate_precision_casts": True}
_compiled: dict[str, Callable[..., None]] = {}
_unavailable: list[str] = []  # why compiled kernels cannot run in this process, once known


@dataclass(frozen=True)
class MixSwitches:
    """masked_mix's compile-time switches: which steps of the merge its compiled code holds."""

    magnitude: bool = False  # keep each delta's entries inside its upper magnitude cut
    band: bool = False  # ... and outside its lower cut (breadcrumbs' outliers)
    random: bool = False  # keep each delta's entries whose draw is below its limit (DARE)
    consensus: bool = False  # TIES' sign election and disjoint sum (else: factors are the final coefficients)
    normalize: bool = False  # divide the disjoint sum by the agreeing sources' weights
    wide: bool = False  # index the elements in int64 (rows of WIDE_FROM_ELEMENTS or more)

    def group(self) -> MixSwitches:
        """These switches with those off whose "off" a call's params stand for as well (a cut that keeps all,
        a draw limit that keeps all): calls that differ only in them run as rows of one call with them on
        (`for_rows`), so a search that gives some layers a density of 1 still merges each size in one call."""
        return replace(self, magnitude=False, random=False)

    @staticmethod
    def for_rows(switches: list[MixSwitches]) -> MixSwitches:
        """The switches of one call over rows of one group: the first's, with `magnitude` and `random` on
        where any row has them on."""
        return replace(
            switches[0], magnitude=any(s.magnitude for s in switches), random=any(s.random for s in switches)
        )


@dataclass(frozen=True)
class KernelCall:
    """One tensor's merge by a kernel, planned: `run_many` runs it, alone or as a row of one call with others.

    `inputs` are read elementwise (each with `out`'s number of elements, contiguous); `params` are small
    tables of numbers, each a nested list and its dtype (the kernel sees them as tensors, one row per call);
    `switches` are masked_mix's compile-time switches (None for weighted_sum, which has none)."""

    kernel: str
    out: torch.Tensor
    inputs: list[torch.Tensor]
    params: tuple[tuple[list, torch.dtype], ...]
    switches: MixSwitches | None = None

    def group(self) -> tuple:
        """Calls with equal groups can run as rows of one call: the same kernel, switches (but for those that
        can be on for all, MixSwitches.group), number, dtypes and devices of tensors, and element count."""
        return (
            self.kernel,
            self.switches.group() if self.switches is not None else None,
            self.out.dtype,
            self.out.device,
            tuple((t.dtype, t.device) for t in self.inputs),
            tuple(dtype for _, dtype in self.params),
            self.out.numel(),
        )


def usable(out: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    """Whether a kernel can merge `tensors` into `out`: all contiguous on one device, and kernels compile here
    (as far as is known yet)."""
    return not _unavailable and all(t.is_contiguous() and t.device == out.device for t in [out, *tensors])


def run(call: KernelCall, checksum: torch.Tensor | None = None) -> bool:
    """Run one planned call; `checksum` as in run_many (a 0-d tensor)."""
    return run_many([call], checksum.view(1) if checksum is not None else None)


def run_many(calls: list[KernelCall], checksums: torch.Tensor | None = None) -> bool:
    """Run calls of one group (KernelCall.group; see `usable`): calls whose tensors lie back to back in
    memory, in the order of their targets (rows of one buffer each, as evomerge/merge/layout.py lays them
    out), as one call of their compiled kernel over those rows; any other alone. The float32 sum of what each
    call stored goes to `checksums[t]` (a float32 tensor of one entry per call, when given). False when
    compiled kernels turn out not to run here: the calls are then for the block path to merge (those of a run
    compiled before may have been written)."""
    if _unavailable:
        return False
    first = calls[0]
    if first.kernel not in _compiled:
        kernel = _KERNELS[first.kernel]
        _compiled[first.kernel] = torch.compile(kernel, dynamic=True, options=_INDUCTOR_OPTIONS)
    device = first.out.device
    order = sorted(range(len(calls)), key=lambda t: calls[t].out.data_ptr())
    sums = torch.empty(len(calls), dtype=torch.float32, device=device)  # in `order`
    start = 0
    for stop in _row_runs([calls[t] for t in order]):
        if not _run_rows([calls[t] for t in order[start:stop]], sums[start:stop]):
            return False
        start = stop
    if checksums is not None:
        checksums.index_copy_(0, torch.tensor(order, device=device), sums)
    return True


def _row_runs(calls: list[KernelCall]) -> list[int]:
    """Where each run of calls ends (exclusive), runs being calls whose `out` and each input lie right after
    the previous call's, in the same storage."""
    ends = []
    for t in range(1, len(calls)):
        previous, call = calls[t - 1], calls[t]
        if not all(
            _follows(a, b)
            for a, b in zip([previous.out, *previous.inputs], [call.out, *call.inputs], strict=True)
        ):
            ends.append(t)
    return [*ends, len(calls)]


def _follows(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether `after` starts where `before` ends, in the same storage."""
    return (
        after.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()
        and after.storage_offset() == before.storage_offset() + before.numel()
    )


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of n elements each, back to back in one storage, as one [len(tensors), n] tensor over that
    memory that is not a view of any of them (torch.compile guards on a view's base)."""
    first = tensors[0]
    alias = torch.empty(0, dtype=first.dtype, device=first.device)
    return alias.set_(
        first.untyped_storage(), first.storage_offset(), (len(tensors), first.numel()), (first.numel(), 1)
    )


def _run_rows(calls: list[KernelCall], sums: torch.Tensor) -> bool:
    """One compiled call over calls that lie back to back (see run_many), their sums into `sums`."""
    first = calls[0]
    out = _rows([call.out for call in calls])
    inputs = [_rows([call.inputs[i] for call in calls]) for i in range(len(first.inputs))]
    params = [
        torch.tensor([call.params[j][0] for call in calls], dtype=dtype, device=out.device)
        for j, (_, dtype) in enumerate(first.params)
    ]
    extra = {}
    if first.switches is not None:
        switches = MixSwitches.for_rows([call.switches for call in calls])
        extra = {"hashed_index": _kept_hash(first.out.numel(), out.device, switches), "switches": switches}
    try:
        with torch.no_grad(), _recompile_settings():
            _compiled[first.kernel](out, sums, inputs, *params, **extra)
    except Exception as error:  # noqa: BLE001 - inductor's failures have many types; any one means "use blocks"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        _unavailable.append(reason)
        warnings.warn(
            f"evomerge: compiled merge kernels cannot run here ({reason}); merging block by block instead "
            "(slower; set kernels: blocks in the run config to skip compiling)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def _kept_hash(n: int, device: torch.device, switches: MixSwitches) -> torch.Tensor | None:
    """The index hash of rows of n elements for a masked_mix with these switches, kept once made; None where
    the kernel hashes itself (no draws, rows longer than KEPT_HASH_ELEMENTS, or int64 indices)."""
    if not switches.random or switches.wide or n > KEPT_HASH_ELEMENTS:
        return None
    if (n, device) not in _kept_hashes:
        _kept_hashes[n, device] = index_hash(0, n, device)
    return _kept_hashes[n, device]


@contextlib.contextmanager
def _recompile_settings() -> Iterator[None]:
    """Dynamo's settings around every call of a kernel (any call may compile: each method, number of sources,
    one row or more, a kept hash or none, and size ranges inductor specializes, such as rows shorter than
    4097, compile anew, and dynamo counts them all against one function): allow many recompiles, and raise
    rather than run the kernel uncompiled (whole-tensor temporaries) past them. Set by hand: config.patch
    costs about 0.1 ms, this about 0.05 ms, a few times per candidate for a stacked model."""
    dynamo = torch._dynamo.config
    saved = dynamo.recompile_limit, dynamo.accumulated_recompile_limit, dynamo.fail_on_recompile_limit_hit
    dynamo.recompile_limit, dynamo.accumulated_recompile_limit = 512, max(saved[1], 1024)
    dynamo.fail_on_recompile_limit_hit = True
    try:
        yield
    finally:
        dynamo.recompile_limit, dynamo.accumulated_recompile_limit, dynamo.fail_on_recompile_limit_hit = saved


def weighted_sum_call(
    out: torch.Tensor, tensors: list[torch.Tensor], coefficients: list[float]
) -> KernelCall:
    """The planned call out = sum_i c_i * t_i (float32 inside)."""
    return KernelCall("weighted_sum", out, tensors, ((coefficients, torch.float32),))


def weighted_sum(
    out: torch.Tensor,
    tensors: list[torch.Tensor],
    coefficients: list[float],
    checksum: torch.Tensor | None = None,
) -> bool:
    """out = sum_i c_i * t_i (float32 inside) by a compiled kernel, and `checksum` as in `run`; False when it
    cannot run (nothing written)."""
    return run(weighted_sum_call(out, tensors, coefficients), checksum)
