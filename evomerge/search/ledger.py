"""The run ledger: one Optuna study in RDB storage (DESIGN.md decision 1).

Every candidate is a trial: its genes as parameters, its objective values, and in user attributes its recipe,
scores, merge and evaluation seconds, and the failure reason when it failed. The run config and the pycma
state live in the study's user attributes, so the storage is the only state of a run: resuming is reopening
the study. `optuna-dashboard sqlite:///RUN_DIR/ledger.db` shows a run as it is.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages import RDBStorage

from evomerge.config import RunConfig
from evomerge.errors import UsageError

STUDY_NAME = "evomerge"
CONFIG_ATTR = "config"
#: Seconds of search so far, over every session of the run (a study user attribute).
ELAPSED_ATTR = "elapsed_seconds"
#: Fields a resumed run may change, and in which direction (a longer budget extends an overnight run).
EXTENDABLE = ("budget.evaluations", "budget.wall_clock_seconds")
#: Fields that say where and on what a run goes on, not what it searches.
PLACE = ("run_dir", "device")


def open_storage(url: str) -> RDBStorage:
    try:
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
    except Exception as error:  # SQLAlchemy raises many types for a bad URL, host or password
        raise UsageError(f"cannot open the storage '{url}': {_first_line(error)}") from None


def open_study(config: RunConfig, study_name: str = STUDY_NAME) -> tuple[optuna.Study, bool]:
    """The run's study, created if new; returns (study, resumed). Refuses a changed config."""
    storage = open_storage(config.storage_url)
    directions = [objective.direction for objective in config.objectives]
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if study_name in names:
        study = optuna.load_study(study_name=study_name, storage=storage)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            raise UsageError(f"the study '{study_name}' in {config.storage_url} was not made by evomerge")
        changed = changed_fields(stored, config.to_json_dict())
        if changed:
            raise UsageError(
                f"the run in {config.run_dir} was started with another config; changed: {', '.join(changed)} "
                "(only a larger budget may change on resume; start a new run directory instead)"
            )
        study.set_user_attr(CONFIG_ATTR, config.to_json_dict())
        return study, True
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
    study.set_user_attr(CONFIG_ATTR, config.to_json_dict())
    return study, False


def load_run_study(config: RunConfig) -> optuna.Study:
    """The study of a run that has started (for reading it: status, report, export)."""
    storage = open_storage(config.storage_url)
    if STUDY_NAME not in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        raise UsageError(f"no run has started in {config.run_dir} yet; start one with: evomerge run CONFIG")
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ, less budget limits that only grew."""
    changed = []
    for name in sorted(set(_flatten(old)) | set(_flatten(new))):
        before, after = _flatten(old).get(name), _flatten(new).get(name)
        if before == after or name in PLACE:
            continue
        if name in EXTENDABLE and before is not None and after is not None and after >= before:
            continue
        changed.append(name)
    return changed


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(data, list):
        return {prefix[:-1]: json.dumps(data, sort_keys=True)}
    return {prefix[:-1]: data}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
