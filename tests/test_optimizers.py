"""The optimizer registry: names checked with a suggestion, each optimizer's declarations read by the run
config and the shared worker, and a new optimizer that is one class plus one registration line."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from optuna.trial import TrialState
from runs import config_data, ledger_rows, run_search

from evomerge.config import OptimizerConfig, config_from_dict
from evomerge.errors import UsageError
from evomerge.search.loop import Search
from evomerge.search.optimizers import get_optimizer, optimizers, registry
from evomerge.search.optimizers.registry import Optimizer, register
from evomerge.search.worker import shareable_optimizer


class Diagonal(Optimizer):
    """Points on the unit cube's diagonal, u = (step % 7 + 1) / 8 for every gene; its state is the steps the
    ledger holds, so a resumed run goes on where it stopped."""

    def drive(self, search: Search) -> None:
        done = {t.user_attrs["step"] for t in search.finished_trials()}
        for step in itertools.count():
            if step in done:
                continue
            if not search.budget_left():
                return
            point = {gene.name: gene.value((step % 7 + 1) / 8) for gene in search.genome.genes}
            search.add_trial(point, search.evaluate(point), {"step": step})


@pytest.fixture
def diagonal(monkeypatch) -> Optimizer:
    """`Diagonal` registered as `diagonal` for one test."""
    monkeypatch.setattr(registry, "_OPTIMIZERS", registry._OPTIMIZERS.copy())
    optimizer = Diagonal("diagonal", "the cube's diagonal", several_objectives="refused", shareable=False)
    return register(optimizer)


def test_every_optimizer_declares_how_it_treats_several_objectives_and_sharing():
    declared = {o.name: (o.several_objectives, o.shareable) for o in optimizers()}
    assert declared == {
        "tpe": ("pareto", True),
        "nsga2": ("pareto", True),
        "nsga3": ("pareto", True),
        "optuna-cmaes": ("refused", True),
        "gp": ("pareto", True),
        "random": ("pareto", True),
        "cmaes": ("scalarized", False),
    }


def test_an_unknown_name_is_one_line_with_the_closest_name_and_the_available_ones():
    suggested = r"unknown optimizer 'nsga-2' \(did you mean 'nsga2'\?\); available: tpe,"
    with pytest.raises(UsageError, match=suggested):
        get_optimizer("nsga-2")
    with pytest.raises(ValueError, match="unknown optimizer 'annealing'; available: .*cmaes"):
        OptimizerConfig(name="annealing")


def test_a_name_registers_once(diagonal):
    with pytest.raises(ValueError, match="'diagonal' is already registered"):
        register(Diagonal("diagonal", "again", several_objectives="refused", shareable=False))


def test_reading_a_run_config_imports_neither_optuna_nor_cma():
    code = "import sys, evomerge.config; print(sorted({'optuna', 'cma'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported == "[]\n"


def test_the_config_and_the_shared_worker_read_a_registered_optimizers_declarations(
    diagonal, tiny_models, task_dir, tmp_path
):
    data = config_data(tiny_models, task_dir, tmp_path / "run", "diagonal")
    config = config_from_dict(data)
    with pytest.raises(UsageError, match=r"'diagonal' \(the cube's diagonal\) runs in one process"):
        shareable_optimizer(config)
    several = {**data, "objectives": [{"task": "t"}, {"task": "t"}]}
    with pytest.raises(UsageError, match="'diagonal' optimizes one objective but 2 are listed; use one of"):
        config_from_dict(several)
    tpe = config_from_dict({**data, "optimizer": {"name": "tpe"}})
    assert shareable_optimizer(tpe) is get_optimizer("tpe")


def test_a_registered_optimizer_runs_and_resumes_exactly(diagonal, tiny_models, task_dir, tmp_path):
    whole = run_search(config_data(tiny_models, task_dir, tmp_path / "whole", "diagonal", evaluations=5))
    run_search(config_data(tiny_models, task_dir, tmp_path / "parts", "diagonal", evaluations=2))
    resumed = run_search(config_data(tiny_models, task_dir, tmp_path / "parts", "diagonal", evaluations=5))
    assert [t.user_attrs["step"] for t in whole.get_trials()] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in whole.get_trials())
    assert ledger_rows(resumed) == ledger_rows(whole)
