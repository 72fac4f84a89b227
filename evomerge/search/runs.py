"""A run directory's config file, and the search that drives a config (one process, a shared worker, or the
two phases of a hybrid run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from evomerge.errors import UsageError
from evomerge.search.timing import HEARTBEAT_SECONDS, PATIENCE_SECONDS

if TYPE_CHECKING:
    from evomerge.config import RunConfig

#: The run config beside the ledger, for resume, status, report and export.
RUN_CONFIG = "config.yaml"


def stored_config(
    run_dir: Path, overrides: dict[str, object] | None = None, read_only: bool = False
) -> RunConfig:
    """The config a run directory was started with (it may have moved: `run_dir` is where it is now).

    `read_only`: for a command that only reads the ledger (status), which leaves out checking the recipes
    against their methods again (evomerge/merge/recipe.py, STORED_CONFIG) and so answers without importing
    torch. Commands that merge or write (resume, report, export) check the config in full."""
    from evomerge.config import load_config
    from evomerge.merge.recipe import STORED_CONFIG

    if not (run_dir / RUN_CONFIG).is_file():
        raise UsageError(f"'{run_dir}' holds no run (no {RUN_CONFIG}); start one with: evomerge run CONFIG")
    overrides = {**(overrides or {}), "run_dir": str(run_dir)}
    return load_config(run_dir / RUN_CONFIG, overrides, context=STORED_CONFIG if read_only else None)


def write_run_config(config: RunConfig) -> None:
    """Write the config beside the ledger (kept if already there)."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    if not (config.run_dir / RUN_CONFIG).is_file():
        (config.run_dir / RUN_CONFIG).write_text(yaml.safe_dump(config.to_json_dict(), sort_keys=False))


def run_search(
    config: RunConfig,
    shared: bool = False,
    heartbeat: int = HEARTBEAT_SECONDS,
    patience: float = PATIENCE_SECONDS,
) -> None:
    """Run (or resume) a search: a hybrid's two phases, a worker of a shared study (`shared`, or a run whose
    study is shared), or the one-process loop, which holds the run directory's lock (search/run_lock.py):
    taken at once when the directory exists, so that a second process refuses before loading any model, else
    as soon as the search has made it."""
    from evomerge.search.hybrid import HybridSearch
    from evomerge.search.loop import Search
    from evomerge.search.run_lock import RunDirectoryLock
    from evomerge.search.worker import SharedSearch, is_shared

    if config.hybrid and shared:
        raise UsageError("a hybrid run (recipe, genome and stack) runs in one process; drop --storage")
    if not config.hybrid and (shared or is_shared(config)):
        search = SharedSearch(config, heartbeat_seconds=heartbeat, patience=patience)
        write_run_config(config)
        search.run()
        return
    lock = RunDirectoryLock(config.run_dir)
    existed = config.run_dir.is_dir()
    if existed:
        lock.acquire()
    try:
        search = HybridSearch(config) if config.hybrid else Search(config)
        if not existed:
            config.run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        write_run_config(config)
        search.run()
    finally:
        lock.release()
