"""Scoring a run's candidates on the held-out split, and storing those scores in its ledger.

The optimizer never sees these scores: it is told search-split scores only, so that the held-out split stays
an honest measure of what the search found. They are computed after the search, at the end of `evomerge run`
(its best candidate, every Pareto point, and what its space measures it against: each source alone in a
layer-stacking run), or on request by `evomerge score` and `evomerge status --held-out`, and stored in the
ledger beside the search scores, where status, report and export read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.evaluate.scores import Scores
from evomerge.search.results import HELD_OUT_PREFIX, held_out_scores, reported_trials, trial_recipe
from evomerge.search.space import space_of

if TYPE_CHECKING:
    from evomerge.search.scoring import CandidateScorer


def shown_trials(config: RunConfig, study: optuna.Study) -> list[FrozenTrial]:
    """The trials a run shows with held-out scores: the reported ones, then its space's reference trials."""
    reported = reported_trials(config, study)
    numbers = {t.number for t in reported}
    references = space_of(config).reference_trials(study).values()
    return [*reported, *(t for t in references if t.number not in numbers)]


def record_held_out(
    config: RunConfig,
    study: optuna.Study,
    scorer: CandidateScorer | None = None,
    trials: list[FrozenTrial] | None = None,
) -> dict[int, Scores]:
    """Score the `trials` (default: `shown_trials`) that have no held-out record yet, store them, and return
    every record.

    `scorer` is the run's resident one when there is one; otherwise one is built, and only if some trial
    still needs scoring (loading the sources takes seconds to minutes for large models).
    """
    recorded = held_out_scores(study)
    for trial in shown_trials(config, study) if trials is None else trials:
        if trial.number in recorded:
            continue
        if scorer is None:
            from evomerge.search.scoring import CandidateScorer  # loads the models: only when one is scored

            scorer = CandidateScorer(config)
        recorded[trial.number] = scorer.score(trial_recipe(trial), "held_out")
        study.set_user_attr(f"{HELD_OUT_PREFIX}{trial.number}", recorded[trial.number])
    return recorded
