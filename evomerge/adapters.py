"""A PEFT adapter as a source: the adapter applied to its base model by peft, once, kept in the cache.

Two ways to name one, as mergekit does and as the hub lays adapters out:
- `BASE+ADAPTER` (mergekit's `model+lora`): the model BASE (any model reference) with the adapter directory
  ADAPTER applied to it;
- an adapter directory alone (`adapter_config.json`, no `config.json`): applied to the model its
  `base_model_name_or_path` names.

peft does the algebra (`PeftModel.from_pretrained(...).merge_and_unload()`: for LoRA, W + (alpha / r) B A on
every target module), so every adapter type and option peft reads is handled as peft defines it. The merged
model is saved once into `$EVOMERGE_CACHE/peft-<fingerprint>` (the fingerprints of the base and the adapter),
written all or nothing like a GGUF's dequantized copy (evomerge/gguf.py), and every later step reads that
directory as it reads any model. An adapter whose modules or shapes do not fit the base is one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from evomerge.errors import UsageError
from evomerge.extras import require
from evomerge.files import cache_directory, cached_directory
from evomerge.fingerprint import model_fingerprint

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "*.model",
    "vocab*",
    "merges.txt",
    "chat_template*",
)


def split_adapter_reference(ref: str) -> tuple[str, str] | None:
    """`BASE+ADAPTER` -> (BASE, ADAPTER); None for a reference without one (a path that exists as written,
    `+` and all, is a path)."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return None
    base, _, adapter = ref.partition("+")
    if not base or not adapter:
        raise UsageError(f"model '{ref}': a model with an adapter is written BASE+ADAPTER_DIRECTORY")
    return base, adapter


def is_adapter_directory(path: Path) -> bool:
    """A directory that holds a PEFT adapter and no model of its own."""
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(adapter: Path) -> str:
    """The base model an adapter directory names (`base_model_name_or_path` of its config)."""
    base = _adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise UsageError(
            f"the adapter '{adapter}' names no base model (base_model_name_or_path); "
            f"name the model as BASE+{adapter}"
        )
    return base


def adapted_directory(base: Path, adapter: Path) -> Path:
    """The Hugging Face directory of the model `base` with the adapter `adapter` merged in, made on first
    use (its tokenizer is the adapter's when it has one, else the base's)."""
    if not is_adapter_directory(adapter):
        raise UsageError(
            f"'{adapter}' is not a PEFT adapter directory (no {ADAPTER_CONFIG}, or it is a whole model)"
        )
    _adapter_config(adapter)
    key = hashlib.sha256(f"{model_fingerprint(base)}+{model_fingerprint(adapter)}".encode()).hexdigest()
    out = cache_directory() / f"peft-{key[:16]}"
    return cached_directory(
        out,
        lambda staging: _write_adapted(base, adapter, staging),
        lambda error: (
            f"cannot write the model with adapter '{adapter}' to '{out}' ({error}); set EVOMERGE_CACHE to a "
            "writable directory with room for the model"
        ),
    )


def _adapter_config(adapter: Path) -> dict:
    try:
        return json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read '{adapter / ADAPTER_CONFIG}': {error}") from None


def _write_adapted(base: Path, adapter: Path, out: Path) -> None:
    require("peft", "peft", "applying a PEFT adapter")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    print(
        f"evomerge: applying the adapter '{adapter}' to '{base}' once, into '{out.parent}'", file=sys.stderr
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except Exception as error:  # peft raises several types for modules or shapes that do not fit the base
        raise UsageError(
            f"the adapter '{adapter}' does not fit the model '{base}' ({_reason(error)}); name the model it "
            "was trained on as the base"
        ) from None
    merged.save_pretrained(out)
    tokenizer_from = adapter if any(adapter.glob("tokenizer*")) else base
    for pattern in TOKENIZER_FILES:
        for file in tokenizer_from.glob(pattern):
            shutil.copy2(file, out / file.name)


def _reason(error: Exception) -> str:
    """The line of peft's or torch's error that says what does not fit (a size mismatch, a missing module)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "mismatch" in line or "not found" in line), lines[0])
