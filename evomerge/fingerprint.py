"""Content fingerprints of model files, cheap enough for models of many gigabytes.

A shared study stores the fingerprint of every model of its recipe when it is created; a worker that joins it
compares them with its own files (on another machine the same path may hold another model). Hashing every
byte of a 70B model would take minutes per worker, so a file's fingerprint is SHA-256 over its size and
`SAMPLES` blocks of `BLOCK` bytes spread evenly from its first byte to its last (the first block holds a
safetensors or GGUF header: tensor names, dtypes and shapes). Files up to `SAMPLES * BLOCK` bytes (configs,
tokenizers, small models) are hashed whole. Two fine-tunes of one base differ in every block of weights, so a
sample tells them apart; a change to a few bytes between the samples would pass unseen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLES = 16
BLOCK = 64 * 1024
#: The files of a model directory that shape a merge and its scores: weights, configs, tokenizer.
MODEL_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.json", "*.model", "*.tiktoken")


def file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= SAMPLES * BLOCK:
            digest.update(handle.read())
        else:
            for sample in range(SAMPLES):
                handle.seek(sample * (size - BLOCK) // (SAMPLES - 1))
                digest.update(handle.read(BLOCK))
    return digest.hexdigest()


def model_fingerprint(path: Path | str) -> str:
    """One fingerprint over a model's files: a .gguf file, or the model files of a directory."""
    path = Path(path)
    files = [path] if path.is_file() else sorted({f for pattern in MODEL_FILES for f in path.glob(pattern)})
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_fingerprint(file)}\0".encode())
    return digest.hexdigest()[:16]
