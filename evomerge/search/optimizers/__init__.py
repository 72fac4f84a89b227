"""Optimizers: drivers that propose a search's candidates, registered by name (registry.py).

Adding an optimizer is its module, with one registration line, plus its import here; an Optuna sampler is one
function under one `@sampler(...)` line in optuna_samplers.py. The modules import optuna and cma inside their
functions, so that importing the registry (the run config does) stays cheap.
"""

from evomerge.search.optimizers import optuna_samplers, pycma  # noqa: F401  (registers them)
from evomerge.search.optimizers.registry import Optimizer, get_optimizer, optimizers, unknown_optimizer

__all__ = ["Optimizer", "get_optimizer", "optimizers", "unknown_optimizer"]
