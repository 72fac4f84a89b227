"""A GGUF model converted once into a plain Hugging Face directory, kept in the cache.

Stand-in (the SmolLM2 family builder needs it): transformers dequantizes the file to float32; the directory
holds config.json without `quantization_config`, float32 safetensors, the generation config and the tokenizer
(with its chat template) read from the GGUF, and is written all-or-nothing.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import UsageError
from evomerge.extras import require
from evomerge.families import cache_directory
from evomerge.files import written_directory
from evomerge.fingerprint import file_fingerprint


def dequantized_directory(path: Path) -> Path:
    """The HF directory of the GGUF file at `path`: ``$EVOMERGE_CACHE/gguf-<fingerprint>``, converted the
    first time."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"GGUF file '{path}' does not exist")
    out = cache_directory(f"gguf-{file_fingerprint(path)[:16]}")
    if (out / "config.json").is_file():
        return out
    for module in ("gguf", "accelerate"):  # transformers needs both to read GGUF
        require(module, "gguf", "reading GGUF files")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=str(path))
    # Dequantized, the model is plain float32; transformers refuses to save one that says it is quantized.
    del model.config.quantization_config
    model.hf_quantizer = None
    with written_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out
