"""The resident half of a run: sources, the one target model and the evaluator, and a recipe's scores.

Everything here is built once per process (DESIGN.md decision 3): `score(recipe, split)` writes the recipe
into the target model in place and scores that model; it reads no file.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from evomerge.config import RunConfig
from evomerge.dfs import StackRecipe
from evomerge.engine import DTYPES, MergeEngine, recipe_dtype
from evomerge.errors import UsageError
from evomerge.evaluate.tasks import Evaluator, Scores, load_task
from evomerge.recipe import Recipe
from evomerge.stacking import StackEngine


class CandidateScorer:
    """Materializes recipes (or stack recipes) over a run's resident sources and scores them on its tasks."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        if config.stack is not None:
            self.engine = StackEngine.from_space(config.stack, device=config.device)
        else:
            self.engine = MergeEngine.from_recipe(
                config.recipe, device=config.device, sources_device=config.sources_device,
                sources_dtype=DTYPES[config.sources_dtype] if config.sources_dtype else None, kernels=config.kernels,
            )
        reference = self.engine.reference
        self.tokenizer = AutoTokenizer.from_pretrained(reference.directory, gguf_file=reference.gguf_file)
        self.evaluator = Evaluator([load_task(name, spec) for name, spec in config.tasks.items()], self.tokenizer)
        metrics = self.evaluator.metrics()
        for objective in config.objectives:
            if objective.metric not in metrics[objective.task]:
                raise UsageError(
                    f"objective on task '{objective.task}': it has no metric '{objective.metric}' "
                    f"(it has: {', '.join(metrics[objective.task])})"
                )
        if config.stack is not None:
            self.model = self.engine.new_target()
        else:
            self.model = self.engine.new_target(recipe_dtype(config.recipe), stacked=True)

    def score(self, recipe: Recipe | StackRecipe, split: str = "search") -> Scores:
        """The recipe's `{task: {metric: value}}` on one split (materialized into the target model first)."""
        self.engine.materialize(recipe, self.model)
        return self.evaluator.score(self.model, split)
