"""Building the zoo into a directory (staged, renamed into place) and keeping it in the cache by the hash of
its settings: `build_zoo`, `ensure_zoo`, and the manifest `zoo.json` written last."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from evomerge.errors import UsageError
from evomerge.families import cache_directory
from evomerge.files import staging_directory
from evomerge.zoo.check import accuracy_matrix, merge_check
from evomerge.zoo.settings import ZOO_FORMAT_VERSION, ZooSettings, settings_hash
from evomerge.zoo.skills import (
    BASE_MODEL,
    SKILLS,
    SPLITS,
    base_train_split,
    expert_name,
    model_names,
    skill_splits,
    write_skill_data,
)
from evomerge.zoo.training import train_models


def read_manifest(zoo_dir: Path) -> dict | None:
    """The zoo's manifest, or None when the directory holds no (complete) zoo."""
    path = Path(zoo_dir) / "zoo.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _manifest(
    settings: ZooSettings,
    matrix: dict[str, dict[str, float]],
    merges: dict[str, dict[str, float]],
    seconds: float,
) -> dict:
    return {
        "format_version": ZOO_FORMAT_VERSION,
        "hash": settings_hash(settings),
        "settings": settings.model_dump(mode="json"),
        "skills": {
            name: {
                "prompt_format": skill.prompt_format,
                "base_trained_on": skill.easy_format,
                "data": {s: f"data/{name}/{s}.jsonl" for s in SPLITS},
            }
            for name, skill in SKILLS.items()
        },
        "base": BASE_MODEL,
        "experts": {name: expert_name(name) for name in SKILLS},
        "models": model_names(),
        "accuracy": {"held_out": matrix},
        "merge_check": {"held_out": merges},
        "build_seconds": round(seconds, 1),
    }


def _cached_manifest(out_dir: Path, settings: ZooSettings) -> dict | None:
    """The existing zoo's manifest if out_dir holds this zoo; None if out_dir is absent or empty.

    Raises UsageError when out_dir holds anything else, so a build never overwrites a user's files.
    """
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return None
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None:
        raise UsageError(f"{out_dir} exists and is not a model zoo; choose another directory or delete it")
    if manifest.get("hash") != settings_hash(settings):
        raise UsageError(
            f"{out_dir} holds a zoo built with other settings (hash {manifest.get('hash')}, wanted "
            f"{settings_hash(settings)}); choose another directory or delete it"
        )
    return manifest


def build_zoo(out_dir: Path, settings: ZooSettings = ZooSettings(), progress: bool = True) -> dict:
    """Build the zoo into out_dir (or return the manifest of the same zoo already there).

    The build happens in a hidden sibling directory that is renamed into place at the end, so out_dir is
    either absent or complete, even if the build is killed.
    """
    out_dir = Path(out_dir)
    cached = _cached_manifest(out_dir, settings)
    if cached is not None:
        return cached
    started = time.perf_counter()
    with staging_directory(out_dir) as tmp_dir:
        splits = {name: skill_splits(skill, settings) for name, skill in SKILLS.items()}
        base_train = {name: base_train_split(SKILLS[name], settings, splits[name]) for name in SKILLS}
        write_skill_data(tmp_dir, splits, base_train)
        train_models(settings, splits, base_train, tmp_dir, progress)
        matrix = accuracy_matrix(tmp_dir)
        merges = merge_check(tmp_dir)
        manifest = _manifest(settings, matrix, merges, time.perf_counter() - started)
        (tmp_dir / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return _move_into_place(tmp_dir, out_dir, settings, manifest)


def _move_into_place(tmp_dir: Path, out_dir: Path, settings: ZooSettings, manifest: dict) -> dict:
    """Rename the finished build to out_dir; if a concurrent build got there first, keep its zoo."""
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        existing = _cached_manifest(out_dir, settings)
        if existing is None:
            raise
        return existing
    return manifest


def default_zoo_dir(settings: ZooSettings = ZooSettings()) -> Path:
    """Where `ensure_zoo` keeps the zoo: ``$EVOMERGE_CACHE/zoo-<hash>`` (default ``~/.cache/evomerge``)."""
    return cache_directory(f"zoo-{settings_hash(settings)}")


def ensure_zoo(settings: ZooSettings = ZooSettings(), progress: bool = True) -> Path:
    """The zoo's directory in the cache, built first if it is not there yet."""
    zoo_dir = default_zoo_dir(settings)
    build_zoo(zoo_dir, settings, progress)
    return zoo_dir
