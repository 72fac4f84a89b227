"""Which entries of a task vector are its k largest by magnitude, as a cut: a threshold, and the last index
kept among the entries equal to it (of equal magnitudes, the lower indices are kept first).

Two ways to find a cut, both exact:
- `top_cut`: a selection over the tensor, without sorting it (TIES' trim of one tensor, any k);
- `MagnitudeRanks`: the cuts of one task vector at the ranks floor(j n / RANK_GRID), found with one sort (or,
  for a tensor too large to sort, by counting in blocks). The task vectors do not change during a search, so
  an engine keeps these and a candidate's cut is a lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: (start, stop) -> |x - base| over elements [start, stop) in float32 (a buffer the next call may overwrite).
MagnitudeBlock = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class MagnitudeCut:
    """Entries with magnitude > `threshold`, and those equal to it at an index <= `last_index`. A NaN
    magnitude counts as larger than any other (as in torch.sort), so a NaN in a kept range reaches the
    result."""

    threshold: float
    last_index: int

    def mask(self, magnitude: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Which entries of a block of magnitudes (elements start, start + 1, ...) the cut keeps."""
        stop = start + magnitude.numel()
        if self.last_index >= stop - 1:  # every entry equal to the threshold is kept
            return torch.lt(magnitude, self.threshold).logical_not_()
        if self.last_index < start:  # none is
            return torch.le(magnitude, self.threshold).logical_not_()
        index = torch.arange(start, stop, device=magnitude.device)
        dropped = (magnitude < self.threshold) | ((magnitude == self.threshold) & (index > self.last_index))
        return dropped.logical_not_()


#: The cut that keeps nothing.
KEEP_NONE = MagnitudeCut(float("inf"), -1)

#: Magnitudes sampled to bracket a cut: the bracket then holds about 8 / sqrt(this) of a tensor's entries.
CUT_SAMPLE = 1 << 14


def top_cut(
    magnitude_block: MagnitudeBlock, base_flat: torch.Tensor, source_flat: torch.Tensor, step: int, k: int
) -> MagnitudeCut | None:
    """The cut that keeps the k largest magnitudes |x - base| (None: keep all), ties to the lower indices.

    Exact, without sorting the tensor: a strided sample of the magnitudes brackets the k-th largest, one pass
    counts the entries above the bracket and collects those inside it (a few percent), and the k-th largest
    is selected among those. When the sample misled (the count falls outside the bracket), the selection runs
    over all magnitudes instead. On CPU this is several times faster than a sort or top-k of the tensor.
    """
    n = base_flat.numel()
    if k >= n:
        return None
    if k == 0:
        return KEEP_NONE
    stride = max(1, n // CUT_SAMPLE)
    sample = (source_flat[::stride].float() - base_flat[::stride].float()).abs_()
    m = sample.numel()
    position = (n - k) / n * m  # where the k-th largest sits in the ascending sample
    margin = int(3 * m**0.5) + 8
    low_index, high_index = int(position) - margin, int(position) + 1 + margin
    # two selections, not a sort of the sample: kthvalue counts from 1
    low = float(sample.kthvalue(low_index + 1).values) if low_index > 0 else float("-inf")
    high = float(sample.kthvalue(high_index + 1).values) if high_index < m - 1 else float("inf")
    above, inside = 0, []
    for start in range(0, n, step):
        magnitude = magnitude_block(start, min(n, start + step))
        above += int((magnitude > high).sum())
        inside.append(magnitude[(magnitude >= low) & (magnitude <= high)])
    candidates = torch.cat(inside)
    if not above < k <= above + candidates.numel():
        above = 0
        candidates = torch.cat([magnitude_block(s, min(n, s + step)).clone() for s in range(0, n, step)])
    rank = k - above  # the threshold is the rank-th largest candidate
    threshold = float(candidates.kthvalue(candidates.numel() - rank + 1).values)
    ties = k - above - int((candidates > threshold).sum())  # entries equal to the threshold that are kept
    if ties == int((candidates == threshold).sum()):
        return MagnitudeCut(threshold, n - 1)
    return MagnitudeCut(threshold, _tie_index(magnitude_block, n, step, threshold, ties))


def _tie_index(magnitude_block: MagnitudeBlock, n: int, step: int, threshold: float, ties: int) -> int:
    """The index of the ties-th entry (counting from 1, in index order) whose magnitude equals `threshold`."""
    seen = 0
    for start in range(0, n, step):
        equal = magnitude_block(start, min(n, start + step)) == threshold
        count = int(equal.sum())
        if seen + count >= ties:
            return start + int(equal.nonzero()[ties - seen - 1])
        seen += count
    raise AssertionError("fewer ties than counted")


#: Ranks stored per task vector: densities that are multiples of 1 / RANK_GRID cut at a stored rank.
RANK_GRID = 4096


@dataclass(frozen=True)
class MagnitudeRanks:
    """One task vector's cut for every k = floor(j n / RANK_GRID), j = 0 .. RANK_GRID: a threshold and a last
    index per j (the k-th entry of the magnitudes sorted descending, lower indices first among equals)."""

    size: int
    thresholds: torch.Tensor  # float32, RANK_GRID + 1
    last_indices: torch.Tensor  # int64, RANK_GRID + 1

    @classmethod
    def of(cls, base: torch.Tensor, source: torch.Tensor) -> MagnitudeRanks:
        """Sort |source - base| once (a stable radix sort of the float bits: RANKS_BYTES_PER_ELEMENT of
        working memory) and keep the cuts at the grid's ranks."""
        magnitude = (source.reshape(-1).float() - base.reshape(-1).float()).abs_()
        n = magnitude.numel()
        # non-negative floats order as their bits; subtracting from +inf's bits makes the order descending
        # and a stable sort keeps equal magnitudes in index order
        keys = torch.sub(0x7F800000, magnitude.view(torch.int32))
        order = torch.sort(keys, stable=True).indices
        del keys
        ranks = torch.arange(RANK_GRID + 1, dtype=torch.int64) * n // RANK_GRID
        last = order[(ranks - 1).clamp_min(0).to(order.device)].cpu()
        thresholds = magnitude[last.to(magnitude.device)].cpu()
        empty = ranks == 0
        return cls(n, thresholds.masked_fill(empty, float("inf")), last.masked_fill(empty, -1))

    @classmethod
    def counted(cls, base: torch.Tensor, source: torch.Tensor, block: int) -> MagnitudeRanks:
        """The same cuts as `of`, found without sorting, in working memory of COUNTED_BYTES_PER_ELEMENT x
        `block` (plus at most 32 MB) instead of a sort's RANKS_BYTES_PER_ELEMENT x n: for tensors too large to
        sort.

        A radix selection of all the grid's ranks at once. Each magnitude's key is its float bits subtracted
        from 2^31 - 1 (ascending keys: descending magnitudes, NaN first). A pass over the tensor counts the
        keys' high 15 bits, which tells each rank the high bits of its key; a second pass counts the next 8
        bits among the entries whose keys start as some rank's, a third the last 8. A last pass finds, for a
        rank that keeps some but not all of the entries equal to its threshold, the index of the last one
        kept. An entry's group (which rank's key it starts as, so far) is a chain of table lookups, one per
        pass: on CPU, a lookup is several times faster than torch.searchsorted over the ranks' prefixes."""
        base_flat, source_flat = base.reshape(-1), source.reshape(-1)
        n = base_flat.numel()
        # per pass: its shift, width and (group, digit) -> group
        tables: list[tuple[int, int, torch.Tensor]] = []

        def keys(start: int) -> torch.Tensor:
            stop = min(n, start + block)
            magnitude = (source_flat[start:stop].float() - base_flat[start:stop].float()).abs_()
            return torch.sub(0x7FFFFFFF, magnitude.view(torch.int32))

        def groups(part: torch.Tensor) -> torch.Tensor:
            """Each entry's group after the passes so far; one past the last group where it is in none."""
            group = torch.zeros_like(part, dtype=torch.int64)
            for shift, width, table in tables:
                group = table[(group << width) | ((part >> shift) & ((1 << width) - 1))]
            return group

        ranks = torch.arange(RANK_GRID + 1, dtype=torch.int64, device=base.device) * n // RANK_GRID
        key = torch.zeros_like(ranks)  # each rank's key: the high bits found so far
        rank = ranks.clamp_min(1)  # its rank within its group (from 1)
        group, size = torch.zeros_like(ranks), 1  # its group, and how many groups there are
        for shift, width in ((16, 15), (8, 8), (0, 8)):
            counts = ranks.new_zeros((size + 1) << width)
            for start in range(0, n, block):
                part = keys(start)
                counts += torch.bincount(
                    (groups(part) << width) | ((part >> shift) & ((1 << width) - 1)), minlength=counts.numel()
                )
            cumulative = counts[: size << width].cumsum(0)  # group by group: a rank's entry is in its group's
            before = torch.cat([cumulative.new_zeros(1), cumulative])
            target = before[group << width] + rank
            position = torch.searchsorted(cumulative, target)
            rank, equal = target - before[position], counts[position]
            key = (key << width) | (position - (group << width))
            slots, group = position.unique(return_inverse=True)
            table = ranks.new_full((counts.numel(),), len(slots))
            table[slots] = torch.arange(len(slots), device=base.device)
            tables.append((shift, width, table))
            size = len(slots)
        last = torch.full_like(ranks, n - 1)  # every entry equal to the threshold is kept ...
        partial = rank < equal  # ... except at these ranks: the last one kept is the rank-th in index order
        if partial.any():
            wanted, which = rank[partial], group[partial]
            seen = ranks.new_zeros(size)
            found = torch.empty_like(wanted)
            for start in range(0, n, block):
                value = groups(keys(start))
                # entries equal to some rank's threshold, in order
                index = (value < size).nonzero().squeeze(1)
                value = value[index]
                by_value = torch.sort(value, stable=True).indices  # grouped by value, in index order within
                count = torch.bincount(value, minlength=size)
                local = wanted - seen[which]  # the occurrence wanted among this block's (from 1)
                here = (local >= 1) & (local <= count[which])
                first = (count.cumsum(0) - count)[which[here]]
                found[here] = start + index[by_value[first + local[here] - 1]]
                seen += count
            last[partial] = found
        thresholds = torch.sub(0x7FFFFFFF, key).to(torch.int32).view(torch.float32).cpu()
        empty = ranks.cpu() == 0
        return cls(n, thresholds.masked_fill(empty, float("inf")), last.cpu().masked_fill(empty, -1))

    def cut(self, k: int) -> MagnitudeCut | None:
        """The cut keeping the k largest magnitudes if k is one of the stored ranks, else None."""
        first = k * RANK_GRID // self.size
        for j in (first, first + 1):
            if j <= RANK_GRID and j * self.size // RANK_GRID == k:
                thresholds, last_indices = self._on_host
                return MagnitudeCut(float(thresholds[j]), int(last_indices[j]))
        return None

    @functools.cached_property
    def _on_host(self) -> tuple[object, object]:
        """The cuts as numpy arrays over the same memory: indexing one costs 0.1 us, a tensor 5 us, and a TIES
        candidate looks up two cuts per source and tensor."""
        return self.thresholds.numpy(), self.last_indices.numpy()


#: Working memory of MagnitudeRanks.of per element: the magnitudes and their keys, the sorted keys and the
#: order.
RANKS_BYTES_PER_ELEMENT = 20
#: Working memory of MagnitudeRanks.counted per element of its block (the inputs in float32, magnitudes, keys,
#: groups, bins), besides its counts and tables (up to 4098 x 256 of each in int64: 32 MB at most).
COUNTED_BYTES_PER_ELEMENT = 48
#: Blocks smaller than this would cost more in per-block overhead than they save in memory.
COUNTED_MIN_BLOCK = 1 << 16
