"""Task arithmetic and its sparsified / sign-consensus variants, as settings of one function.

Task arithmetic (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089), TIES (Yadav et al. 2023,
https://arxiv.org/abs/2306.01708), DARE (Yu et al. 2024, https://arxiv.org/abs/2311.03099) and Model
Breadcrumbs (Davari & Belilovsky 2024, https://arxiv.org/abs/2312.06795) differ only in how each task vector
is sparsified and whether signs are elected before mixing; mergekit's "generalized task arithmetic" showed
this.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from evomerge.merge.methods import fused
from evomerge.merge.methods.blocks import block_size, write_blocks
from evomerge.merge.methods.counter_random import DRAW_RANGE, draws, index_hash, keep_limit, source_key
from evomerge.merge.methods.magnitude_cut import (
    KEEP_NONE,
    MagnitudeBlock,
    MagnitudeCut,
    MagnitudeRanks,
    top_cut,
)
from evomerge.merge.methods.params import DENSITY, DROP, GAMMA, SCALE, WEIGHT, normalize_param
from evomerge.merge.methods.registry import MergeMethod, register

Sparsification = Literal["magnitude", "random", "breadcrumbs"] | None
Consensus = Literal["sign"] | None


@dataclass(frozen=True)
class TaskArithmeticSettings:
    """One tensor's merge by generalized_task_arithmetic (its docstring defines each setting): how each task
    vector is sparsified and how they are mixed, then the method's parameters and the tensor's seed.

    Per-source settings hold one value per source; `density` is read by "magnitude" and "breadcrumbs"
    sparsification, `drop` by "random", `gamma` by "breadcrumbs", `seed` by "random" only. Built once per
    merge (MergeMethod.settings_for), it is all that the eager merge, the block path and the kernel plan read.
    """

    sparsification: Sparsification
    consensus: Consensus
    weight: Sequence[float]
    scale: float = 1.0
    normalize: bool = False
    density: Sequence[float] | None = None
    drop: Sequence[float] | None = None
    gamma: Sequence[float] | None = None
    seed: int = 0


def generalized_task_arithmetic(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    settings: TaskArithmeticSettings,
    *,
    ranks: list[MagnitudeRanks | None] | None = None,
    compiled: bool = False,
    out: torch.Tensor | None = None,
    block: int | None = None,
    checksum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge task vectors: result = base + scale * mix(sparsify(delta_i)), in float32.

    With delta_i = x_i - base and w_i the weight of source i (settings in backquotes):

    1. Sparsify each delta_i (a 0/1 mask m_i times delta_i), by `sparsification`:
       - None: keep everything (task arithmetic).
       - "magnitude" (TIES trim): keep the k_i = floor(density_i * n) entries of largest |delta_i| (of equal
         magnitudes, the lower indices first).
       - "random" (DARE): keep each entry independently with probability 1 - drop_i, and rescale the kept
         entries by 1 / (1 - drop_i). Entry e of source i is kept when its draw, a hash of (`seed`, i, e)
         uniform in [0, 2^31) (methods/counter_random.py), is below floor((1 - drop_i) * 2^31).
       - "breadcrumbs": rank entries by |delta_i|, descending (of equal magnitudes, the lower indices first);
         drop the first floor(gamma_i * n) (outliers), keep the next floor(density_i * n) (fewer if they run
         out), drop the rest (the smallest).
    2. Mix the weighted deltas d_i = w_i * sparsify(delta_i), summed in source order, by `consensus`:
       - None: mix = sum_i d_i, divided by sum_i w_i when `normalize` (unless |sum_i w_i| < 1e-8).
       - "sign" (TIES elect + disjoint merge): elected sign s = sign(sum_i d_i), with s = +1 where the sum
         is 0; a_i = 1 where sign(d_i) == s (a zero d_i never agrees); mix = sum_i a_i d_i, divided by
         sum_i a_i w_i where `normalize` and that sum is not 0.
    3. result = base + `scale` * mix.

    The result is written into `out` when given (in its dtype): by one compiled kernel when `compiled`
    (methods/fused.py), else `block` elements at a time. A magnitude cut is looked up in `ranks` (each
    source's MagnitudeRanks, or None) when it holds that k, else found by a selection (magnitude_cut.top_cut);
    `checksum`: see blocks.write_blocks. None of this changes the definition; the kernel agrees with the
    blocks up to float32 rounding. Without sparsification and sign consensus (task arithmetic) the result is
    computed as (1 - sum_i c_i) * base + sum_i c_i * x_i with c_i = scale * w_i (/ sum_j w_j): one fused pass
    per source, equal to the definition up to float32 rounding.
    """
    base_flat, flats, working, plan = _prepared(base, sources, settings, ranks, block)
    keepers, coefficients, whole = plan.keepers, plan.coefficients, plan.whole
    if compiled and out is not None and fused.usable(out, [base, *sources]):
        if fused.run(_kernel_call(out, base_flat, flats, plan, settings), checksum):
            return out
    random = any(isinstance(keeper, _RandomKeep) for keeper in keepers)
    work = working()
    deltas, base_block, scratch, spare, mixed = work[: len(sources)], work[-4], work[-3], work[-2], work[-1]

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
        hashed = index_hash(start, stop, base.device) if random else None
        for i, keeper in enumerate(keepers):
            torch.sub(flats[i][start:stop], base_part, out=kept[i])
            if keeper is not None:
                kept[i].mul_(keeper.mask(kept[i], scratch[:size], start, hashed))
        if settings.consensus is None:
            result.copy_(base_part)
            for c, row in zip(coefficients, kept, strict=True):
                result.add_(row, alpha=c)
            return result
        for f, row in zip(plan.factors, kept, strict=True):
            row.mul_(f)
        _disjoint_mix(kept, settings, result, scratch[:size], spare[:size])
        return result.mul_(settings.scale).add_(base_part)

    return write_blocks(base, merged_block, out, block, checksum)


def _disjoint_mix(
    weighted: torch.Tensor,
    settings: TaskArithmeticSettings,
    result: torch.Tensor,
    elected: torch.Tensor,
    divisor: torch.Tensor,
) -> None:
    """TIES' elect + disjoint merge over one block of the weighted deltas d_i (rows of `weighted`, which it
    overwrites): `result` gets the mix. With s = the elected sign (+1 or -1), d_i agrees where s * d_i > 0, so
    the sum of the agreeing d_i is s * sum_i max(s * d_i, 0)."""
    # sign of the sum, then -1, 0, +1 -> -1, +1, +1: a zero sum elects +1
    torch.sum(weighted, dim=0, out=elected).sign_().add_(0.5).sign_()
    agreeing = weighted.mul_(elected).clamp_min_(0.0)  # s * d_i where it agrees, else 0
    if settings.normalize:
        divisor.zero_()
        for w, row in zip(settings.weight, agreeing, strict=True):
            divisor.add_(row > 0, alpha=w)
        divisor.add_(divisor == 0)  # no agreeing source: divide by 1 (the sum is 0 there)
    torch.sum(agreeing, dim=0, out=result).mul_(elected)
    if settings.normalize:
        result.div_(divisor)


def task_arithmetic_call(
    out: torch.Tensor,
    base: torch.Tensor,
    sources: list[torch.Tensor],
    settings: TaskArithmeticSettings,
    ranks: list[MagnitudeRanks | None] | None = None,
) -> fused.KernelCall | None:
    """The compiled kernel call that writes generalized_task_arithmetic's merge into `out`, planned but not
    run (the engine runs tensors of one size together: fused.run_many); None where no kernel can run
    (fused.usable)."""
    if not fused.usable(out, [base, *sources]):
        return None
    base_flat, flats, _, plan = _prepared(base, sources, settings, ranks, None)
    return _kernel_call(out, base_flat, flats, plan, settings)


def _prepared(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    settings: TaskArithmeticSettings,
    ranks: list[MagnitudeRanks | None] | None,
    block: int | None,
) -> tuple[torch.Tensor, list[torch.Tensor], Callable[[], torch.Tensor], _Plan]:
    """The flattened base and sources, the block path's working blocks (rows per source, then base, scratch,
    spare and mixed; made on first use: a kernel needs none, unless a cut is selected) and the plan."""
    base_flat = base.reshape(-1)
    flats = [source.reshape(-1) for source in sources]
    step = block_size(base, block)
    working = functools.cache(
        lambda: torch.empty(len(flats) + 4, step, dtype=torch.float32, device=base.device)
    )

    def magnitude_block(i: int, start: int, stop: int) -> torch.Tensor:
        base_part = working()[-4, : stop - start].copy_(base_flat[start:stop])
        return torch.sub(flats[i][start:stop], base_part, out=working()[i, : stop - start]).abs_()

    keepers = [
        _keeper(
            settings,
            i,
            ranks[i] if ranks else None,
            functools.partial(magnitude_block, i),
            base_flat,
            flats[i],
            step,
        )
        for i in range(len(flats))
    ]
    factors = [
        w * (keeper.rescale if keeper is not None else 1.0)
        for w, keeper in zip(settings.weight, keepers, strict=True)
    ]
    total = float(sum(settings.weight))
    divisor = total if settings.normalize and abs(total) >= 1e-8 else 1.0
    # without sign consensus: base + sum_i c_i kept_i
    coefficients = [settings.scale * f / divisor for f in factors]
    whole = settings.consensus is None and all(k is None for k in keepers)
    return base_flat, flats, working, _Plan(keepers, factors, coefficients, whole)


@dataclass(frozen=True)
class _Plan:
    """How one tensor is merged: each source's keeper (None keeps its task vector whole), what each kept delta
    is multiplied by (its weight and DARE's rescaling), the final coefficients without sign consensus
    (scale * factor / the normalizing sum), and whether that is a plain weighted sum."""

    keepers: list[_RandomKeep | _MagnitudeBand | None]
    factors: list[float]
    coefficients: list[float]
    whole: bool


@dataclass(frozen=True)
class _RandomKeep:
    """DARE: keep the entries whose draw (counter_random.draws under `key`) is below `limit`; the kept entries
    are rescaled by `rescale` = 1 / keep (with the weight, by the caller)."""

    key: int
    limit: int
    rescale: float

    def mask(
        self, delta: torch.Tensor, scratch: torch.Tensor, start: int, hashed: torch.Tensor
    ) -> torch.Tensor:
        return draws(hashed, self.key) < self.limit


@dataclass(frozen=True)
class _MagnitudeBand:
    """Keep the entries ranked [skip, skip + k) by descending |delta| (TIES: skip = 0; breadcrumbs: outliers):
    inside `upper` (the top skip + k; None: all) and outside `lower` (the top skip; None: nothing to drop)."""

    upper: MagnitudeCut | None
    lower: MagnitudeCut | None
    rescale = 1.0

    def mask(
        self, delta: torch.Tensor, scratch: torch.Tensor, start: int, hashed: torch.Tensor | None
    ) -> torch.Tensor:
        magnitude = torch.abs(delta, out=scratch)
        if self.upper is not None:
            keep = self.upper.mask(magnitude, start)
        else:
            keep = torch.ones_like(delta, dtype=torch.bool)
        if self.lower is not None:
            keep &= ~self.lower.mask(magnitude, start)
        return keep


def _keeper(
    settings: TaskArithmeticSettings,
    i: int,
    ranks: MagnitudeRanks | None,
    magnitude_block: MagnitudeBlock,
    base_flat: torch.Tensor,
    source_flat: torch.Tensor,
    step: int,
) -> _RandomKeep | _MagnitudeBand | None:
    """How source i's task vector is sparsified, found once per tensor; None keeps it whole."""
    n = base_flat.numel()
    sparsification = settings.sparsification
    if sparsification == "random":
        keep = 1.0 - settings.drop[i]
        return _RandomKeep(source_key(settings.seed, i), keep_limit(keep), 1.0 / keep) if keep < 1.0 else None
    if sparsification is None:
        return None
    outliers = int(settings.gamma[i] * n) if sparsification == "breadcrumbs" else 0
    kept = int(settings.density[i] * n)
    if outliers == 0 and kept >= n:
        return None

    def cut(k: int) -> MagnitudeCut | None:
        looked_up = ranks.cut(k) if ranks is not None and k < n else None
        return looked_up or top_cut(magnitude_block, base_flat, source_flat, step, k)

    return _MagnitudeBand(cut(min(n, outliers + kept)), cut(outliers) if outliers > 0 else None)


def _kernel_call(
    out: torch.Tensor,
    base_flat: torch.Tensor,
    flats: list[torch.Tensor],
    plan: _Plan,
    settings: TaskArithmeticSettings,
) -> fused.KernelCall:
    """The plan as a kernel call: a weighted sum where it is one, else fused.masked_mix with each keeper as
    the kernel's per-source cuts and draw limits (neutral ones where a source keeps everything)."""
    if plan.whole:
        coefficients = [1.0 - sum(plan.coefficients), *plan.coefficients]
        return fused.weighted_sum_call(out, [base_flat, *flats], coefficients)
    n = base_flat.numel()
    keepers = plan.keepers
    keep_all = MagnitudeCut(0.0, n)
    bands = [k if isinstance(k, _MagnitudeBand) else _MagnitudeBand(None, None) for k in keepers]
    uppers = [band.upper or keep_all for band in bands]
    lowers = [band.lower or KEEP_NONE for band in bands]  # the top none: nothing dropped
    randoms = [k if isinstance(k, _RandomKeep) else _RandomKeep(0, DRAW_RANGE, 1.0) for k in keepers]
    consensus = settings.consensus is not None
    switches = fused.MixSwitches(
        magnitude=any(band.upper is not None or band.lower is not None for band in bands),
        band=any(band.lower is not None for band in bands),
        random=any(isinstance(k, _RandomKeep) for k in keepers),
        consensus=consensus,
        normalize=settings.normalize,
        wide=n >= fused.WIDE_FROM_ELEMENTS,  # the kernel's indices go up to n (keep_all's last index)
    )
    factors = plan.factors if consensus else plan.coefficients
    numbers = [
        [c.threshold for c in uppers],
        [c.threshold for c in lowers],
        factors,
        list(settings.weight),
        [settings.scale] * len(flats),
    ]
    last_indices = [[c.last_index for c in uppers], [c.last_index for c in lowers]]
    draw_limits = [[r.key for r in randoms], [r.limit - 1 for r in randoms]]
    params = (
        (numbers, torch.float32),
        (last_indices, torch.int64 if switches.wide else torch.int32),
        (draw_limits, torch.int32),
    )
    return fused.KernelCall("masked_mix", out, [base_flat, *flats], params, switches)


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
            settings=TaskArithmeticSettings,
            reference=reference,
            fixed={"sparsification": sparsification, "consensus": consensus},
            seeded=sparsification == "random",
            writes_into=True,
            uses_ranks=sparsification in ("magnitude", "breadcrumbs"),
            kernel_call=task_arithmetic_call,
        )
    )


TASK_ARITHMETIC = _variant("task_arithmetic", None, None, False, "https://arxiv.org/abs/2212.04089")
TIES = _variant("ties", "magnitude", "sign", True, "https://arxiv.org/abs/2306.01708")
DARE_LINEAR = _variant("dare_linear", "random", None, False, "https://arxiv.org/abs/2311.03099")
DARE_TIES = _variant("dare_ties", "random", "sign", True, "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = _variant("breadcrumbs", "breadcrumbs", None, False, "https://arxiv.org/abs/2312.06795")
BREADCRUMBS_TIES = _variant(
    "breadcrumbs_ties", "breadcrumbs", "sign", True, "https://arxiv.org/abs/2312.06795"
)
