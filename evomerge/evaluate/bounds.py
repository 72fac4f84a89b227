"""How good a partly scored candidate can still end up: the bound early stopping compares with the best.

After n of a task's N examples, the final mean of a metric is (sum of the n values + the N - n values to come)
/ N. The values to come are bounded, with one-sided confidence c, by a bound on their mean: the Wilson score
bound for metrics in [0, 1] (exact match, accuracy; it stays sensible when every value so far is 0 or 1), the
normal bound mean +- z s / sqrt(n) otherwise. A task not scored yet can still reach the best value its metric
has (1 for accuracies, 0 for a negative log-likelihood, infinity otherwise).
"""

from __future__ import annotations

import math
from statistics import NormalDist, stdev

from evomerge.evaluate.scores import Scores
from evomerge.evaluate.tasks import UNIT_METRICS, Partial


def optimistic_scores(partial: Partial, metrics: dict[str, dict[str, bool]], confidence: float) -> Scores:
    """Per task and metric, the best final value still reachable with the given confidence."""
    z = NormalDist().inv_cdf(confidence)
    scores: Scores = {}
    for task, size in partial.sizes.items():
        if task in partial.finals:
            scores[task] = dict(partial.finals[task])
            continue
        scored = partial.values.get(task, {})
        scores[task] = {
            metric: _reachable(scored.get(metric, []), size, metric, higher, z)
            for metric, higher in metrics[task].items()
        }
    return scores


def _reachable(values: list[float], size: int, metric: str, higher: bool, z: float) -> float:
    if not values:
        return _best_possible(metric, higher)
    n = len(values)
    mean = sum(values) / n
    if metric in UNIT_METRICS:
        bound = _wilson(mean, n, z, upper=higher)
    elif n > 1:
        bound = mean + (z if higher else -z) * stdev(values) / math.sqrt(n)
    else:
        bound = _best_possible(metric, higher)
    if metric == "nll":
        bound = max(bound, 0.0)
    if math.isinf(bound):
        return bound
    return (sum(values) + (size - n) * bound) / size


def _best_possible(metric: str, higher: bool) -> float:
    if metric in UNIT_METRICS:
        return 1.0 if higher else 0.0
    if metric == "nll" and not higher:
        return 0.0
    return math.inf if higher else -math.inf


def _wilson(p: float, n: int, z: float, upper: bool) -> float:
    """The Wilson score bound of a proportion p observed over n values."""
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread if upper else centre - spread) / (1 + z * z / n)
