"""A run's search space: merge parameters (Genome, Recipe) or layer stacking (DfsGenome, StackRecipe).

The loop sees either through one shape: genes, `decode` to a candidate, `encode` a seed, and a candidate that
the scorer's engine materializes and that writes itself as YAML into the ledger.
"""

from __future__ import annotations

from typing import Any

import yaml

from evomerge.config import RunConfig
from evomerge.dfs import DfsGenome, StackRecipe, is_stack_data, load_stack, stack_from_dict
from evomerge.genome import Genome
from evomerge.recipe import Recipe, load_recipe, recipe_from_dict
from evomerge.search.scoring import CandidateScorer

Candidate = Recipe | StackRecipe


def search_genome(config: RunConfig, scorer: CandidateScorer) -> tuple[Genome | DfsGenome, list[Candidate]]:
    """The run's genome over the scorer's resident models, and its seed candidates (evaluated first, in
    order): the template recipe then the user's seeds; for a stack search, each source as it is then the user's."""
    engine = scorer.engine
    if config.stack is not None:
        genome = DfsGenome(config.stack, engine.source_layers)
        own = [genome.source_stack(source, count) for source, count in enumerate(engine.source_layers)]
        return genome, [*own, *(load_stack(path) for path in config.seed_recipes)]
    genome = Genome(config.recipe, config.genome, engine.num_layers, engine.reference.module_kinds)
    seeds = [config.recipe, *(load_recipe(path) for path in config.seed_recipes)]
    engine.plan(genome.decode(genome.encode(seeds[0])))
    return genome, seeds


def seed_count(config: RunConfig) -> int:
    """How many seed candidates `search_genome` gives the run (without loading a model)."""
    own = len(config.stack.sources) if config.stack is not None else 1
    return own + len(config.seed_recipes)


def candidate_from_yaml(text: str, origin: str) -> Candidate:
    """A candidate as the ledger stores it (a trial's `recipe` attribute), or a recipe file's data."""
    return candidate_from_dict(yaml.safe_load(text), origin)


def candidate_from_dict(data: Any, origin: str) -> Candidate:
    return stack_from_dict(data, origin) if is_stack_data(data) else recipe_from_dict(data, origin)
