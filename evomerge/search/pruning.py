"""Early stopping: when a candidate being scored can no longer beat the k-th best, stop and record it PRUNED.

The evaluator scores in chunks (`Evaluator.score_progressively`); after each chunk the candidate's optimistic
objective values (`evaluate/bounds.py`: the best it can still reach, with the configured confidence) are
compared with the completed candidates:
- one objective, or several that the optimizer scalarizes (pycma CMA-ES): hopeless when the optimistic
  scalarized loss is worse than the k-th best scalarized loss so far;
- several objectives whose Pareto front the optimizer searches (Optuna samplers): hopeless when at least k
  completed candidates dominate the optimistic values.
What the optimizer is told for a pruned candidate (`estimate`) is its partial mean per objective (the
optimistic value for an objective not scored yet), which is never better than the optimistic values that
were judged hopeless: the pruned candidate ranks below the k-th best, consistently with why it was pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from optuna.trial import FrozenTrial

from evomerge.config import RunConfig
from evomerge.evaluate.bounds import optimistic_scores
from evomerge.evaluate.scores import Scores
from evomerge.evaluate.tasks import Partial
from evomerge.search.optimizers import get_optimizer
from evomerge.search.optimizers.scalarization import losses, scalarize


class Pruner:
    def __init__(self, config: RunConfig, metrics: dict[str, dict[str, bool]]) -> None:
        self.config = config
        self.settings = config.early_stopping
        self.metrics = metrics
        several = get_optimizer(config.optimizer.name).several_objectives
        self.scalar = not config.multi_objective or several == "scalarized"

    def keep_going(self, completed: Sequence[FrozenTrial]) -> Callable[[Partial], bool] | None:
        """The `keep_going` test for one candidate, judged against the trials completed before it (None when
        there are fewer than k of them: nothing to compare with yet)."""
        k = self.settings.top_k
        if len(completed) < k:
            return None
        objectives, method = self.config.objectives, self.config.optimizer.scalarization
        completed_losses = [losses(t.values, objectives) for t in completed]
        ideal = [min(column) for column in zip(*completed_losses)]
        if self.scalar:
            threshold = sorted(scalarize(t.values, objectives, method, ideal) for t in completed)[k - 1]

            def hopeful(partial: Partial) -> bool:
                return scalarize(self._optimistic(partial), objectives, method, ideal) <= threshold
        else:

            def hopeful(partial: Partial) -> bool:
                bound = losses(self._optimistic(partial), objectives)
                return sum(_dominates(loss, bound) for loss in completed_losses) < k

        return hopeful

    def _optimistic(self, partial: Partial) -> list[float]:
        scores = optimistic_scores(partial, self.metrics, self.settings.confidence)
        return [scores[o.task][o.metric] for o in self.config.objectives]

    def estimate(self, partial: Partial) -> list[float]:
        """The objective values told for a pruned candidate: partial means, optimistic where none."""
        means: Scores = partial.means()
        optimistic = self._optimistic(partial)
        return [
            means.get(o.task, {}).get(o.metric, bound) for o, bound in zip(self.config.objectives, optimistic)
        ]


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Loss vector a is no worse than b everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
