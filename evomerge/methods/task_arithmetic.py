"""Task arithmetic and its sparsified / sign-consensus variants, as settings of one function.

Task arithmetic (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089), TIES (Yadav et al. 2023,
https://arxiv.org/abs/2306.01708), DARE (Yu et al. 2024, https://arxiv.org/abs/2311.03099) and Model
Breadcrumbs (Davari & Belilovsky 2024, https://arxiv.org/abs/2312.06795) differ only in how each task vector is
sparsified and whether signs are elected before mixing; mergekit's "generalized task arithmetic" showed this.
"""

from __future__ import annotations

from typing import Literal

import torch

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
) -> torch.Tensor:
    """Merge task vectors: result = base + scale * mix(sparsify(delta_i)), in float32.

    With delta_i = x_i - base and w_i the weight of source i:

    1. Sparsify each delta_i (a 0/1 mask m_i times delta_i):
       - None: keep everything (task arithmetic).
       - "magnitude" (TIES trim): keep the k_i = floor(density_i * n) entries of largest |delta_i|.
       - "random" (DARE): keep each entry independently with probability 1 - drop_i, drawn from `generator`,
         and rescale the kept entries by 1 / (1 - drop_i).
       - "breadcrumbs": rank entries by |delta_i|, descending; drop the first floor(gamma_i * n) (outliers),
         keep the next floor(density_i * n) (fewer if they run out), drop the rest (the smallest).
    2. Mix the weighted deltas d_i = w_i * sparsify(delta_i):
       - consensus None: mix = sum_i d_i, divided by sum_i w_i when `normalize` (unless |sum_i w_i| < 1e-8).
       - consensus "sign" (TIES elect + disjoint merge): elected sign s = sign(sum_i d_i), with s = +1 where the
         sum is 0; a_i = 1 where sign(d_i) == s (a zero d_i never agrees); mix = sum_i a_i d_i, divided by
         sum_i a_i w_i where `normalize` and that sum is not 0.
    3. result = base + scale * mix.
    """
    base32 = base.float()
    deltas = torch.stack([source.float() - base32 for source in sources])
    n = deltas[0].numel()
    for i in range(len(sources)):
        if sparsification == "magnitude":
            deltas[i] = _keep_largest(deltas[i], int(density[i] * n))
        elif sparsification == "random":
            deltas[i] = _random_keep(deltas[i], 1.0 - drop[i], generator)
        elif sparsification == "breadcrumbs":
            deltas[i] = _keep_band(deltas[i], int(gamma[i] * n), int(density[i] * n))
    weights = torch.tensor(weight, dtype=torch.float32, device=deltas.device).view(-1, *[1] * base.dim())
    weighted = deltas * weights
    if consensus == "sign":
        elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0)
        agrees = (weighted.sign() == elected).float()
        mixed = (weighted * agrees).sum(dim=0)
        if normalize:
            divisor = (weights * agrees).sum(dim=0)
            mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    else:
        mixed = weighted.sum(dim=0)
        if normalize:
            total = float(sum(weight))
            mixed = mixed / (total if abs(total) >= 1e-8 else 1.0)
    return base32 + scale * mixed


def _keep_largest(delta: torch.Tensor, k: int) -> torch.Tensor:
    """delta with all but its k largest-magnitude entries set to 0."""
    if k >= delta.numel():
        return delta
    flat = delta.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[flat.abs().topk(k).indices] = True
    return (flat * mask).view_as(delta)


def _keep_band(delta: torch.Tensor, n_outliers: int, k: int) -> torch.Tensor:
    """delta with only the entries ranked n_outliers .. n_outliers + k - 1 by descending magnitude kept."""
    flat = delta.flatten()
    order = flat.abs().argsort(descending=True, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[n_outliers : n_outliers + k]] = True
    return (flat * mask).view_as(delta)


def _random_keep(delta: torch.Tensor, keep: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: keep each entry with probability `keep` and rescale the kept ones by 1 / keep."""
    if keep >= 1.0:
        return delta
    kept = torch.rand(delta.shape, generator=generator, device=delta.device) < keep
    return delta * kept / keep


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
        )
    )


TASK_ARITHMETIC = _variant("task_arithmetic", None, None, False, "https://arxiv.org/abs/2212.04089")
TIES = _variant("ties", "magnitude", "sign", True, "https://arxiv.org/abs/2306.01708")
DARE_LINEAR = _variant("dare_linear", "random", None, False, "https://arxiv.org/abs/2311.03099")
DARE_TIES = _variant("dare_ties", "random", "sign", True, "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = _variant("breadcrumbs", "breadcrumbs", None, False, "https://arxiv.org/abs/2312.06795")
BREADCRUMBS_TIES = _variant("breadcrumbs_ties", "breadcrumbs", "sign", True, "https://arxiv.org/abs/2312.06795")
