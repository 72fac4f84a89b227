"""Reading and writing files: the user's YAML in, whole directories out, the cache of what is built once."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from evomerge.boundary import os_error_line
from evomerge.errors import UsageError


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: PyYAML follows YAML 1.1, where a float needs a
    dot, so `1e39` or `5e-3` would be strings, while users (and YAML 1.2, JSON and Python) mean numbers."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """The data of a YAML text (YAML 1.2 floats: `YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)


def read_yaml(path: Path, what: str) -> Any:
    """The data of a YAML file; UsageError if it is missing, not text or not YAML. `what` names it ('recipe',
    'config')."""
    if not path.is_file():
        raise UsageError(f"{what} file '{path}' does not exist")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} '{path}' is not a text file ({error.reason} at byte {error.start}); give the YAML file"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(
            f"{what} '{path}' is not valid YAML{line}: {getattr(error, 'problem', error)}"
        ) from None


def cache_directory() -> Path:
    """Where evomerge keeps what it builds once and reuses (the zoo, dequantized GGUF models):
    ``$EVOMERGE_CACHE``, default ``~/.cache/evomerge``."""
    return Path(os.environ.get("EVOMERGE_CACHE", "~/.cache/evomerge")).expanduser()


@contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """A fresh, empty hidden sibling of `out` to write into, removed afterwards with whatever is left in it.

    The caller renames it to `out` once it is complete, so `out` is either absent or whole, even after a kill.
    """
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        raise UsageError(f"cannot write '{out}': {os_error_line(error.errno, None) or error}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def written_directory(out: Path, replace: bool = False) -> Iterator[Path]:
    """A staging directory to fill (`staging_directory`); once the block ends without an error it becomes
    `out`. With `replace`, a directory already at `out` is renamed aside first and deleted after the swap, so
    `out` is the old directory or the new one, never a mixture."""
    with staging_directory(out) as staging:
        yield staging
        if replace and out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)


def cached_directory(out: Path, make: Callable[[Path], None], cannot_write: Callable[[OSError], str]) -> Path:
    """`out`, made on first use by `make(staging)` and renamed into place whole (a killed `make` leaves
    nothing); of two processes making it at once the first to finish is kept. UsageError
    `cannot_write(error)` when it cannot be written."""
    if out.is_dir():
        return out
    try:
        with written_directory(out) as staging:
            make(staging)
    except OSError as error:
        if not out.is_dir():  # else another process renamed its copy into place first
            raise UsageError(cannot_write(error)) from None
    return out
