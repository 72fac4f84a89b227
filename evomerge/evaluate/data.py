"""A task's examples: read with `datasets`, subsampled with a seed, checked disjoint across splits.

Local data is a directory with one file per split, named for the split (`search.jsonl`, `held_out.csv`,
...); `SCHEME:NAME` names such a directory through the plug-in that registered the scheme
(evomerge/references.py; `zoo:SKILL` is a skill of the tiny zoo); any other name is a hub data set (online
only).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path
from typing import Any

from evomerge.errors import UsageError
from evomerge.references import resolve_data_scheme

#: file suffix -> the `datasets` builder that reads it
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

Row = dict[str, Any]


def data_directory(data: str) -> Path | None:
    """The local directory a task's `data` names, or None for a hub data set name."""
    directory = resolve_data_scheme(data)
    if directory is not None:
        return directory
    path = Path(data).expanduser()
    if path.exists() or data.startswith((".", "/", "~")) or data.count("/") > 1:
        return path
    return None


def read_rows(task: str, data: str, subset: str | None, split: str) -> list[Row]:
    """Every example of one split of a task's data set, as plain dicts."""
    directory = data_directory(data)
    if directory is None:
        return _read_hub(task, data, subset, split)
    if not directory.is_dir():
        raise UsageError(f"task '{task}': data directory '{directory}' does not exist")
    files = [directory / f"{split}{suffix}" for suffix in FORMATS]
    files = [file for file in files if file.is_file()]
    if not files:
        raise UsageError(
            f"task '{task}': no file for split '{split}' in '{directory}' "
            f"(expected {split}.jsonl, .json, .csv or .parquet)"
        )
    return _read_file(task, files[0])


def _read_file(task: str, path: Path) -> list[Row]:
    from datasets import load_dataset

    if path.stat().st_size < 4096 and not path.read_bytes().strip():
        return []  # `datasets` fails on an empty file with its own words; `subsample` names the empty split
    try:
        dataset = load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as error:  # datasets raises many types for unreadable files
        raise UsageError(f"task '{task}': cannot read '{path}': {_first_line(error)}") from None
    return list(dataset)


def _read_hub(task: str, name: str, subset: str | None, split: str) -> list[Row]:
    from datasets import load_dataset

    try:
        return list(load_dataset(name, subset, split=split))
    except Exception as error:  # offline, unknown name, unknown split, ...
        raise UsageError(
            f"task '{task}': cannot load data set '{name}' split '{split}': {_first_line(error)}"
        ) from None


def checked_template(template: str) -> str:
    """`template` if `str.format` can fill it from an example's fields; ValueError (pydantic's validator
    error, reported as the field's problem) if a brace is unbalanced or a placeholder names no field."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(
            f"{template!r} is not a template ({error}); "
            "a placeholder is {field}, a literal brace {{ or }}"
        ) from None
    unnamed = [field for field in fields if not field or field.isdigit()]
    if unnamed:
        raise ValueError(
            f"{template!r} has a placeholder {{{unnamed[0]}}} that names no field; use {{field}}"
        )
    return template


def template_fields(template: str) -> list[str]:
    """The field names a `{field}` template uses."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render(template: str, row: Row) -> str:
    return template.format_map(row)


def check_fields(task: str, split: str, rows: list[Row], fields: list[str]) -> None:
    """Refuse a split whose examples lack a field the task uses, naming the fields they have."""
    missing = [field for field in fields if field not in rows[0]]
    if missing:
        raise UsageError(
            f"task '{task}': the {split} examples have no field '{missing[0]}' "
            f"(they have: {', '.join(rows[0])}); fix the task's template or field names"
        )


def subsample(rows: list[Row], limit: int | None, seed: int, task: str, split: str) -> list[Row]:
    """A seeded random subsample of `limit` rows (all rows, shuffled, without a limit)."""
    if not rows:
        raise UsageError(f"task '{task}': the {split} split is empty; give it examples")
    if limit is not None and len(rows) < limit:
        raise UsageError(
            f"task '{task}': the {split} split has {len(rows)} examples, fewer than limit {limit}; "
            "lower the task's limit or add examples"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:limit]]


def example_hash(row: Row, fields: list[str]) -> str:
    """A content hash of the fields a task reads from an example."""
    content = json.dumps([row.get(field) for field in fields], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def shared_rows(rows: list[Row], others: list[Row], fields: list[str]) -> list[Row]:
    """The rows that are also among `others`, by content hash of the fields a task reads."""
    seen = {example_hash(row, fields) for row in others}
    return [row for row in rows if example_hash(row, fields) in seen]


def check_disjoint(task: str, search: list[Row], held_out: list[Row], fields: list[str]) -> None:
    """Refuse a held-out split that shares an example (by content hash of the fields used) with the search
    split."""
    shared = shared_rows(held_out, search, fields)
    if shared:
        raise UsageError(
            f"task '{task}': {len(shared)} held-out examples are also in the search split "
            f"(e.g. {json.dumps({f: shared[0].get(f) for f in fields}, default=str)}); "
            "the held-out split must be disjoint"
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
