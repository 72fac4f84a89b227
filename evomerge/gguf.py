"""A GGUF model as a plain Hugging Face directory: dequantized once per file, kept in the cache.

transformers reads a `.gguf` file by dequantizing every tensor (`from_pretrained(..., gguf_file=...)`: tens of
seconds for a 135M-parameter Q4_1 model on two cores), and the model it gives refuses `save_pretrained` while
its config holds the GGUF `quantization_config`. So a GGUF is converted once into a float32 directory
(config.json without `quantization_config`, safetensors, generation config, the tokenizer the GGUF holds) kept
at `$EVOMERGE_CACHE/gguf-<fingerprint>` (default `~/.cache/evomerge`; the fingerprint is the file's,
evomerge/fingerprint.py), and every step after it (tensors, the target model, the tokenizer, export) reads
that directory as it reads any other. A second merge, a resume or another process reuses it. It costs about
4 bytes per parameter on disk (540 MB for 135M parameters, 5.5 times their Q4_1 file); delete it to reclaim
them. It is written into a staging directory and renamed into place, so a killed conversion leaves nothing
behind, and of two processes converting one file at once the first to finish is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from evomerge.errors import UsageError
from evomerge.extras import require
from evomerge.files import cache_directory, cached_directory
from evomerge.fingerprint import file_fingerprint


def dequantized_directory(path: Path) -> Path:
    """The Hugging Face directory of the GGUF file `path` (float32, its tokenizer), converted on first use.

    UsageError (one line) for a file that is not a GGUF, a quantization type or architecture transformers
    cannot read, or a missing `gguf` / `accelerate` package.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise UsageError(f"GGUF file '{path}' does not exist")
    out = cache_directory() / f"gguf-{file_fingerprint(path)[:16]}"
    return cached_directory(
        out,
        lambda staging: _write_dequantized(path, staging),
        lambda error: (
            f"cannot write the dequantized copy of '{path}' to '{out}' ({error}); set EVOMERGE_CACHE to a "
            "writable directory with room for 4 bytes per parameter"
        ),
    )


def _write_dequantized(path: Path, out: Path) -> None:
    """Dequantize the GGUF at `path` through transformers and save it, with its tokenizer, into `out`."""
    for module in ("gguf", "accelerate"):  # transformers needs both to read GGUF
        require(module, "gguf", "reading GGUF files")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"evomerge: dequantizing '{path}' once, into '{out.parent}'", file=sys.stderr)
    try:
        # dequantize=True: dense float32 weights even where transformers could keep the GGUF blocks packed
        # (with the `kernels` package), and a model without `quantization_config`, which can be saved.
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=str(path),  # absolute: a bare name is looked up in the working directory first
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as error:  # a GGUF can fail in the reader, the name mapping or the dequantizer
        raise UsageError(f"cannot read GGUF file '{path}': {_first_line(error)}") from None
    model.save_pretrained(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=str(path))
    except Exception as error:  # no tokenizer in the file, or one transformers cannot convert
        print(
            f"evomerge: warning: the GGUF '{path}' gives no tokenizer ({_first_line(error)}); the merged "
            "model will have none",
            file=sys.stderr,
        )
        return
    tokenizer.save_pretrained(out)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
