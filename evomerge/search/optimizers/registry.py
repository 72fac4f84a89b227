"""The one registry of optimizers, and what each declares about itself.

An optimizer drives a search: it proposes candidates until the budget is spent, and the search evaluates and
records them (`Optimizer.drive`). Each declares how it treats several objectives and whether the workers of a
shared run can ask it concurrently; the run config and the shared worker read these declarations, so there is
no second list of optimizer names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from evomerge.registry import Registry

if TYPE_CHECKING:
    from evomerge.search.loop import Search

#: How an optimizer treats several objectives: it refuses them, searches their Pareto front, or minimizes
#: their scalarization (the config's `optimizer.scalarization`).
SeveralObjectives = Literal["refused", "pareto", "scalarized"]


@dataclass(frozen=True)
class Optimizer(ABC):
    """A registered optimizer. A subclass implements `drive`; its module imports heavy libraries (optuna,
    cma) inside its functions, so that reading a run config stays cheap.

    `shareable`: the workers of a shared run can ask it concurrently, each candidate independently of those
    still running elsewhere. Workers claim candidates through the Optuna study (search/worker.py), so a
    shareable optimizer is an Optuna sampler (`optuna_samplers.OptunaSampler`).
    """

    name: str
    title: str
    several_objectives: SeveralObjectives
    shareable: bool

    @abstractmethod
    def drive(self, search: Search) -> None:
        """Propose candidates until `search.budget_left()` is false; each is scored by
        `search.evaluate(point)` and recorded by `search.add_trial` (or `search.tell`, for a trial the study
        asked).

        The ledger is the only state: a driver rebuilds what it keeps from `search.finished_trials()`, so that
        a killed and resumed run proposes the same candidates as an uninterrupted one.
        """


_OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")


def register(optimizer: Optimizer) -> Optimizer:
    """Add an optimizer to the registry; a name can be registered once."""
    return _OPTIMIZERS.add(optimizer.name, optimizer)


def get_optimizer(name: str) -> Optimizer:
    """The registered optimizer called `name`, or a UsageError that lists the names (and the closest one)."""
    return _OPTIMIZERS.get(name)


def unknown_optimizer(name: str) -> str:
    """What is wrong with a name no optimizer is registered under: the closest name, the available ones."""
    return _OPTIMIZERS.unknown(name)


def optimizers() -> list[Optimizer]:
    """The registered optimizers, in the order they were registered."""
    return _OPTIMIZERS.items()
