"""Optimizers behind one ask/tell shape, their state in the ledger.

- `cmaes` is pycma's CMA-ES over the genome's unit cube. Its state is the ledger itself: a resumed run
  rebuilds the strategy and replays the recorded generations (see `Search._run_pycma`).
  Several objectives are scalarized (`weighted_sum`, or `chebyshev` around the best value seen per objective).
- The other names are Optuna samplers. Each trial is asked with a sampler seeded by the run seed and the trial
  number: Optuna samplers keep their state in the storage except their random generator, so seeding per trial
  makes a killed-and-resumed serial run ask the same candidates as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from evomerge.config import Objective, OptimizerConfig

#: Optimizers that workers can share: each ask is independent of the candidates still running elsewhere.
#: pycma's CMA-ES (`cmaes`) needs a whole generation told at once, in one process.
SHAREABLE = ("tpe", "nsga2", "nsga3", "optuna-cmaes", "gp", "random")


def optuna_sampler(config: OptimizerConfig, seed: int, shared: bool = False) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a config names, seeded; `shared` when workers ask it concurrently (TPE then lies
    that running trials scored the worst value seen, so that concurrent asks spread out: constant liar).

    A sampler is made for every trial (see the module docstring), so Optuna's "experimental" notice for some
    samplers would repeat on every candidate; it is silenced here, where the choice is the user's config.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(config, seed, shared)


def _sampler(config: OptimizerConfig, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    population = {"population_size": config.population_size} if config.population_size else {}
    if config.name == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=True, constant_liar=shared)
    if config.name == "optuna-cmaes":
        return samplers.CmaEsSampler(seed=seed, popsize=config.population_size, warn_independent_sampling=False)
    if config.name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, **population)
    if config.name == "nsga3":
        return samplers.NSGAIIISampler(seed=seed, **population)
    if config.name == "gp":
        return samplers.GPSampler(seed=seed)
    if config.name == "random":
        return samplers.RandomSampler(seed=seed)
    raise ValueError(f"'{config.name}' is not an Optuna sampler")


def trial_seed(run_seed: int, trial_number: int) -> int:
    return (run_seed * 1_000_003 + trial_number) % 2**32


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
    trials: Sequence[FrozenTrial], completed: Sequence[FrozenTrial], objectives: Sequence[Objective], method: str
) -> list[float]:
    """The scalarized value (to minimize) of each completed trial in `trials`; the ideal point of
    `chebyshev` is the best loss per objective over `completed`."""
    ideal = [min(column) for column in zip(*(losses(t.values, objectives) for t in completed))]
    return [scalarize(t.values, objectives, method, ideal) for t in trials]


def pycma_options(config: OptimizerConfig, seed: int) -> dict:
    """pycma options under which a strategy rebuilt and replayed in a new process asks what the first asked.

    - A private random generator: pycma samples with `options["randn"]`, by default numpy's global
      `np.random.randn`, whose state a new process does not share.
    - No `bounds`: with bounds pycma maps told solutions back to genotypes through archives keyed by Python's
      `hash()` and repairs the ones it does not find. The genome reflects coordinates into the unit cube
      instead (`reflect_into_unit`).
    """
    options = {"seed": seed + 1, "verbose": -9, "randn": np.random.RandomState(seed).randn}
    if config.population_size:
        options["popsize"] = config.population_size
    return options
