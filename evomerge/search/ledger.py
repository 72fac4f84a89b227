"""The run ledger: one Optuna study in RDB storage: the only state of a run.

Every candidate is a trial: its genes as parameters, its objective values, and in user attributes its recipe,
scores, merge and evaluation seconds, and the failure reason when it failed. The run config and the pycma
state live in the study's user attributes, so the storage is the only state of a run: resuming is reopening
the study. `optuna-dashboard sqlite:///RUN_DIR/ledger.db` shows a run as it is.

A study records the content fingerprints of its models; reopening it on other model files is refused. A shared
study (several workers, see evomerge/search/worker.py) also records its heartbeat interval, and is only ever
reopened as a shared one: a one-process resume would take the live workers' RUNNING trials for stale ones.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.errors import UsageError
from evomerge.fingerprint import model_fingerprint
from evomerge.search.storage import open_storage, safe_url, study_names

CONFIG_ATTR = "config"
#: The content fingerprint of each model of the recipe when the study was made (evomerge/fingerprint.py).
MODELS_ATTR = "model_fingerprints"
#: Set in a shared study (one that workers may join): the heartbeat interval its workers keep.
HEARTBEAT_ATTR = "heartbeat_seconds"
#: Seconds of search so far, over every session of the run (a study user attribute).
ELAPSED_ATTR = "elapsed_seconds"
#: Fields a resumed run may change, and in which direction (a longer budget extends an overnight run).
EXTENDABLE = ("budget.evaluations", "budget.wall_clock_seconds")
#: Fields that say where and on what a run goes on, not what it searches.
PLACE = ("run_dir", "device", "sources_device", "storage", "study")


def open_study(config: RunConfig) -> tuple[optuna.Study, bool]:
    """The run's study, created if new; returns (study, resumed). Refuses a changed config."""
    storage = open_storage(config.storage_url)
    if config.study in study_names(storage):
        return load_checked_study(storage, config, shared=False), True
    return create_study(storage, config), False


def create_study(
    storage: RDBStorage, config: RunConfig, heartbeat_seconds: int | None = None
) -> optuna.Study:
    """A new study for `config`; shared (workers may join it) when it has a heartbeat interval."""
    directions = [objective.direction for objective in config.objectives]
    study = optuna.create_study(storage=storage, study_name=config.study, directions=directions)
    study.set_user_attr(CONFIG_ATTR, stored_config(config))
    study.set_user_attr(MODELS_ATTR, config_fingerprints(config))
    if heartbeat_seconds is not None:
        study.set_user_attr(HEARTBEAT_ATTR, heartbeat_seconds)
    return study


def load_checked_study(storage: RDBStorage, config: RunConfig, shared: bool) -> optuna.Study:
    """The existing study of `config`, after checking that it is this run, made the same way (shared or
    not), on the same model files; a larger budget is recorded."""
    study = optuna.load_study(study_name=config.study, storage=storage)
    where = run_place(config)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise UsageError(f"{where} was not made by evomerge")
    if shared != (HEARTBEAT_ATTR in study.user_attrs):
        raise UsageError(
            f"{where} was started by one process (evomerge run without --storage); resume it: evomerge resume"
            if shared
            else f"{where} is shared by workers: join it with --storage URL or `evomerge worker`"
        )
    # A shared study's seeds were enqueued when it was made; a worker joining it needs none.
    changed = changed_fields(stored, config.to_json_dict(), ignore=("seed_recipes",) if shared else ())
    if changed:
        raise UsageError(
            f"{where} was started with another config; changed: {', '.join(changed)} "
            "(only a larger budget may change on resume; start a new run directory instead)"
        )
    check_models(study, config)
    study.set_user_attr(CONFIG_ATTR, {**stored, "budget": config.to_json_dict()["budget"]})
    return study


def stored_config(config: RunConfig) -> dict[str, Any]:
    """The config as the study keeps it: without the storage URL, which may hold a password."""
    return {**config.to_json_dict(), "storage": None}


def run_place(config: RunConfig) -> str:
    """How messages name a run: its directory, or its study when it lives in a storage of its own."""
    if config.storage is None:
        return f"the run in {config.run_dir}"
    return f"the study '{config.study}' in {safe_url(config.storage)}"


def check_models(study: optuna.Study, config: RunConfig) -> None:
    """Refuse models whose files here differ from the ones the study was made with."""
    recorded = study.user_attrs.get(MODELS_ATTR, {})
    for ref, fingerprint in config_fingerprints(config).items():
        if recorded.get(ref, fingerprint) != fingerprint:
            raise UsageError(
                f"model '{ref}' here differs from the one {run_place(config)} was started with (content "
                f"fingerprint {fingerprint}, recorded {recorded[ref]}: size and sampled bytes of its files); "
                "use the same model files on every machine"
            )


def config_fingerprints(config: RunConfig) -> dict[str, str]:
    """The fingerprint of every model a run config names (its recipe's, or its stack's and theirs), by
    reference."""
    # Imported here, where a fingerprint is computed: sources imports transformers, and reading a ledger
    # (status) needs none of it.
    from evomerge.sources import resolve_ref

    recipes = [config.recipe] if config.recipe is not None else []
    refs: list[str] = []
    for source in config.stack.sources if config.stack is not None else []:
        if isinstance(source, str):
            refs.append(source)
        else:
            recipes.append(source)
    for recipe in recipes:
        refs += ([recipe.base] if recipe.base else []) + [source.model for source in recipe.sources]
    return {ref: model_fingerprint(resolve_ref(ref)) for ref in dict.fromkeys(refs)}


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """An evaluated candidate: complete, pruned, or failed with a reason. A trial failed because its worker
    died (no heartbeat) has no reason: it is retried and the retry counts."""
    if trial.state == TrialState.FAIL:
        return "failure_reason" in trial.user_attrs
    return trial.state.is_finished()


def load_run_study(config: RunConfig) -> optuna.Study:
    """The study of a run that has started (for reading it: status, report, export)."""
    storage = open_storage(config.storage_url)
    names = study_names(storage)
    if config.study not in names:
        if config.storage is not None:
            raise UsageError(unknown_study(config.study, config.storage, names))
        raise UsageError(f"no run has started in {config.run_dir} yet; start one with: evomerge run CONFIG")
    return optuna.load_study(study_name=config.study, storage=storage)


def unknown_study(name: str, url: str, names: list[str]) -> str:
    return (
        f"no study '{name}' in {safe_url(url)}; it has: {', '.join(sorted(names)) or 'none'} "
        "(start one with: evomerge run CONFIG --storage URL --study NAME)"
    )


def changed_fields(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of the fields that differ, less budget limits that only grew and the fields `ignore`d."""
    changed = []
    for name in sorted(set(_flatten(old)) | set(_flatten(new))):
        before, after = _flatten(old).get(name), _flatten(new).get(name)
        if before == after or name in PLACE or name.split(".")[0] in ignore:
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
