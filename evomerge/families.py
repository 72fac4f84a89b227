"""What the plug-ins that build a family of models to merge share (the tiny zoo, the SmolLM2 family).

A family is built once into the cache, in a directory named for the hash of its settings, so that a changed
setting builds a new family instead of reusing an old one; its models are trained with seeded data order and
deterministic kernels; its data splits are JSON lines; its accuracy matrix prints as a markdown table. The
core imports no plug-in: the plug-ins import this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch


def settings_hash(settings: BaseModel, format_version: int) -> str:
    """First 12 hex digits of the sha256 of the settings' canonical JSON and the family's format version."""
    payload = {"format_version": format_version, "settings": settings.model_dump(mode="json")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels and a private RNG while building; the caller's settings come back after."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def learning_rate(step: int, steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warmup to `peak`, then cosine decay to a tenth of it."""
    warmup = max(1, round(steps * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(
    n_examples: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches of example indices: fresh seeded permutations, epoch after epoch."""
    import torch

    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_examples, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """JSON lines, the format `datasets.load_dataset("json", data_files=...)` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_matrix(matrix: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, one column per skill."""
    skills = list(next(iter(matrix.values()), {}))
    lines = [
        "| model | " + " | ".join(skills) + " |",
        "| --- | " + " | ".join("---:" for _ in skills) + " |",
    ]
    for name, row in matrix.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in skills) + " |")
    return "\n".join(lines)
