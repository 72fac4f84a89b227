"""Task arithmetic and its sparsified / sign-consensus variants, as settings of one function.

Task arithmetic (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089), TIES (Yadav et al. 2023,
https://arxiv.org/abs/2306.01708), DARE (Yu et al. 2024, https://arxiv.org/abs/2311.03099) and Model
Breadcrumbs (Davari & Belilovsky 2024, https://arxiv.org/abs/2312.06795) differ only in how each task vector is
sparsified and whether signs are elected before mixing; mergekit's "generalized task arithmetic" showed this.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from evomerge.methods.blocks import block_size, write_blocks
from evomerge.methods.params import DENSITY, DROP, GAMMA, SCALE, WEIGHT, normalize_param
from evomerge.methods.registry import MergeMethod, register

Sparsification = Literal["magnitude", "random", "breadcrumbs"] | None
Consensus = Literal["sign"] | None


def generalized_task_arithmetic(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    *,
    sparsification: Sparsification,
    consensus: Consensus,
    weight: list[float],
    scale: float = 1.0,
    normalize: bool = False,
    density: list[float] | None = None,
    drop: list[float] | None = None,
    gamma: list[float] | None = None,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Merge task vectors: result = base + scale * mix(sparsify(delta_i)), in float32.

    With delta_i = x_i - base and w_i the weight of source i:

    1. Sparsify each delta_i (a 0/1 mask m_i times delta_i):
       - None: keep everything (task arithmetic).
       - "magnitude" (TIES trim): keep the k_i = floor(density_i * n) entries of largest |delta_i| (of equal
         magnitudes, the lower indices first).
       - "random" (DARE): keep each entry independently with probability 1 - drop_i, drawn from `generator`
         (n uniform draws per source with drop_i > 0, in source order), and rescale the kept entries by
         1 / (1 - drop_i).
       - "breadcrumbs": rank entries by |delta_i|, descending (of equal magnitudes, the lower indices first);
         drop the first floor(gamma_i * n) (outliers), keep the next floor(density_i * n) (fewer if they run
         out), drop the rest (the smallest).
    2. Mix the weighted deltas d_i = w_i * sparsify(delta_i), summed in source order:
       - consensus None: mix = sum_i d_i, divided by sum_i w_i when `normalize` (unless |sum_i w_i| < 1e-8).
       - consensus "sign" (TIES elect + disjoint merge): elected sign s = sign(sum_i d_i), with s = +1 where the
         sum is 0; a_i = 1 where sign(d_i) == s (a zero d_i never agrees); mix = sum_i a_i d_i, divided by
         sum_i a_i w_i where `normalize` and that sum is not 0.
    3. result = base + scale * mix.

    The result is written into `out` when given (in its dtype), computed `block` elements at a time; the
    magnitude cuts are found without sorting (see `_top_cut`). Neither changes a single bit of the result.
    Without sparsification and sign consensus (task arithmetic) it is computed as
    (1 - sum_i c_i) * base + sum_i c_i * x_i with c_i = scale * w_i (/ sum_j w_j): one fused pass per source,
    equal to the definition up to float32 rounding.
    """
    base_flat = base.reshape(-1)
    flats = [source.reshape(-1) for source in sources]
    step = block_size(base, block)
    work = torch.empty(len(sources) + 4, step, dtype=torch.float32, device=base.device)
    deltas, base_block, scratch, spare, mixed = work[: len(sources)], work[-4], work[-3], work[-2], work[-1]

    def delta_block(i: int, start: int, stop: int) -> torch.Tensor:
        base_part = base_block[: stop - start].copy_(base_flat[start:stop])
        return torch.sub(flats[i][start:stop], base_part, out=deltas[i, : stop - start])

    keepers = [
        _keeper(sparsification, i, density, drop, gamma, generator, lambda a, b, i=i: delta_block(i, a, b).abs_(),
                base_flat, flats[i], step)
        for i in range(len(sources))
    ]
    # what each kept delta is multiplied by: its weight, and DARE's rescaling of the kept entries
    factors = [
        w * (keeper.rescale if keeper is not None else 1.0) for w, keeper in zip(weight, keepers, strict=True)
    ]
    total = float(sum(weight))
    divisor = total if normalize and abs(total) >= 1e-8 else 1.0
    coefficients = [scale * f / divisor for f in factors]  # without sign consensus: base + sum_i c_i kept_i
    whole = consensus is None and all(keeper is None for keeper in keepers)

    def merged_block(start: int, stop: int) -> torch.Tensor:
        size = stop - start
        base_part = base_block[:size].copy_(base_flat[start:stop])
        result = mixed[:size]
        if whole:  # base + sum_i c_i (x_i - base) = (1 - sum_i c_i) base + sum_i c_i x_i: one pass per source
            torch.mul(base_part, 1.0 - sum(coefficients), out=result)
            for c, flat in zip(coefficients, flats, strict=True):
                result.add_(flat[start:stop], alpha=c)
            return result
        kept = deltas[:, :size]
        for i, keeper in enumerate(keepers):
            torch.sub(flats[i][start:stop], base_part, out=kept[i])
            if keeper is not None:
                keeper.apply(kept[i], scratch[:size], start, stop)
        if consensus is None:
            result.copy_(base_part)
            for c, row in zip(coefficients, kept, strict=True):
                result.add_(row, alpha=c)
            return result
        for f, row in zip(factors, kept, strict=True):
            row.mul_(f)
        _disjoint_mix(kept, weight, normalize, result, scratch[:size], spare[:size])
        return result.mul_(scale).add_(base_part)

    return write_blocks(base, merged_block, out, block)


def _disjoint_mix(
    weighted: torch.Tensor, weight: list[float], normalize: bool, result: torch.Tensor, elected: torch.Tensor,
    divisor: torch.Tensor,
) -> None:
    """TIES' elect + disjoint merge over one block of the weighted deltas d_i (rows of `weighted`, overwritten):
    `result` gets the mix. With s = the elected sign (+1 or -1), d_i agrees where s * d_i > 0, so the sum of the
    agreeing d_i is s * sum_i max(s * d_i, 0)."""
    # sign of the sum, then -1, 0, +1 -> -1, +1, +1: a zero sum elects +1
    torch.sum(weighted, dim=0, out=elected).sign_().add_(0.5).sign_()
    agreeing = weighted.mul_(elected).clamp_min_(0.0)  # s * d_i where it agrees, else 0
    if normalize:
        divisor.zero_()
        for w, row in zip(weight, agreeing, strict=True):
            divisor.add_(row > 0, alpha=w)
        divisor.add_(divisor == 0)  # no agreeing source: divide by 1 (the sum is 0 there)
    torch.sum(agreeing, dim=0, out=result).mul_(elected)
    if normalize:
        result.div_(divisor)


class _RandomKeep:
    """DARE: a drawn 0/1 mask with keep probability `keep`; the kept entries are rescaled by `rescale` = 1 / keep
    (with the weight, by the caller)."""

    def __init__(self, size: int, keep: float, generator: torch.Generator | None, device: torch.device) -> None:
        self.rescale = 1.0 / keep
        self.mask = torch.rand(size, generator=generator, device=device) < keep

    def apply(self, delta: torch.Tensor, scratch: torch.Tensor, start: int, stop: int) -> None:
        delta.mul_(self.mask[start:stop])


class _Cut:
    """The k largest of n magnitudes: those above `threshold`, and of those equal to it the first `ties`."""

    def __init__(self, threshold: float, ties: int, all_ties: bool) -> None:
        self.threshold, self.ties, self.all_ties = threshold, ties, all_ties
        self.seen = 0  # ties met in earlier blocks of the current pass

    def mask(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Which entries of this block (blocks visited in order, from the first) are among the k largest."""
        if self.all_ties:
            return magnitude >= self.threshold
        if self.seen >= self.ties:  # the ties to keep were all in earlier blocks
            return magnitude > self.threshold
        equal = magnitude == self.threshold
        count = int(equal.sum())
        if self.seen + count <= self.ties:  # every tie of this block is kept
            self.seen += count
            return magnitude >= self.threshold
        rank = equal.cumsum(0).add_(self.seen)  # the block where the ties run out: keep the first ones
        self.seen += count
        return (magnitude > self.threshold) | (equal & (rank <= self.ties))


class _MagnitudeBand:
    """Keep the entries ranked [skip, skip + k) by descending |delta| (TIES: skip = 0; breadcrumbs: outliers)."""

    rescale = 1.0

    def __init__(self, upper: _Cut | None, lower: _Cut | None) -> None:
        self.upper, self.lower = upper, lower  # the top skip + k, and the top skip (None: nothing to drop)

    def apply(self, delta: torch.Tensor, scratch: torch.Tensor, start: int, stop: int) -> None:
        if start == 0:
            for cut in (self.upper, self.lower):
                if cut is not None:
                    cut.seen = 0
        magnitude = torch.abs(delta, out=scratch)
        keep = self.upper.mask(magnitude) if self.upper is not None else torch.ones_like(delta, dtype=torch.bool)
        if self.lower is not None:
            keep &= ~self.lower.mask(magnitude)
        delta.mul_(keep)


def _keeper(
    sparsification: Sparsification,
    i: int,
    density: list[float] | None,
    drop: list[float] | None,
    gamma: list[float] | None,
    generator: torch.Generator | None,
    magnitude_block,
    base_flat: torch.Tensor,
    source_flat: torch.Tensor,
    step: int,
) -> _RandomKeep | _MagnitudeBand | None:
    """How source i's task vector is sparsified, found once per tensor; None keeps it whole."""
    n = base_flat.numel()
    if sparsification == "random":
        keep = 1.0 - drop[i]
        return _RandomKeep(n, keep, generator, base_flat.device) if keep < 1.0 else None
    if sparsification is None:
        return None
    outliers = int(gamma[i] * n) if sparsification == "breadcrumbs" else 0
    kept = int(density[i] * n)
    if outliers == 0 and kept >= n:
        return None
    cut = functools.partial(_top_cut, magnitude_block, base_flat, source_flat, step)
    return _MagnitudeBand(cut(min(n, outliers + kept)), cut(outliers) if outliers > 0 else None)


#: Magnitudes sampled to bracket a cut: the bracket then holds about 8 / sqrt(this) of a tensor's entries.
CUT_SAMPLE = 1 << 14


def _top_cut(
    magnitude_block, base_flat: torch.Tensor, source_flat: torch.Tensor, step: int, k: int
) -> _Cut | None:
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
        return _Cut(float("inf"), 0, False)
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
    threshold = candidates.kthvalue(candidates.numel() - rank + 1).values
    greater = above + int((candidates > threshold).sum())
    equal = int((candidates == threshold).sum())
    return _Cut(float(threshold), k - greater, k - greater == equal)


def _variant(
    name: str, sparsification: Sparsification, consensus: Consensus, normalize: bool, reference: str
) -> MergeMethod:
    sparsity_params = {
        None: (),
        "magnitude": (DENSITY,),
        "random": (DROP,),
        "breadcrumbs": (DENSITY, GAMMA),
    }[sparsification]
    return register(
        MergeMethod(
            name=name,
            function=generalized_task_arithmetic,
            params=(WEIGHT, *sparsity_params, SCALE, normalize_param(normalize)),
            needs_base=True,
            reference=reference,
            fixed={"sparsification": sparsification, "consensus": consensus},
            writes_into=True,
        )
    )


TASK_ARITHMETIC = _variant("task_arithmetic", None, None, False, "https://arxiv.org/abs/2212.04089")
TIES = _variant("ties", "magnitude", "sign", True, "https://arxiv.org/abs/2306.01708")
DARE_LINEAR = _variant("dare_linear", "random", None, False, "https://arxiv.org/abs/2311.03099")
DARE_TIES = _variant("dare_ties", "random", "sign", True, "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = _variant("breadcrumbs", "breadcrumbs", None, False, "https://arxiv.org/abs/2312.06795")
BREADCRUMBS_TIES = _variant("breadcrumbs_ties", "breadcrumbs", "sign", True, "https://arxiv.org/abs/2312.06795")
