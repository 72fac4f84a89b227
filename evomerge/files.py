"""Reading and writing the user's files: YAML in, whole directories out."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import UsageError


def read_yaml(path: Path, what: str) -> Any:
    """The data of a YAML file; UsageError if it is missing or not YAML. `what` names it ('recipe',
    'config')."""
    if not path.is_file():
        raise UsageError(f"{what} file '{path}' does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(
            f"{what} '{path}' is not valid YAML{line}: {getattr(error, 'problem', error)}"
        ) from None


@contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """A fresh, empty hidden sibling of `out` to write into, removed afterwards with whatever is left in it.

    The caller renames it to `out` once it is complete, so `out` is either absent or whole, even after a kill.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
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
