"""The search-space protocol: what the loop, the ledger readers, the report and export need of one kind of
search.

evomerge searches two spaces, as in "Evolutionary Optimization of Model Merging Recipes" (Akiba et al., 2024):
the parameter space (a merge recipe's per-layer parameters: `evomerge/merge/space.py`) and the data-flow space
(which layers of which sources, in which order: `evomerge/stack/space.py`). A hybrid run is the two in
sequence (`evomerge/search/hybrid.py`). Everything that differs between them lives behind `SearchSpace`;
nothing else asks which space it is in.

A space is made from a run config without loading a model (`space_of`): status, report and the ledger readers
use it that way. `load_engine` loads its resident models, over which the search materializes candidates.

Adding a space: a module with a `SearchSpace` subclass, its run-config section in `evomerge/config.py`, and
one line in `SPACES`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from evomerge.files import parse_yaml

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    from transformers import PreTrainedModel

    from evomerge.config import RunConfig
    from evomerge.evaluate.scores import Scores
    from evomerge.search.genes import GeneSpace
    from evomerge.search.results import Row


#: The registered search spaces, by "module:Class", in the order `candidate_from_dict` asks them whether data
#: is theirs (the last takes anything the others do not hold). Named rather than imported: the spaces import
#: this module, and are loaded only when a run or a ledger reader needs them.
SPACES = ("evomerge.stack.space:DataFlowSpace", "evomerge.merge.space:ParameterSpace")


class Candidate(Protocol):
    """What a search proposes and the ledger records: plain data with a YAML form (a Recipe, a
    StackRecipe)."""

    def to_yaml(self) -> str: ...

    @property
    def models(self) -> list[str]:
        """The model references it is made of (the model card's `base_model:` lists the hub's)."""
        ...


class TokenizerSource(Protocol):
    """Where a model's tokenizer comes from (a merge's reference model, a stack's embeddings source)."""

    @property
    def directory(self) -> Path: ...


class Engine(Protocol):
    """A space's resident models.

    Contract: `materialize(candidate, target)` writes the candidate into `target` (a model from `new_target`)
    in place, depending on nothing but the candidate and the resident models, so the same candidate always
    gives the same model; it reads no file.
    """

    @property
    def reference(self) -> TokenizerSource: ...

    def materialize(self, candidate: Any, model: PreTrainedModel) -> None: ...


class SearchSpace(ABC):
    """One kind of search over a run config: its candidates, genome and seeds, engine, report and export."""

    #: what the report and the plots call the models a search is measured against
    reference_kind: ClassVar[str]

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    @staticmethod
    @abstractmethod
    def selected_by(config: RunConfig) -> bool:
        """Whether a one-space run config searches this space (by the config sections it has)."""

    # ------------------------------------------------------------------ candidates

    @staticmethod
    @abstractmethod
    def holds(data: Any) -> bool:
        """Whether plain candidate data (a recipe file, a ledger's YAML) is one of this space's candidates."""

    @staticmethod
    @abstractmethod
    def parse(data: Any, origin: str) -> Candidate:
        """Plain data validated as this space's candidate; UsageError naming `origin` otherwise."""

    @staticmethod
    @abstractmethod
    def write(candidate: Any, out: Path, device: str) -> None:
        """Build `candidate` from its models on `device` and write it to `out` (`evomerge merge`)."""

    # ------------------------------------------------------------------ the search

    @abstractmethod
    def load_engine(self) -> Engine:
        """The resident models of the run (loaded here: seconds to minutes for large models)."""

    @abstractmethod
    def new_target(self, engine: Any) -> PreTrainedModel:
        """The one model candidates are materialized into during a search."""

    @abstractmethod
    def genome(self, engine: Any) -> tuple[GeneSpace, list[Candidate]]:
        """The genes over the engine's models, and the seed candidates the search evaluates first, in
        order."""

    @abstractmethod
    def seed_count(self) -> int:
        """How many seed candidates `genome` gives (without loading a model)."""

    # ------------------------------------------------------------------ what a finished search shows

    def reference_trials(self, study: optuna.Study) -> dict[int, FrozenTrial]:
        """Trials of the study that the search is measured against, by seed index (scored on the held-out
        split at the end of a run, with the reported ones); none by default."""
        return {}

    @abstractmethod
    def reference_rows(self, study: optuna.Study, held_out: dict[int, Scores]) -> list[Row]:
        """Rows of the models the search is measured against (`reference_kind`), with their held-out
        scores."""

    @abstractmethod
    def references_text(self, references: list[Row]) -> str:
        """A sentence under the report's results table saying what the reference rows are."""

    def studies(self) -> list[str]:
        """The studies of the run's storage that its report covers."""
        return [self.config.study]

    @abstractmethod
    def settings_lines(self) -> list[str]:
        """Markdown bullet lines saying what the study searched."""

    @abstractmethod
    def status_lines(
        self, study: optuna.Study, best: FrozenTrial, held_out: dict[int, Scores], values: ValuesText
    ) -> list[str]:
        """Lines of `evomerge status` after the best candidate's (the reference models, the first
        candidate)."""

    @abstractmethod
    def best_plots(self, directory: Path, prefix: str, best: Any, title: str) -> list[tuple[str, str]]:
        """Draw the plot of the best candidate into `directory`; returns (title, file name) of each."""

    @abstractmethod
    def candidate_heading(self) -> str:
        """What a candidate is called in headings: `recipe`, `stack recipe`."""

    # ------------------------------------------------------------------ export

    @abstractmethod
    def card_parts(self, candidate: Any) -> tuple[str, str, str]:
        """The model card's title, its models-and-method sections, and the searched-settings lines."""

    @abstractmethod
    def mergekit_yaml(self, candidate: Any, engine: Any) -> str:
        """The candidate as a mergekit config (YAML); UsageError when mergekit cannot express it."""

    @abstractmethod
    def export(self, engine: Any, candidate: Any, out: Path, files: dict[str, str], replace: bool) -> None:
        """Write the candidate as a model directory with extra text `files`, all or nothing."""


class ValuesText(Protocol):
    """Formats a trial's objective values (and held-out ones when recorded) for `evomerge status`."""

    def __call__(self, trial: FrozenTrial, held_out: Scores | None) -> str: ...


def candidate_from_yaml(text: str, origin: str) -> Candidate:
    """A candidate as the ledger stores it (a trial's `recipe` attribute)."""
    return candidate_from_dict(parse_yaml(text), origin)


def candidate_from_dict(data: Any, origin: str) -> Candidate:
    """Plain data as the candidate of whichever space holds it (a recipe file's data, say)."""
    return space_class_of(data).parse(data, origin)


def space_classes() -> list[type[SearchSpace]]:
    """The registered spaces, loaded."""
    loaded = []
    for name in SPACES:
        module, _, cls = name.partition(":")
        loaded.append(getattr(importlib.import_module(module), cls))
    return loaded


def space_class_of(data: Any) -> type[SearchSpace]:
    """The space whose candidates look like `data` (the last, the parameter space, takes anything else)."""
    spaces = space_classes()
    return next((space for space in spaces if space.holds(data)), spaces[-1])


def space_of(config: RunConfig) -> SearchSpace:
    """The search space of a one-space run config (a hybrid run's phases each have one)."""
    return next(space for space in space_classes() if space.selected_by(config))(config)
