"""One number to minimize from several objective values, and what a minimizer is told for a run's trials.

Used wherever candidates are ranked by one value: pycma's CMA-ES, early stopping, the best trial of a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from evomerge.config import Objective


def scalarize(
    values: Sequence[float], objectives: Sequence[Objective], method: str, ideal: Sequence[float]
) -> float:
    """One number to minimize from several objective values.

    Each value becomes a loss (negated when maximized). `weighted_sum`: sum_i w_i loss_i. `chebyshev`:
    max_i w_i (loss_i - ideal_i), with `ideal` the lowest loss seen so far per objective.
    """
    loss = losses(values, objectives)
    if method == "weighted_sum":
        return sum(o.weight * value for o, value in zip(objectives, loss))
    return max(o.weight * (value - best) for o, value, best in zip(objectives, loss, ideal))


def losses(values: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    return [-v if o.direction == "maximize" else v for v, o in zip(values, objectives, strict=True)]


def scalarized(
    trials: Sequence[FrozenTrial],
    completed: Sequence[FrozenTrial],
    objectives: Sequence[Objective],
    method: str,
) -> list[float]:
    """The scalarized value (to minimize) of each completed trial in `trials`; the ideal point of
    `chebyshev` is the best loss per objective over `completed`."""
    ideal = [min(column) for column in zip(*(losses(t.values, objectives) for t in completed))]
    return [scalarize(t.values, objectives, method, ideal) for t in trials]


def fitnesses(
    trials: Sequence[FrozenTrial],
    completed: Sequence[FrozenTrial],
    objectives: Sequence[Objective],
    method: str,
) -> list[float]:
    """What a minimizer is told for `trials`: the scalarized objectives, judged against the `completed` trials
    (what had finished when they were told). A pruned trial is told its `estimate`; a failed one the worst
    value seen + 1."""
    from optuna.trial import TrialState

    value = dict(zip((t.number for t in completed), scalarized(completed, completed, objectives, method)))
    if any(t.state == TrialState.PRUNED for t in trials):
        ideal = [min(column) for column in zip(*(losses(t.values, objectives) for t in completed))]
        for t in trials:
            if t.state == TrialState.PRUNED:
                value[t.number] = scalarize(t.user_attrs["estimate"], objectives, method, ideal)
    worst = max(value.values(), default=0.0)
    return [value.get(t.number, worst + 1.0) for t in trials]
