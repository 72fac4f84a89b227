"""Model Stock (Jang et al. 2024, https://arxiv.org/abs/2403.19522)."""

from __future__ import annotations

import itertools

import torch

from evomerge.merge.methods.registry import MergeMethod, NoSettings, register


def model_stock(base: torch.Tensor, sources: list[torch.Tensor], settings: NoSettings) -> torch.Tensor:
    """result = t * mean_i(x_i) + (1 - t) * base, with t = N cos(theta) / (1 + (N - 1) cos(theta)), float32.

    cos(theta) is the mean cosine similarity over all pairs of task vectors x_i - base (flattened), N the
    number of sources (at least 2). Deliberate difference from the paper: cos(theta) is clamped to [0, 1], so
    that t stays in [0, 1] when task vectors point apart (the paper assumes they do not); a zero task vector
    counts as cosine 0.
    """
    base32 = base.float()
    deltas = [(source.float() - base32).flatten() for source in sources]
    cosines = []
    for a, b in itertools.combinations(deltas, 2):
        norms = a.norm() * b.norm()
        cosines.append(float(a @ b / norms) if norms > 0 else 0.0)
    cosine = min(1.0, max(0.0, sum(cosines) / len(cosines)))
    n = len(sources)
    t = n * cosine / (1 + (n - 1) * cosine)
    mean = torch.stack([source.float() for source in sources]).mean(dim=0)
    return t * mean + (1 - t) * base32


MODEL_STOCK = register(
    MergeMethod(
        name="model_stock",
        function=model_stock,
        params=(),
        needs_base=True,
        min_sources=2,
        reference="https://arxiv.org/abs/2403.19522",
    )
)
