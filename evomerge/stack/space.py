"""The data-flow space: which decoder layers of which sources, in which order, at which input scale."""

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
    from evomerge.search.results import Row
    from evomerge.search.space import ValuesText
    from evomerge.stack.engine import StackEngine
    from evomerge.stack.genome import StackGenome
    from evomerge.stack.recipe import StackRecipe

STACK_PLOT = "best_stack.png"


class DataFlowSpace(SearchSpace):
    """The run config's `stack` section; candidates are StackRecipes. The first candidates are each source as
    it is, and they are what the search is measured against."""

    reference_kind = "each source alone"

    @staticmethod
    def selected_by(config: RunConfig) -> bool:
        return config.recipe is None and config.stack is not None

    @staticmethod
    def holds(data: Any) -> bool:
        from evomerge.stack.recipe import is_stack_data

        return is_stack_data(data)

    @staticmethod
    def parse(data: Any, origin: str) -> StackRecipe:
        from evomerge.stack.recipe import stack_from_dict

        return stack_from_dict(data, origin)

    @staticmethod
    def write(candidate: StackRecipe, out: Path, device: str) -> None:
        from evomerge.stack.engine import write_stack

        write_stack(candidate, out, device=device)

    # ------------------------------------------------------------------ the search

    def load_engine(self) -> StackEngine:
        from evomerge.stack.engine import StackEngine

        return StackEngine.from_space(self.config.stack, device=self.config.device)

    def new_target(self, engine: StackEngine) -> PreTrainedModel:
        return engine.new_target()

    def genome(self, engine: StackEngine) -> tuple[StackGenome, list[StackRecipe]]:
        """Inclusion and scale genes per slot; seeds: each source as it is, then the user's seed stacks."""
        from evomerge.stack.genome import StackGenome
        from evomerge.stack.recipe import load_stack

        genome = StackGenome(self.config.stack, engine.source_layers)
        own = [genome.source_stack(source, count) for source, count in enumerate(engine.source_layers)]
        return genome, [*own, *(load_stack(path) for path in self.config.seed_recipes)]

    def seed_count(self) -> int:
        return len(self.config.stack.sources) + len(self.config.seed_recipes)

    # ------------------------------------------------------------------ what a finished search shows

    def reference_trials(self, study: optuna.Study) -> dict[int, FrozenTrial]:
        """The completed trial of each source alone (the first seeds), by source index."""
        from evomerge.search.results import seed_trials

        count = len(self.config.stack.sources)
        return {index: t for index, t in seed_trials(study, self.seed_count()).items() if index < count}

    def reference_rows(self, study: optuna.Study, held_out: dict[int, Scores]) -> list[Row]:
        from evomerge.search.results import Row, objective_values
        from evomerge.stack.engine import source_label

        rows = []
        for index, trial in sorted(self.reference_trials(study).items()):
            scores = held_out.get(trial.number)
            name = (
                f"{source_label(self.config.stack.sources[index], short=True)} alone (trial {trial.number})"
            )
            held = objective_values(self.config, scores) if scores else None
            rows.append(Row(name, list(trial.values), held, trial))
        return rows

    def references_text(self, references: list[Row]) -> str:
        return (
            "Each source alone: the search's first candidates, each source's own layers in order (scale 1) "
            f"under the embeddings, final norm and head of source {self.config.stack.embeddings}."
        )

    def settings_lines(self) -> list[str]:
        from evomerge.stack.engine import source_label

        space = self.config.stack
        sources = ", ".join(f"source {index} {source_label(ref)}" for index, ref in enumerate(space.sources))
        scales = (
            f"input scale of each layer {space.scale_low:g}..{space.scale_high:g}"
            if space.searches_scales
            else f"no scale searched (every scale {space.scale_low:g})"
        )
        return [
            f"- layer stack of: {sources}; embeddings, final norm and head of source {space.embeddings}",
            f"- searched: which layers, in order, of the sources' layers laid out {space.repeats} times; "
            f"depth {space.min_depth}..{space.max_depth or 'every slot'}; {scales}",
        ]

    def status_lines(
        self, study: optuna.Study, best: FrozenTrial, held_out: dict[int, Scores], values: ValuesText
    ) -> list[str]:
        """Each source alone, with its held-out scores when recorded."""
        from evomerge.stack.engine import source_label

        alone = self.reference_trials(study)
        return ["each source alone (its own layers, the first candidates):"] + [
            f"  source {index} ({source_label(ref)}): trial {alone[index].number}: "
            + values(alone[index], held_out.get(alone[index].number))
            for index, ref in enumerate(self.config.stack.sources)
            if index in alone
        ]

    def best_plots(
        self, directory: Path, prefix: str, best: StackRecipe, title: str
    ) -> list[tuple[str, str]]:
        """A bar chart of the best stack: each layer's source, source layer and input scale."""
        from evomerge.output.plots import plot_stack
        from evomerge.stack.engine import source_label

        drawn = f"{prefix}{STACK_PLOT}"
        layers = [(layer.source, layer.layer, layer.scale) for layer in best.layers]
        names = [source_label(ref, short=True) for ref in best.sources]
        plot_stack(directory / drawn, layers, names, f"{len(best.layers)} layers: {title}")
        return [("The best stack: each layer's source, source layer and input scale", drawn)]

    def candidate_heading(self) -> str:
        return "stack recipe"

    # ------------------------------------------------------------------ export

    def card_parts(self, candidate: StackRecipe) -> tuple[str, str, str]:
        """Title, the models and layers sections, and the searched layout of a layer stack."""
        from evomerge.stack.engine import folded_factors, source_label

        stack, space = candidate, self.config.stack
        title = f"Layer stack of {len(stack.sources)} models ({len(stack.layers)} layers)"
        sources = "\n".join(
            f"- source {index}: `{ref}`"
            if isinstance(ref, str)
            else f"- source {index}: {source_label(ref)} (`{ref.method}`, its recipe inline in `recipe.yaml`)"
            for index, ref in enumerate(stack.sources)
        )
        layers = "\n".join(
            f"| {index} | {layer.source} | {layer.layer} | {layer.scale:.4f} | {factor:.6g} |"
            for index, (layer, factor) in enumerate(zip(stack.layers, folded_factors(stack)))
        )
        if all(layer.scale == 1.0 for layer in stack.layers):
            fold = (
                "Every scale is 1: each layer is a copy of its source's layer, and this checkpoint computes "
                "exactly the stack that was searched."
            )
        else:
            fold = (
                "The scales are folded into the weights: each layer's attention output projection "
                "(`o_proj`) and MLP down projection (`down_proj`) are multiplied by its folded factor, 1 "
                "over the product of the scales up to and including that layer. As RMSNorm(s h) = RMSNorm(h) "
                "but for the epsilon inside the norm, this computes the scaled stack exactly up to RMSNorm's "
                "epsilon (evomerge/stack/engine.py derives it). The scores below were measured on the "
                "searched stack (scales applied to the hidden states), not on this checkpoint."
            )
        body = f"""## Models

{sources}
- embeddings, final norm and head: source {stack.embeddings}

## Layers

The model's decoder layers in order, each a copy of a source's layer. During the search, the hidden state
entering each layer was multiplied by its scale.

| layer | source | source layer | scale | folded factor |
| ---: | ---: | ---: | ---: | ---: |
{layers}

This checkpoint is an ordinary model of the embeddings source's architecture with {len(stack.layers)} layers.
{fold} `evomerge merge recipe.yaml --out DIR` writes the same checkpoint again from the same models.
"""
        scales = (
            f"a scale per kept layer from {space.scale_low:g} to {space.scale_high:g}"
            if space.searches_scales
            else f"no scale (every scale {space.scale_low:g})"
        )
        searched = (
            "- searched layer stack:\n"
            f"  - the sources' layers laid out in order and repeated {space.repeats} times, a slot kept when "
            "its inclusion gene is above 0.5\n"
            f"  - depth from {space.min_depth} to {space.max_depth or 'every slot'} layers; {scales}"
        )
        return title, body, searched

    def mergekit_yaml(self, candidate: StackRecipe, engine: StackEngine) -> str:
        from evomerge.output.mergekit import stack_mergekit_yaml

        return stack_mergekit_yaml(candidate)

    def export(
        self, engine: StackEngine, candidate: StackRecipe, out: Path, files: dict[str, str], replace: bool
    ) -> None:
        from evomerge.stack.engine import write_stack_dir

        write_stack_dir(engine, candidate, out, files, replace=replace)
