"""Scoring a run's reported candidates (its best one and every Pareto point) on the held-out split.

The optimizer never sees these scores (DESIGN.md decision 4): they are computed after the search, at the end
of `evomerge run`, by `evomerge status --held-out`, or for `evomerge report` and `export` (which also score
the trials they show or write: each source alone in a layer-stacking run, an exported trial), and stored in
the ledger beside the search scores.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.evaluate.tasks import Scores
from evomerge.search.results import HELD_OUT_PREFIX, held_out_scores, reported_trials, trial_recipe
from evomerge.search.scoring import CandidateScorer


def record_held_out(
    config: RunConfig,
    study: optuna.Study,
    scorer: CandidateScorer | None = None,
    trials: list[FrozenTrial] | None = None,
) -> dict[int, Scores]:
    """Score the `trials` (default: the reported ones) that have no held-out record yet, store them, and
    return every record.

    `scorer` is the run's resident one when there is one; otherwise one is built, and only if some trial
    still needs scoring (loading the sources takes seconds to minutes for large models).
    """
    recorded = held_out_scores(study)
    for trial in reported_trials(config, study) if trials is None else trials:
        if trial.number in recorded:
            continue
        scorer = scorer or CandidateScorer(config)
        recorded[trial.number] = scorer.score(trial_recipe(trial), "held_out")
        study.set_user_attr(f"{HELD_OUT_PREFIX}{trial.number}", recorded[trial.number])
    return recorded
