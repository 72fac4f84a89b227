"""The parameter space: a template recipe whose listed parameters are searched per layer, group or kind."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.search.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    from transformers import PreTrainedModel

    from evomerge.config import RunConfig
    from evomerge.evaluate.scores import Scores
    from evomerge.merge.engine import MergeEngine
    from evomerge.merge.genome import Genome
    from evomerge.merge.recipe import Recipe
    from evomerge.search.results import Row
    from evomerge.search.space import ValuesText

RECIPE_PLOT = "best_recipe.png"


class ParameterSpace(SearchSpace):
    """The run config's `recipe` (the template) and `genome` (what is searched); candidates are Recipes."""

    reference_kind = "baselines"

    @staticmethod
    def selected_by(config: RunConfig) -> bool:
        return config.recipe is not None and config.stack is None

    @staticmethod
    def holds(data: Any) -> bool:
        return isinstance(data, dict) and "layers" not in data

    @staticmethod
    def parse(data: Any, origin: str) -> Recipe:
        from evomerge.merge.recipe import recipe_from_dict

        return recipe_from_dict(data, origin)

    @staticmethod
    def write(candidate: Recipe, out: Path, device: str) -> None:
        from evomerge.output.model_dir import write_merge

        write_merge(candidate, out, device=device)

    # ------------------------------------------------------------------ the search

    def load_engine(self) -> MergeEngine:
        from evomerge.merge.engine import DTYPES, MergeEngine

        config = self.config
        return MergeEngine.from_recipe(
            config.recipe,
            device=config.device,
            sources_device=config.sources_device,
            sources_dtype=DTYPES[config.sources_dtype] if config.sources_dtype else None,
            kernels=config.kernels,
        )

    def new_target(self, engine: MergeEngine) -> PreTrainedModel:
        from evomerge.merge.engine import recipe_dtype

        return engine.new_target(recipe_dtype(self.config.recipe), stacked=True)

    def genome(self, engine: MergeEngine) -> tuple[Genome, list[Recipe]]:
        """The genes of the searched parameters; seeds: the template recipe, then the user's seed recipes."""
        from evomerge.merge.genome import Genome
        from evomerge.merge.recipe import load_recipe

        config = self.config
        genome = Genome(config.recipe, config.genome, engine.num_layers, engine.reference.module_kinds)
        seeds = [config.recipe, *(load_recipe(path) for path in config.seed_recipes)]
        engine.plan(
            genome.decode(genome.encode(seeds[0]))
        )  # a genome that cannot be merged fails here, at once
        return genome, seeds

    def seed_count(self) -> int:
        return 1 + len(self.config.seed_recipes)

    # ------------------------------------------------------------------ what a finished search shows

    def reference_rows(self, study: optuna.Study, held_out: dict[int, Scores]) -> list[Row]:
        """The baselines of `evomerge baselines`, when they were run."""
        from evomerge.search.baselines import baseline_rows, load_baselines

        return baseline_rows(self.config, load_baselines(self.config))

    def references_text(self, references: list[Row]) -> str:
        if references:
            return (
                "Baselines: each family's global setting was chosen on the search split from a small grid "
                "(`evomerge/search/baselines.py`); every grid point is a trial of the study `baselines` in "
                "this ledger."
            )
        return f"No baselines in this run's ledger yet: `evomerge baselines {self.config.run_dir}` adds them."

    def studies(self) -> list[str]:
        from evomerge.search.baselines import BASELINES_STUDY

        return [self.config.study, BASELINES_STUDY]

    def settings_lines(self) -> list[str]:
        recipe = self.config.recipe
        return [
            f"- merge: `{recipe.method}` of {', '.join(s.model for s in recipe.sources)}"
            + (f" over base {recipe.base}" if recipe.base else ""),
            "- searched: "
            + ", ".join(f"{g.param} ({g.granularity}, {g.low:g}..{g.high:g})" for g in self.config.genome),
        ]

    def status_lines(
        self, study: optuna.Study, best: FrozenTrial, held_out: dict[int, Scores], values: ValuesText
    ) -> list[str]:
        """The first candidate (the template at the method's defaults), when it is not the best."""
        from evomerge.search.results import seed_trials

        seeds = seed_trials(study, self.seed_count())
        if 0 not in seeds or seeds[0].number == best.number:
            return []
        return [
            f"first candidate (the template at the method's defaults): trial {seeds[0].number}: "
            + values(seeds[0], None)
        ]

    def best_plots(self, directory: Path, prefix: str, best: Recipe, title: str) -> list[tuple[str, str]]:
        """A heat map of the best recipe's parameters by layer (none when it has no numeric parameter)."""
        from evomerge.output.plots import plot_heatmap

        rows, columns, values = recipe_grid(best)
        if not rows:
            return []
        drawn = f"{prefix}{RECIPE_PLOT}"
        plot_heatmap(directory / drawn, rows, columns, values, f"{best.method}: {title}")
        return [("Parameters of the best recipe by layer", drawn)]

    def candidate_heading(self) -> str:
        return "recipe"

    # ------------------------------------------------------------------ export

    def card_parts(self, candidate: Recipe) -> tuple[str, str, str]:
        """Title, the models and method sections, and the searched parameters of a merge recipe."""
        recipe = candidate
        title = f"Merge of {len(recipe.sources)} models: `{recipe.method}`"
        reference = recipe.method_def.reference or "see evomerge/merge/methods/"
        body = f"""## Models

- base: {f"`{recipe.base}`" if recipe.base else "none"}
{chr(10).join(f"- source: `{s.model}`" for s in recipe.sources)}

## Method

`{recipe.method}` ({reference}), with the parameters in `recipe.yaml` (per source, per layer where the search
varied them). `evomerge merge recipe.yaml --out DIR` rebuilds this model's tensors bit for bit from the same
models.
"""
        searched = "- searched parameters:\n" + "\n".join(
            f"  - `{g.param}`: {g.granularity}"
            + (f" (groups of {g.group_size} layers)" if g.granularity == "group" else "")
            + f", {g.low:g} to {g.high:g}"
            + (" on a log scale" if g.log else "")
            for g in self.config.genome
        )
        return title, body, searched

    def mergekit_yaml(self, candidate: Recipe, engine: MergeEngine) -> str:
        from evomerge.output.mergekit import recipe_mergekit_yaml

        return recipe_mergekit_yaml(candidate, list(engine.reference.tensors))

    def export(
        self, engine: MergeEngine, candidate: Recipe, out: Path, files: dict[str, str], replace: bool
    ) -> None:
        from evomerge.merge.engine import recipe_dtype
        from evomerge.output.model_dir import write_model_dir

        model = engine.new_target(recipe_dtype(candidate))
        engine.materialize(candidate, model)
        write_model_dir(model, engine.reference, candidate, out, files, replace=replace)


def recipe_grid(recipe: Recipe) -> tuple[list[str], list[str], list[list[float]]]:
    """The recipe's numeric parameters resolved per layer: (row labels, column labels, values).

    The layer count is the longest per-layer list in the recipe (one column, "every layer", when it has none).
    """
    from evomerge.merge.recipe import resolve_value
    from evomerge.sources import source_name

    found: list[tuple[str, Any]] = [
        (f"{source_name(s.model)} {name}", value)
        for s in recipe.sources
        for name, value in s.parameters.items()
    ]
    found += list(recipe.parameters.items())
    found = [(label, value) for label, value in found if not isinstance(value, bool)]
    layers = max([len(v) for v in _layer_lists(found)], default=1)
    rows, values = [], []
    for label, value in found:
        kinds = sorted(value, key=lambda k: k == "default") if _by_kind(value) else [None]
        for kind in kinds:
            rows.append(label if kind is None else f"{label} [{kind}]")
            inner = value[kind] if kind is not None else value
            values.append([float(resolve_value(inner, layer, "mlp", layers)) for layer in range(layers)])
    columns = [f"layer {i}" for i in range(layers)] if layers > 1 else ["every layer"]
    return rows, columns, values


def _by_kind(value: Any) -> bool:
    return isinstance(value, dict) and "gradient" not in value


def _layer_lists(found: list[tuple[str, Any]]) -> list[list]:
    lists = []
    for _, value in found:
        inner = value.values() if _by_kind(value) else [value]
        lists += [v for v in inner if isinstance(v, list)]
    return lists
