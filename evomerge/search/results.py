"""Reading a run's results from its ledger: the best candidate, the Pareto front, the held-out records, and
the rows of a results table."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.evaluate.scores import Scores
from evomerge.search.optimizers.scalarization import scalarized
from evomerge.search.space import Candidate, candidate_from_yaml

#: Held-out scores live in study user attributes `held_out.N` for trial N: Optuna refuses changes to a
#: finished trial's own attributes, and they are computed after the trial finished (search/held_out.py).
HELD_OUT_PREFIX = "held_out."


@dataclass(frozen=True)
class Row:
    """One model of a results table: its objective values on the search split and, if scored, the held-out
    one."""

    name: str
    search: list[float]
    held_out: list[float] | None
    trial: FrozenTrial | None = None


def objective_values(config: RunConfig, scores: Scores) -> list[float]:
    return [scores[o.task][o.metric] for o in config.objectives]


def best_trial(config: RunConfig, completed: list[FrozenTrial]) -> FrozenTrial:
    """The best completed trial by the config's scalarization (the objective itself when there is one)."""
    values = scalarized(completed, completed, config.objectives, config.optimizer.scalarization)
    return completed[values.index(min(values))]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    return sorted(study.best_trials, key=lambda t: t.number)


def reported_trials(config: RunConfig, study: optuna.Study) -> list[FrozenTrial]:
    """The trials a run reports: the best completed one, then the Pareto points (several objectives), each
    once."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return []
    trials = [best_trial(config, completed)]
    if config.multi_objective:
        trials += [t for t in pareto_front(study) if t.number != trials[0].number]
    return trials


def seed_trials(study: optuna.Study, count: int) -> dict[int, FrozenTrial]:
    """The completed trial of each of the `count` seed candidates, by its index in the seed list of the run's
    space (`SearchSpace.genome`; for a layer-stacking run, index i < number of sources is source i alone).

    Seeds are the first trials of a study: the loop adds them (pycma, user attribute `seed_index`) or
    enqueues them (Optuna samplers, also a shared run's creator) before anything else, so trial N is seed N
    for N below `SearchSpace.seed_count`. A shared run's retry of a lost seed names it in Optuna's
    `failed_trial` system attribute.
    """
    found: dict[int, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        index = trial.user_attrs.get("seed_index", trial.system_attrs.get("failed_trial", trial.number))
        if index < count:
            found.setdefault(index, trial)
    return found


def held_out_scores(study: optuna.Study) -> dict[int, Scores]:
    """Every held-out score recorded in the ledger, by trial number."""
    return {
        int(key[len(HELD_OUT_PREFIX) :]): value
        for key, value in study.user_attrs.items()
        if key.startswith(HELD_OUT_PREFIX)
    }


def trial_recipe(trial: FrozenTrial) -> Candidate:
    """The recipe (or stack recipe) a trial recorded (user attribute `recipe`, YAML)."""
    return candidate_from_yaml(trial.user_attrs["recipe"], origin=f"trial {trial.number}")


def evaluated_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials whose evaluation ended: complete, stopped early (pruned) or failed; each used the budget."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
