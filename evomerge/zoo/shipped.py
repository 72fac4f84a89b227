"""The zoo shipped inside the package, and the checksums that pin it.

Training is reproducible bit for bit only on the same kind of CPU: torch's vectorized kernels are chosen by
the CPU's instruction set (AVX2, AVX-512, ...) and round differently, and 2100 float32 training steps carry a
last-bit difference into different weights and different accuracies (docs/zoo.md, "Shipped, not rebuilt").
So the zoo of the default settings is shipped as built, in `shipped/` beside this module (the models, the
data, the manifest, and `SHA256SUMS`, the sha256 of every model and data file), and `ensure_zoo` reads it in
place: every machine merges the same weights. `python -m evomerge.zoo.ship` builds it again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SHIPPED_ZOO = Path(__file__).resolve().parent / "shipped"
CHECKSUMS_FILE = "SHA256SUMS"
SHIP_COMMAND = "python -m evomerge.zoo.ship"


def checksums(zoo_dir: Path) -> dict[str, str]:
    """The sha256 of each model's weights and each data file of a zoo, by path relative to it."""
    zoo_dir = Path(zoo_dir)
    files = sorted([*zoo_dir.glob("*/model.safetensors"), *zoo_dir.glob("data/*/*.jsonl")])
    return {f.relative_to(zoo_dir).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def write_checksums(zoo_dir: Path) -> None:
    """Record a zoo's `checksums` in its `SHA256SUMS`, in the format `sha256sum --check` reads."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in checksums(zoo_dir).items())
    (Path(zoo_dir) / CHECKSUMS_FILE).write_text(lines, encoding="utf-8")


def recorded_checksums(zoo_dir: Path = SHIPPED_ZOO) -> dict[str, str]:
    """The checksums a zoo's `SHA256SUMS` records (the shipped zoo's by default), by relative path."""
    lines = (Path(zoo_dir) / CHECKSUMS_FILE).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
