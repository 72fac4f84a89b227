"""The resident half of a run: its search space's engine, the one target model and the evaluator.

Everything here is built once per process, because loading models and tokenizing data sets take seconds to
minutes: `score(candidate, split)` writes the candidate into the target model in place and scores that model;
it reads no file.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from evomerge.config import RunConfig
from evomerge.errors import UsageError
from evomerge.evaluate.scores import Scores
from evomerge.evaluate.tasks import Evaluator, load_task
from evomerge.search.space import Candidate, space_of


class CandidateScorer:
    """Materializes a run's candidates over its resident models and scores them on its tasks."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.space = space_of(config)
        self.engine = self.space.load_engine()
        self.tokenizer = AutoTokenizer.from_pretrained(self.engine.reference.directory)
        self.evaluator = Evaluator(
            [load_task(name, spec) for name, spec in config.tasks.items()], self.tokenizer
        )
        metrics = self.evaluator.metrics()
        for objective in config.objectives:
            if objective.metric not in metrics[objective.task]:
                raise UsageError(
                    f"objective on task '{objective.task}': it has no metric '{objective.metric}' "
                    f"(it has: {', '.join(metrics[objective.task])})"
                )
        self.model = self.space.new_target(self.engine)

    def score(self, candidate: Candidate, split: str = "search") -> Scores:
        """The candidate's `{task: {metric: value}}` on one split (materialized into the target model
        first)."""
        self.engine.materialize(candidate, self.model)
        return self.evaluator.score(self.model, split)
