"""The optional parts of evomerge and the one line a user sees when a part's packages are missing.

Each optional feature is a pip extra of the package (pyproject.toml): `postgres` (a PostgreSQL storage),
`gguf` (reading .gguf files), `lm-eval` (lm-eval tasks as objectives), `plots` (the PNG plots of a
report), `peft` (PEFT adapters as sources) and `smollm2` (building the SmolLM2 family); `all` is every one.
A feature imports its packages through `require`, at the moment it needs them, so that a plain
`pip install evomerge` runs everything else and the missing part says how to get it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from evomerge.errors import UsageError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """The imported `module`; UsageError naming the extra to install when it cannot be imported.

    `feature` says what needs it, as the start of a sentence: "reading GGUF files".
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{feature} needs the Python package '{module}', not installed: pip install 'evomerge[{extra}]'"
        ) from None
