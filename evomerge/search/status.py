"""What `evomerge status RUN_DIR` prints: progress, the best candidate, the Pareto front, rate and ETA."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.errors import UsageError
from evomerge.search.ledger import counts_toward_budget
from evomerge.search.loop import ELAPSED_ATTR
from evomerge.search.optimizers import scalarized
from evomerge.search.storage import open_storage, safe_url, study_names


def load_run_study(config: RunConfig) -> optuna.Study:
    storage = open_storage(config.storage_url)
    if config.study not in study_names(storage):
        if config.storage is not None:
            raise UsageError(unknown_study(config.study, config.storage, study_names(storage)))
        raise UsageError(f"no run has started in {config.run_dir} yet; start one with: evomerge run CONFIG")
    return optuna.load_study(study_name=config.study, storage=storage)


def unknown_study(name: str, url: str, names: list[str]) -> str:
    return (
        f"no study '{name}' in {safe_url(url)}; it has: {', '.join(sorted(names)) or 'none'} "
        "(start one with: evomerge run CONFIG --storage URL --study NAME)"
    )


def best_trial(config: RunConfig, completed: list[FrozenTrial]) -> FrozenTrial:
    """The best completed trial by the config's scalarization (the objective itself when there is one)."""
    values = scalarized(completed, completed, config.objectives, config.optimizer.scalarization)
    return completed[values.index(min(values))]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    return sorted(study.best_trials, key=lambda t: t.number)


def status_text(config: RunConfig) -> str:
    study = load_run_study(config)
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    finished = sum(map(counts_toward_budget, trials))
    lost = count[TrialState.FAIL] - sum(t.state == TrialState.FAIL and counts_toward_budget(t) for t in trials)
    budget = config.budget.evaluations
    elapsed = float(study.user_attrs.get(ELAPSED_ATTR, 0.0))
    lines = [
        f"run: {config.run_dir}  optimizer: {config.optimizer.name}  objectives: "
        + ", ".join(f"{o.task}.{o.metric} ({o.direction})" for o in config.objectives),
        f"progress: {finished}" + (f"/{budget}" if budget else "") + f" evaluated ({count[TrialState.COMPLETE]} complete, "
        f"{count[TrialState.FAIL] - lost} failed, {count[TrialState.RUNNING]} running"
        + (f", {lost} lost with their worker and retried" if lost else "") + ")",
    ]
    if elapsed > 0 and finished:
        rate = finished / elapsed * 3600
        line = f"speed: {rate:.0f} evaluations/hour over {elapsed / 60:.1f} min of search"
        if budget and finished < budget:
            line += f"; ETA {(budget - finished) / rate * 60:.1f} min"
        lines.append(line)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = best_trial(config, completed)
        lines.append(f"best: trial {best.number}: " + _values_text(config, best))
        seed = next((t for t in completed if t.user_attrs.get("seed_index") == 0 or t.number == 0), None)
        if seed is not None and seed.number != best.number:
            lines.append(f"first candidate (uniform merge): trial {seed.number}: " + _values_text(config, seed))
    if config.multi_objective and completed:
        lines.append(f"Pareto front ({len(pareto_front(study))} candidates):")
        lines.extend(f"  trial {t.number}: " + _values_text(config, t) for t in pareto_front(study))
    return "\n".join(lines)


def _values_text(config: RunConfig, trial: FrozenTrial) -> str:
    return ", ".join(f"{o.task}={v:.4f}" for o, v in zip(config.objectives, trial.values))
