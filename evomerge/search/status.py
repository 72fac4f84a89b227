"""What `evomerge status RUN_DIR` prints: progress, the best candidate, the Pareto front, rate and ETA,
and the held-out scores of the reported candidates beside their search scores."""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.evaluate.scores import Scores
from evomerge.search.ledger import ELAPSED_ATTR, counts_toward_budget, load_run_study
from evomerge.search.results import best_trial, held_out_scores, pareto_front
from evomerge.search.space import space_of


def status_text(config: RunConfig) -> str:
    study = load_run_study(config)
    trials = study.get_trials(deepcopy=False)
    held_out = held_out_scores(study)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    finished = sum(map(counts_toward_budget, trials))
    lost = sum(t.state == TrialState.FAIL and not counts_toward_budget(t) for t in trials)
    failed = count[TrialState.FAIL] - lost
    budget = config.budget.evaluations
    elapsed = float(study.user_attrs.get(ELAPSED_ATTR, 0.0))
    lines = [
        f"run: {config.run_dir}  optimizer: {config.optimizer.name}  objectives: "
        + ", ".join(f"{o.task}.{o.metric} ({o.direction})" for o in config.objectives),
        f"progress: {finished}"
        + (f"/{budget}" if budget else "")
        + f" evaluated ({count[TrialState.COMPLETE]} complete, "
        + (f"{count[TrialState.PRUNED]} stopped early, " if count[TrialState.PRUNED] else "")
        + f"{failed} failed, {count[TrialState.RUNNING]} running"
        + (f", {lost} lost with their worker and retried" if lost else "")
        + ")",
    ]
    if elapsed > 0 and finished:
        rate = finished / elapsed * 3600
        line = f"speed: {rate:.0f} evaluations/hour over {elapsed / 60:.1f} min of search"
        if budget and finished < budget:
            line += f"; ETA {(budget - finished) / rate * 60:.1f} min"
        lines.append(line)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if failed and not completed:
        last = next(t for t in reversed(trials) if t.state == TrialState.FAIL and counts_toward_budget(t))
        lines.append(
            f"no candidate scored: every one failed; the last: {last.user_attrs.get('failure_reason')} "
            f"(see {config.run_dir / 'run.log'})"
        )
    if completed:
        best = best_trial(config, completed)
        lines.append(f"best: trial {best.number}: " + _values_text(config, best, held_out.get(best.number)))
        lines += space_of(config).status_lines(study, best, held_out, lambda t, h: _values_text(config, t, h))
    if config.multi_objective and completed:
        front = pareto_front(study)
        lines.append(f"Pareto front ({len(front)} candidates):")
        lines.extend(f"  trial {t.number}: " + _values_text(config, t, held_out.get(t.number)) for t in front)
    if completed and not held_out:
        lines.append("held-out scores: not computed yet (evomerge status RUN_DIR --held-out)")
    return "\n".join(lines)


def _values_text(config: RunConfig, trial: FrozenTrial, held_out: Scores | None) -> str:
    """`task=search value`, and `(held-out value)` after it when the trial has a held-out record."""
    return ", ".join(
        f"{o.task}={v:.4f}" + (f" (held-out {held_out[o.task][o.metric]:.4f})" if held_out else "")
        for o, v in zip(config.objectives, trial.values)
    )
