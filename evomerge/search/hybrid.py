"""A hybrid run: the merge-parameter search, then a layer-stacking search over its best merge.

As in "Evolutionary Optimization of Model Merging Recipes" (Akiba et al., 2024), the data-flow search stacks
the layers of the parameter-space search's best merge and of other sources. Both phases live in one run
directory and one ledger, as two studies: the run's study (the merge phase) and `NAME-stack` (the stacking
phase, RunConfig.stack_phase). Each phase is an ordinary run with its own exact resume; the stacking phase's
study is only made once the merge phase has used its budget, so its existence says the merge phase is over,
and a resumed run goes straight on with it. The best merge is chosen on the search split (best_trial), never
on held-out scores.
"""

from __future__ import annotations

import gc

import optuna
from optuna.trial import TrialState

from evomerge.config import RunConfig
from evomerge.errors import UsageError
from evomerge.merge.recipe import Recipe
from evomerge.search.held_out import record_held_out
from evomerge.search.ledger import load_run_study
from evomerge.search.results import best_trial, evaluated_trials, trial_recipe
from evomerge.search.storage import open_storage, study_names


class HybridSearch:
    """Runs (or resumes) both phases of a hybrid run in order."""

    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        if not config.hybrid:
            raise ValueError("HybridSearch needs a hybrid run config (recipe, genome and stack)")
        self.config = config
        self.progress = progress

    def run(self) -> optuna.Study:
        """The stacking phase's study, after both phases have used their budgets."""
        from evomerge.search.loop import Search

        merge = self.config.merge_phase()
        if stack_phase_started(self.config):
            check_merge_phase_over(merge)
        else:
            Search(merge, progress=self.progress).run()
            gc.collect()  # the merge phase's resident models go before the stacking phase loads its own
        return Search(self.config.stack_phase(best_merge(merge)), progress=self.progress).run()


def stack_phase_started(config: RunConfig) -> bool:
    if config.storage is None and not config.ledger_path.is_file():
        return False  # a run not started yet: no ledger to open (opening one would make it)
    return config.stack_study in study_names(open_storage(config.storage_url))


def check_merge_phase_over(merge: RunConfig) -> None:
    """Refuse a larger merge-phase budget once the stacking phase has started from the merge phase's best."""
    limit = merge.budget.evaluations
    if limit is not None and len(evaluated_trials(load_run_study(merge))) < limit:
        raise UsageError(
            f"the layer-stacking phase of the run in {merge.run_dir} has started from its merge phase's "
            "best, so the merge phase cannot be extended; raise the stacking phase's budget (--stack-budget) "
            "or start a new run directory"
        )


def best_merge(merge: RunConfig) -> Recipe:
    """The best recipe of the merge phase, by its search scores."""
    study = load_run_study(merge)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise UsageError(
            f"the merge phase of the run in {merge.run_dir} completed no candidate, so there is no merge to "
            "stack; see run.log for why its candidates failed"
        )
    recipe = trial_recipe(best_trial(merge, completed))
    assert isinstance(recipe, Recipe)
    return recipe


def phase_configs(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """The run's phases that have started, named: the run itself, or a hybrid's merge and stacking phases."""
    if not config.hybrid:
        return [("", config)]
    merge = config.merge_phase()
    phases = [("merge phase", merge)]
    if stack_phase_started(config):
        phases.append(("layer-stacking phase", config.stack_phase(best_merge(merge))))
    return phases


def exported_phase(config: RunConfig, phase: str | None) -> RunConfig:
    """The run config of the study to export from: the run's, or the chosen phase's of a hybrid run (`merge`,
    or by default `stack`, the final models)."""
    if not config.hybrid:
        if phase is not None:
            raise UsageError("--phase: only a hybrid run (recipe, genome and stack) has phases; drop it")
        return config
    phases = dict(phase_configs(config))
    name = "merge phase" if phase == "merge" else "layer-stacking phase"
    if name not in phases:
        raise UsageError(
            f"the layer-stacking phase of the run in {config.run_dir} has not started yet; export the merge "
            "phase's best with --phase merge"
        )
    return phases[name]


def run_status_text(config: RunConfig) -> str:
    """`evomerge status`: the run's status, or each phase's under its name for a hybrid run."""
    from evomerge.search.status import status_text

    if not config.hybrid:
        return status_text(config)
    phases = phase_configs(config)
    texts = [f"== {name} ==\n{status_text(phase)}" for name, phase in phases]
    if len(phases) == 1:
        texts.append(
            "== layer-stacking phase ==\nnot started: it begins when the merge phase has used its budget"
        )
    return "\n\n".join(texts)


def record_run_held_out(config: RunConfig) -> None:
    """`record_held_out` in each phase of a run (one, or a hybrid's two): the trials it shows."""
    for _, phase in phase_configs(config):
        record_held_out(phase, load_run_study(phase))


def record_trials_held_out(config: RunConfig, numbers: list[int], phase: str | None = None) -> None:
    """Score the completed trials `numbers` (of a hybrid run's `phase`: merge, or by default stack) on the
    held-out split where the ledger has no score for them yet; UsageError naming any that is not one."""
    phase_config = exported_phase(config, phase)
    study = load_run_study(phase_config)
    completed = {t.number: t for t in study.get_trials(deepcopy=False) if t.values is not None}
    missing = sorted(set(numbers) - set(completed))
    if missing:
        raise UsageError(
            f"--trial {', '.join(map(str, missing))}: no completed trial of that number in the run in "
            f"{config.run_dir}; `evomerge status` lists them"
        )
    record_held_out(phase_config, study, trials=[completed[number] for number in numbers])
