"""The usual hand-tuned merges of a run's sources, scored like its candidates, to judge whether a search paid.

`evomerge baselines CONFIG` (and the demo) merges the run's base and sources the usual ways: each source
alone, the uniform average, and task arithmetic, TIES and DARE-TIES with one global setting each, chosen by a
small grid on the search split. Every grid point is a trial of its own Optuna study (`BASELINES_STUDY`) in the
run's storage, beside the search's study: it never counts against the search's budget nor enters its
optimizer's history. The chosen setting of each family is scored on the held-out split, stored like the
search's held-out records (study user attribute `held_out.N`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from evomerge.config import RunConfig
from evomerge.errors import MergeFailure, UsageError
from evomerge.evaluate.scores import Scores
from evomerge.merge.recipe import Recipe, recipe_from_dict
from evomerge.search.ledger import open_storage, open_study
from evomerge.search.results import (
    HELD_OUT_PREFIX,
    Row,
    best_trial,
    held_out_scores,
    objective_values,
    trial_recipe,
)
from evomerge.sources import source_name

if TYPE_CHECKING:
    from evomerge.search.scoring import CandidateScorer

BASELINES_STUDY = "baselines"
FAMILY_ATTR = "family"
LABEL_ATTR = "label"

#: The global settings grid-searched per family: few enough that all baselines of the demo take seconds.
#: TIES and DARE-TIES sum the agreeing task vectors (`normalize: false`) and tune the scale instead:
#: dividing by the agreeing weights shrinks each task vector to a fraction of its strength, which is only a
#: smaller scale, and fails where a task vector must act at full strength, as on the tiny zoo (docs/zoo.md).
TASK_ARITHMETIC_GRID = {"scale": (0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4)}
TIES_GRID = {"density": (0.3, 0.5, 0.7, 0.9), "scale": (0.9, 1.0, 1.1), "normalize": (False,)}
DARE_TIES_GRID = {"drop": (0.1, 0.3, 0.5, 0.7), "scale": (0.9, 1.0, 1.1), "normalize": (False,)}


@dataclass(frozen=True)
class Baseline:
    family: str
    label: str
    recipe: Recipe


@dataclass(frozen=True)
class BaselineResult:
    """The chosen setting of one family: its trial (search scores in `user_attrs["scores"]`) and held-out
    scores."""

    family: str
    label: str
    trial: FrozenTrial
    held_out: Scores | None


def baseline_grid(template: Recipe) -> list[Baseline]:
    """Every merge the baselines score, over the template's base and sources (same order, same seed)."""
    common = {
        "base": template.base,
        "seed": template.seed,
        **({"dtype": template.dtype} if template.dtype else {}),
    }
    refs = [source.model for source in template.sources]

    def recipe(
        method: str, parameters: dict, weights: list[float] | None = None, per_source: dict | None = None
    ):
        sources = [
            {"model": ref, **({"weight": weights[i]} if weights else {}), **(per_source or {})}
            for i, ref in enumerate(refs)
        ]
        return recipe_from_dict({"method": method, **common, "sources": sources, "parameters": parameters})

    grid = [
        Baseline(
            f"{source_name(ref)} alone",
            f"{source_name(ref)} alone",
            recipe("linear", {}, [1.0 if j == i else 0.0 for j in range(len(refs))]),
        )
        for i, ref in enumerate(refs)
    ]
    grid.append(Baseline("uniform average", "uniform average", recipe("linear", {})))
    if template.base is None:
        return grid
    for family, method, settings in (
        ("task arithmetic", "task_arithmetic", TASK_ARITHMETIC_GRID),
        ("TIES", "ties", TIES_GRID),
        ("DARE-TIES", "dare_ties", DARE_TIES_GRID),
    ):
        for values in itertools.product(*settings.values()):
            setting = dict(zip(settings, values))
            per_source = {k: v for k, v in setting.items() if k in ("density", "drop")}
            parameters = {k: v for k, v in setting.items() if k not in per_source}
            label = f"{family} " + " ".join(f"{k}={v}" for k, v in setting.items())
            grid.append(Baseline(family, label, recipe(method, parameters, per_source=per_source)))
    return grid


def run_baselines(
    config: RunConfig, progress: bool = True, scorer: CandidateScorer | None = None
) -> list[BaselineResult]:
    """Score every baseline not in the ledger yet, then the chosen one of each family on the held-out split
    (of a hybrid run: its merge phase's).

    `scorer` is a resident one of this config when the caller has it (the demo); otherwise one is built, and
    only if something is left to score. Rerunning scores nothing twice.
    """
    from evomerge.search.scoring import CandidateScorer

    if config.recipe is None:
        raise UsageError(
            "evomerge baselines does not handle layer-stacking (stack:) runs: its baselines are merges of a "
            "run's recipe; `evomerge report RUN_DIR` compares the best stack with each source alone"
        )
    if config.hybrid:
        config = config.merge_phase()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    study, _ = open_study(config.model_copy(update={"study": BASELINES_STUDY}))
    done = {t.user_attrs[LABEL_ATTR] for t in study.get_trials(deepcopy=False)}
    todo = [b for b in baseline_grid(config.recipe) if b.label not in done]
    for baseline in tqdm(todo, desc="baselines", unit="merge", disable=not progress or None):
        scorer = scorer or CandidateScorer(config)
        study.add_trial(_scored_trial(config, scorer, baseline))
    held_out = held_out_scores(study)
    for result in chosen_baselines(config, study):
        if result.trial.number not in held_out:
            scorer = scorer or CandidateScorer(config)
            held_out = scorer.score(trial_recipe(result.trial), "held_out")
            study.set_user_attr(f"{HELD_OUT_PREFIX}{result.trial.number}", held_out)
    return chosen_baselines(config, study)


def _scored_trial(config: RunConfig, scorer: CandidateScorer, baseline: Baseline) -> FrozenTrial:
    attrs = {FAMILY_ATTR: baseline.family, LABEL_ATTR: baseline.label, "recipe": baseline.recipe.to_yaml()}
    try:
        scores = scorer.score(baseline.recipe, "search")
    except MergeFailure as error:
        return optuna.trial.create_trial(
            state=TrialState.FAIL, user_attrs={**attrs, "failure_reason": str(error)}
        )
    values = [scores[o.task][o.metric] for o in config.objectives]
    return optuna.trial.create_trial(values=values, user_attrs={**attrs, "scores": scores})


def chosen_baselines(config: RunConfig, study: optuna.Study) -> list[BaselineResult]:
    """The best completed trial of each family on the search split (by the run's scalarization), in grid
    order."""
    held_out = held_out_scores(study)
    families: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        families.setdefault(trial.user_attrs[FAMILY_ATTR], []).append(trial)
    results = []
    for family, trials in families.items():
        chosen = best_trial(config, trials)
        results.append(
            BaselineResult(family, chosen.user_attrs[LABEL_ATTR], chosen, held_out.get(chosen.number))
        )
    return results


def load_baselines(config: RunConfig) -> list[BaselineResult]:
    """The chosen baselines recorded in a run's storage; empty when `evomerge baselines` has not run there."""
    storage = open_storage(config.storage_url)
    if BASELINES_STUDY not in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        return []
    return chosen_baselines(config, optuna.load_study(study_name=BASELINES_STUDY, storage=storage))


def baseline_rows(config: RunConfig, baselines: list[BaselineResult]) -> list[Row]:
    """Results-table rows of the chosen baselines."""
    return [
        Row(
            result.label,
            list(result.trial.values),
            objective_values(config, result.held_out) if result.held_out else None,
            result.trial,
        )
        for result in baselines
    ]
