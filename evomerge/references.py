"""References with a scheme (`zoo:expert_add`, `hf:org/model`), resolved by whoever registered the scheme.

A model or data-set reference may start with a scheme: a name of two or more characters before the first
colon (one letter would be a Windows drive). Each scheme is registered once, by the module that owns it:
the core registers `hf:` (a hub model, in evomerge/sources.py); a plug-in registers its own when imported
(the tiny zoo registers `zoo:` for its models and its skills' data, the SmolLM2 family `smollm2:`). The core
imports no plug-in by name in code: it imports the modules named in `BUILTIN_PLUGINS` and the entry points of
the group `evomerge.plugins` (third-party packages) the first time a reference names a scheme nobody has
registered yet.

A reference without a scheme is a local path or a hub name, which sources.py and evaluate/data.py resolve.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from evomerge.errors import UsageError

#: A scheme's resolver: the part of the reference after `SCHEME:` -> the local path it names.
Resolver = Callable[[str], Path]

#: The plug-ins shipped with evomerge, imported by name so that a source checkout finds them without the
#: entry points an install declares.
BUILTIN_PLUGINS = ("evomerge.zoo", "evomerge.smollm2")
PLUGIN_GROUP = "evomerge.plugins"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_.+-]+):(.*)", re.DOTALL)
_MODEL_SCHEMES: dict[str, Resolver] = {}
_DATA_SCHEMES: dict[str, Resolver] = {}
_plugins_loaded = False


def split_scheme(ref: str) -> tuple[str, str] | None:
    """`zoo:expert_add` -> ("zoo", "expert_add"); None for a reference without a scheme."""
    match = _SCHEME.fullmatch(ref)
    return (match.group(1), match.group(2)) if match else None


def register_model_scheme(scheme: str, resolver: Resolver) -> None:
    """Resolve model references `SCHEME:NAME` with `resolver(NAME)` (a local model directory or file)."""
    _register(_MODEL_SCHEMES, scheme, resolver)


def register_data_scheme(scheme: str, resolver: Resolver) -> None:
    """Resolve task data references `SCHEME:NAME` with `resolver(NAME)` (a directory of SPLIT.jsonl files)."""
    _register(_DATA_SCHEMES, scheme, resolver)


def resolve_model_scheme(ref: str) -> Path | None:
    """The local path of a model reference with a scheme; None without one (a path, a hub name)."""
    return _resolve(_MODEL_SCHEMES, "model", ref)


def resolve_data_scheme(ref: str) -> Path | None:
    """The local directory of a data-set reference with a scheme; None without one (a path, a hub name)."""
    return _resolve(_DATA_SCHEMES, "data", ref)


def _register(table: dict[str, Resolver], scheme: str, resolver: Resolver) -> None:
    if _SCHEME.fullmatch(f"{scheme}:") is None:
        raise ValueError(f"'{scheme}' is not a reference scheme: a letter, then letters, digits or _.+-")
    if table.get(scheme, resolver) is not resolver:
        raise ValueError(f"the reference scheme '{scheme}:' is registered twice")
    table[scheme] = resolver


def _resolve(table: dict[str, Resolver], kind: str, ref: str) -> Path | None:
    parts = split_scheme(ref)
    if parts is None:
        return None
    scheme, name = parts
    if scheme not in table:
        load_plugins()
    if scheme in table:
        return table[scheme](name)
    if Path(ref).expanduser().exists():  # a local file or directory whose name has a colon
        return None
    known = ", ".join(f"{s}:" for s in sorted(table))
    raise UsageError(f"{kind} reference '{ref}': unknown scheme '{scheme}:' (known: {known})")


def load_plugins() -> None:
    """Import every plug-in (the built-in ones, then the installed entry points): each registers schemes."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)
    for entry_point in entry_points(group=PLUGIN_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # a third-party plug-in can fail in any way while importing
            raise UsageError(
                f"the evomerge plug-in '{entry_point.name}' ({entry_point.value}) failed to load: "
                f"{type(error).__name__}: {error}"
            ) from None
    _plugins_loaded = True
