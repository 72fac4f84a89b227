"""Optuna's samplers, each asked for one trial at a time, seeded by the run seed and the trial number.

Optuna samplers keep their state in the storage except their random generator, so a sampler made for every
trial, seeded by its number, makes a killed-and-resumed serial run ask the same candidates as an uninterrupted
one. The seed candidates are enqueued first. The candidate in flight when a run was killed stays a RUNNING
trial whose parameters are already stored; resume evaluates it first.

Adding a sampler is a function that makes it, under one `@sampler(...)` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evomerge.search.optimizers.registry import Optimizer, SeveralObjectives, register

if TYPE_CHECKING:
    import optuna

    from evomerge.config import OptimizerConfig
    from evomerge.search.loop import Search

#: The study attribute that says the seed candidates are enqueued.
SEEDED_ATTR = "seeded"

#: Makes a sampler for one trial: (the optimizer config, the trial's seed, whether workers share it).
SamplerMaker = Callable[["OptimizerConfig", int, bool], "optuna.samplers.BaseSampler"]


@dataclass(frozen=True)
class OptunaSampler(Optimizer):
    make: SamplerMaker

    def sampler(
        self, config: OptimizerConfig, seed: int, shared: bool = False
    ) -> optuna.samplers.BaseSampler:
        """The sampler, seeded; `shared` when workers ask it concurrently.

        A sampler is made for every trial, so Optuna's "experimental" notice for some samplers would repeat on
        every candidate; it is silenced here, where the choice is the user's config.
        """
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return self.make(config, seed, shared)

    def drive(self, search: Search) -> None:
        import optuna
        from optuna.trial import TrialState

        study, config = search.study, search.config
        if not study.user_attrs.get(SEEDED_ATTR):
            for point in search.seed_points:
                study.enqueue_trial(point)
            study.set_user_attr(SEEDED_ATTR, True)
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.sampler = self.sampler(config.optimizer, trial_seed(config.seed, stale.number))
            finish_trial(search, optuna.trial.Trial(study, stale._trial_id))
        while search.budget_left():
            number = len(study.get_trials(deepcopy=False))
            study.sampler = self.sampler(config.optimizer, trial_seed(config.seed, number))
            finish_trial(search, study.ask())


def sampler(
    name: str, title: str, several_objectives: SeveralObjectives, shareable: bool
) -> Callable[[SamplerMaker], SamplerMaker]:
    """Register the decorated function, which makes a seeded sampler, as the optimizer `name`."""

    def registered(make: SamplerMaker) -> SamplerMaker:
        register(OptunaSampler(name, title, several_objectives, shareable, make))
        return make

    return registered


def trial_seed(run_seed: int, trial_number: int) -> int:
    return (run_seed * 1_000_003 + trial_number) % 2**32


def finish_trial(search: Search, trial: optuna.Trial) -> None:
    """Draw the candidate of a trial the study asked, evaluate it and tell the study (in a one-process run
    or a worker of a shared one)."""
    point = {
        gene.name: trial.suggest_float(gene.name, gene.param.low, gene.param.high, log=gene.param.log)
        for gene in search.genome.genes
    }
    search.tell(trial, search.evaluate(point))


# Registered in this order, the order error messages list them in.


@sampler("tpe", "Optuna TPE", several_objectives="pareto", shareable=True)
def _tpe(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    """Multivariate TPE; shared, it lies that running trials scored the worst value seen, so that concurrent
    asks spread out (constant liar)."""
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, multivariate=True, constant_liar=shared)


@sampler("nsga2", "Optuna NSGA-II", several_objectives="pareto", shareable=True)
def _nsga2(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    from optuna.samplers import NSGAIISampler

    return NSGAIISampler(seed=seed, **_population(config))


@sampler("nsga3", "Optuna NSGA-III", several_objectives="pareto", shareable=True)
def _nsga3(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    from optuna.samplers import NSGAIIISampler

    return NSGAIIISampler(seed=seed, **_population(config))


@sampler("optuna-cmaes", "Optuna CMA-ES", several_objectives="refused", shareable=True)
def _optuna_cmaes(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    from optuna.samplers import CmaEsSampler

    return CmaEsSampler(seed=seed, popsize=config.population_size, warn_independent_sampling=False)


@sampler("gp", "Optuna Gaussian process", several_objectives="pareto", shareable=True)
def _gp(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed)


@sampler("random", "Optuna random", several_objectives="pareto", shareable=True)
def _random(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _population(config: OptimizerConfig) -> dict[str, int]:
    """The population size a genetic sampler is given: the config's, else the sampler's own default."""
    return {"population_size": config.population_size} if config.population_size else {}
