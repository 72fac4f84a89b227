"""pycma's CMA-ES (`cmaes`) over the genome's unit cube, its state rebuilt from the ledger.

The strategy is never stored: a resumed run rebuilds it from its seeded construction and replays the recorded
generations (ask again, tell the recorded fitnesses), checking that every population asked again equals the
recorded one; then it evaluates the members of the current generation not recorded yet. Pickling the strategy
instead would not resume exactly in a new process (see `pycma_options`). Each generation is told at once, in
one process, so CMA-ES cannot be shared by workers. Several objectives are scalarized
(`optimizer.scalarization`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from evomerge.errors import UsageError
from evomerge.search.optimizers.registry import Optimizer, register
from evomerge.search.optimizers.scalarization import fitnesses

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from evomerge.config import OptimizerConfig
    from evomerge.search.loop import Search


class PycmaCmaEs(Optimizer):
    def drive(self, search: Search) -> None:
        """The seed candidates first, then CMA-ES from the best of them, generation by generation."""
        import cma

        finished = search.finished_trials()
        seeds = {t.user_attrs["seed_index"]: t for t in finished if "seed_index" in t.user_attrs}
        for index, point in enumerate(search.seed_points):
            if index not in seeds:
                if not search.budget_left():
                    return
                seeds[index] = search.add_trial(point, search.evaluate(point), {"seed_index": index})
        options = pycma_options(search.config.optimizer, search.config.seed)
        es = cma.CMAEvolutionStrategy(_best_seed_unit(search, seeds), search.config.optimizer.sigma, options)
        generations: dict[int, dict[int, FrozenTrial]] = {}
        for trial in search.finished_trials():
            if "generation" in trial.user_attrs:
                generations.setdefault(trial.user_attrs["generation"], {})[trial.user_attrs["index"]] = trial
        while True:
            generation = es.countiter
            population = es.ask()
            done = generations.get(generation, {})
            for index, unit in enumerate(population):
                point = {gene.name: gene.value(u) for gene, u in zip(search.genome.genes, unit)}
                if index in done:
                    _check_replayed(search, done[index], point)
                    continue
                if not search.budget_left():
                    return
                attrs = {"generation": generation, "index": index}
                done[index] = search.add_trial(point, search.evaluate(point), attrs)
            told = [done[i] for i in range(len(population))]
            # check_points=False: these are the very solutions pycma asked for; nothing to repair.
            told_fitnesses = _fitnesses(search, told, upto=max(t.number for t in told))
            es.tell(population, told_fitnesses, check_points=False)


register(PycmaCmaEs("cmaes", "pycma CMA-ES", several_objectives="scalarized", shareable=False))


def pycma_options(config: OptimizerConfig, seed: int) -> dict:
    """pycma options under which a strategy rebuilt and replayed in a new process asks what the first asked.

    - A private random generator: pycma samples with `options["randn"]`, by default numpy's global
      `np.random.randn`, whose state a new process does not share.
    - No `bounds`: with bounds pycma maps told solutions back to genotypes through archives keyed by Python's
      `hash()` and repairs the ones it does not find. The genome reflects coordinates into the unit cube
      instead (`reflect_into_unit`).
    """
    import numpy as np

    options = {"seed": seed + 1, "verbose": -9, "randn": np.random.RandomState(seed).randn}
    if config.population_size:
        options["popsize"] = config.population_size
    return options


def _check_replayed(search: Search, trial: FrozenTrial, point: dict[str, float]) -> None:
    def same(recorded: float, asked: float) -> bool:
        return math.isclose(recorded, asked, rel_tol=1e-12, abs_tol=1e-15)

    if not all(same(trial.params[name], value) for name, value in point.items()):
        raise UsageError(
            f"the CMA-ES history in {search.config.run_dir} cannot be replayed: trial {trial.number} was "
            "asked with other parameters (was the run made by another version of evomerge or cma?)"
        )


def _best_seed_unit(search: Search, seeds: dict[int, FrozenTrial]) -> list[float]:
    """The unit-cube point of the best seed candidate, where CMA-ES starts."""
    from optuna.trial import TrialState

    completed = {i: t for i, t in seeds.items() if t.state == TrialState.COMPLETE}
    if not completed:
        return search.genome.encode_unit(search.seed_recipes[0])
    upto = max(t.number for t in seeds.values())
    fitness = dict(zip(completed, _fitnesses(search, list(completed.values()), upto=upto)))
    return search.genome.encode_unit(search.seed_recipes[min(fitness, key=fitness.get)])


def _fitnesses(search: Search, trials: list[FrozenTrial], upto: int) -> list[float]:
    """What pycma minimizes for `trials`, judged against the trials up to number `upto` (what had finished
    when these were told)."""
    from optuna.trial import TrialState

    completed = [t for t in search.finished_trials() if t.state == TrialState.COMPLETE and t.number <= upto]
    return fitnesses(trials, completed, search.config.objectives, search.config.optimizer.scalarization)
