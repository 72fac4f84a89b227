"""Building the SmolLM2 family into a directory, part by part, and finding a built one in the cache.

A build takes most of an hour, so it is made of parts, each written into a staging directory and renamed
into place when whole: ``base`` (the GGUF dequantized), ``data``, then one ``expert_SKILL`` per skill; the
manifest ``family.json`` (scores included) is written last and marks the family complete. A build that is
killed leaves whole parts only; the next build of the same settings reuses them and builds the rest, and
nothing ever loads a part that is not whole. ``settings.json``, written first, marks a directory as this
family's build (another directory is never written into); one process builds a directory at a time (a lock,
released by the kernel however the process ends).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from evomerge.errors import UsageError
from evomerge.families import deterministic_torch
from evomerge.files import cache_directory, written_directory
from evomerge.gguf import dequantized_directory
from evomerge.search.run_lock import RunDirectoryLock
from evomerge.smollm2.check import MERGE_CHECK, accuracy_rows, scored_models
from evomerge.smollm2.settings import FAMILY_FORMAT_VERSION, FamilySettings, settings_hash
from evomerge.smollm2.skills import (
    BASE_MODEL,
    CROSS_TASK,
    SKILLS,
    SPLITS,
    TASKS,
    expert_name,
    model_names,
    read_split,
    task_splits,
    with_chat_prompts,
    write_task_data,
)
from evomerge.smollm2.source import GGUF_FILE, INSTALL, gguf_path
from evomerge.smollm2.training import fine_tune

BUILD_COMMAND = "evomerge zoo build --family smollm2"
MANIFEST = "family.json"
CLAIM = "settings.json"
TRAINING_RECORD = "training.json"
BUILD_REFUSAL = (
    "another evomerge process (PID {holder}) is building the SmolLM2 family in {directory}; wait for it to "
    "end, or stop it (the whole parts are kept) and build again"
)


def read_manifest(family_dir: Path) -> dict | None:
    """The family's manifest, or None when the directory holds no complete family."""
    path = Path(family_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def default_family_dir(settings: FamilySettings = FamilySettings()) -> Path:
    """Where the family is kept: ``$EVOMERGE_CACHE/smollm2-<hash>`` (default ``~/.cache/evomerge``)."""
    return cache_directory() / f"smollm2-{settings_hash(settings)}"


def built_family_dir(settings: FamilySettings = FamilySettings()) -> Path:
    """The directory of the built family in the cache; UsageError saying how to build it when it is not
    there (a reference never starts an hour-long build on its own)."""
    family_dir = default_family_dir(settings)
    if read_manifest(family_dir) is not None:
        return family_dir
    if family_dir.exists():
        raise UsageError(
            f"the SmolLM2 family in {family_dir} is half built (its build stopped, or is still running); "
            f"finish it with `{BUILD_COMMAND}`, which resumes it"
        )
    raise UsageError(
        f"the SmolLM2 family is not built yet; build it once with `{BUILD_COMMAND}` (about an hour on 2 CPU "
        "cores; then cached)"
    )


def _write_json(path: Path, data: dict) -> None:
    """JSON written whole or not at all (a sibling renamed over it)."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _claim(out_dir: Path, settings: FamilySettings) -> None:
    """Mark out_dir as this family's build; refuse a directory that holds anything else."""
    wanted = settings_hash(settings)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        claim = out_dir / CLAIM
        held = json.loads(claim.read_text(encoding="utf-8")).get("hash") if claim.is_file() else None
        if held is None:
            raise UsageError(
                f"{out_dir} exists and is not a SmolLM2 family; choose another directory or delete it"
            )
        if held != wanted:
            raise UsageError(
                f"{out_dir} holds a SmolLM2 family of other settings (hash {held}, wanted {wanted}); choose "
                "another directory or delete it"
            )
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file, not a directory; choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / CLAIM, {"hash": wanted, "settings": settings.model_dump(mode="json")})


def _remove_leftovers(out_dir: Path) -> None:
    """Staging directories and files of builds that were killed (only the lock holder calls this)."""
    for leftover in out_dir.glob(".*.tmp-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _build_part(path: Path, make: Callable[[Path], None]) -> None:
    """Run `make(staging)` and rename the staging directory to `path`, unless `path` is already whole."""
    if path.is_dir():
        return
    with written_directory(path) as staging:
        make(staging)


def _linked_or_copied(source: str, target: str) -> None:
    """A hard link to the cached file (same disk), or a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_base(staging: Path) -> None:
    shutil.copytree(
        dequantized_directory(gguf_path()), staging, dirs_exist_ok=True, copy_function=_linked_or_copied
    )


def _chat_prompt(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], str]:
    def render(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    return render


def _write_data(staging: Path, settings: FamilySettings, tokenizer: PreTrainedTokenizerBase) -> None:
    render = _chat_prompt(tokenizer)
    splits = task_splits(settings)
    write_task_data(
        staging,
        {
            task: {split: with_chat_prompts(rows, render) for split, rows in data.items()}
            for task, data in splits.items()
        },
    )


def _train_experts(out_dir: Path, settings: FamilySettings, progress: bool) -> None:
    """Each expert not built yet: fine-tuned from the base on its skill's train split, saved whole."""
    missing = [skill for skill in SKILLS if not (out_dir / expert_name(skill)).is_dir()]
    if not missing:
        return
    tokenizer = AutoTokenizer.from_pretrained(out_dir / BASE_MODEL)
    total = settings.expert_steps * len(missing)
    with deterministic_torch(), tqdm(total=total, desc="smollm2", unit="step", disable=not progress) as bar:
        for skill in missing:
            bar.set_description(f"smollm2: training {expert_name(skill)}")
            model = AutoModelForCausalLM.from_pretrained(out_dir / BASE_MODEL, dtype=torch.float32)
            seed = settings.seed + 1 + SKILLS.index(skill)
            record = fine_tune(model, tokenizer, read_split(out_dir, skill, "train"), settings, seed, bar)

            def save(staging: Path) -> None:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
                _write_json(staging / TRAINING_RECORD, record)

            _build_part(out_dir / expert_name(skill), save)


def _manifest(
    out_dir: Path, settings: FamilySettings, scores: dict[str, dict[str, float]], seconds: float
) -> dict:
    return {
        "format_version": FAMILY_FORMAT_VERSION,
        "hash": settings_hash(settings),
        "settings": settings.model_dump(mode="json"),
        "source": {"install": INSTALL, "file": GGUF_FILE},
        "tasks": {task: {"data": {s: f"data/{task}/{s}.jsonl" for s in SPLITS}} for task in TASKS},
        "cross_task": CROSS_TASK,
        "base": BASE_MODEL,
        "experts": {skill: expert_name(skill) for skill in SKILLS},
        "models": model_names(),
        "training": {
            expert_name(skill): json.loads((out_dir / expert_name(skill) / TRAINING_RECORD).read_text())
            for skill in SKILLS
        },
        "accuracy": {"held_out": {name: scores[name] for name in model_names()}},
        "merge_check": {"held_out": {MERGE_CHECK: scores[MERGE_CHECK]}},
        "build_seconds": round(seconds, 1),
    }


def build_family(
    out_dir: Path | None = None, settings: FamilySettings = FamilySettings(), progress: bool = True
) -> dict:
    """Build the family into out_dir (default: its cache directory), resuming a stopped build of the same
    settings; the manifest (that of the family already there, if it is complete)."""
    out_dir = Path(out_dir) if out_dir is not None else default_family_dir(settings)
    _claim(out_dir, settings)
    manifest = read_manifest(out_dir)
    if manifest is not None:
        return manifest
    lock = RunDirectoryLock(out_dir, BUILD_REFUSAL)
    lock.acquire()
    try:
        manifest = read_manifest(out_dir)  # a build that held the lock until just now may have finished it
        if manifest is not None:
            return manifest
        _remove_leftovers(out_dir)
        started = time.perf_counter()
        _build_part(out_dir / BASE_MODEL, _write_base)
        tokenizer = AutoTokenizer.from_pretrained(out_dir / BASE_MODEL)
        _build_part(out_dir / "data", lambda staging: _write_data(staging, settings, tokenizer))
        _train_experts(out_dir, settings, progress)
        scores = dict(accuracy_rows(out_dir, scored_models(out_dir), "held_out", progress))
        manifest = _manifest(out_dir, settings, scores, time.perf_counter() - started)
        _write_json(out_dir / MANIFEST, manifest)
        return manifest
    finally:
        lock.release()
