"""`evomerge export RUN_DIR --out DIR`: one candidate of a run as a model directory with its card.

The directory is what `evomerge.export.write_model_dir` writes (safetensors, config, generation config,
tokenizer, `recipe.yaml`) for a merge, or `evomerge.stacking.write_stack_dir` for a layer stack (an ordinary
checkpoint, scales folded), plus `README.md` (the model card) and, with `--format mergekit`, `mergekit.yaml`.
The candidate's held-out scores are computed and stored in the ledger first if the ledger has none.
Everything the user could get wrong is checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.dfs import StackRecipe
from evomerge.errors import UsageError
from evomerge.export import check_output_dir, write_model_dir
from evomerge.mergekit import mergekit_yaml
from evomerge.model_card import model_card
from evomerge.search.held_out import record_held_out
from evomerge.search.results import best_trial, evaluated_trials, pareto_front, trial_recipe
from evomerge.search.scoring import CandidateScorer
from evomerge.stacking import write_stack_dir

FORMATS = ("hf", "mergekit")


def pick_trial(config: RunConfig, study: optuna.Study, number: int | None, pick: str) -> tuple[FrozenTrial, str]:
    """The trial to export and how it was chosen: trial `number`, else `pick` = best | pareto:K (K from 1)."""
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if not completed:
        raise UsageError(f"the run in {config.run_dir} has no completed candidate yet; nothing to export")
    if number is not None:
        found = next((t for t in trials if t.number == number), None)
        if found is None:
            raise UsageError(
                f"the run in {config.run_dir} has no trial {number} (its trials are 0 to {len(trials) - 1})"
            )
        if found.state != TrialState.COMPLETE:
            raise UsageError(f"trial {number} did not complete ({found.state.name}); export a completed one")
        return found, f"trial {number}"
    if pick == "best":
        return best_trial(config, completed), "best"
    front = pareto_front(study)
    prefix, _, k = pick.partition(":")
    if prefix != "pareto" or not k.isdigit() or not 1 <= int(k) <= len(front):
        raise UsageError(
            f"--pick {pick!r}: use best, or pareto:K with K from 1 to {len(front)} (the Pareto front in trial order, "
            "as `evomerge report` lists it)"
        )
    return front[int(k) - 1], f"Pareto point {k} of {len(front)}"


def export_candidate(
    config: RunConfig, study: optuna.Study, trial: FrozenTrial, chosen_as: str, out: Path,
    force: bool = False, fmt: str = "hf",
) -> Path:
    """Write the trial's merge or layer stack to `out`; returns `out`."""
    check_output_dir(out, replace=force)
    candidate = trial_recipe(trial)
    scorer = CandidateScorer(config)
    stack = isinstance(candidate, StackRecipe)
    files = {}
    if fmt == "mergekit":
        tensor_names = [] if stack else list(scorer.engine.reference.tensors)
        files["mergekit.yaml"] = mergekit_yaml(candidate, tensor_names)
    held_out = record_held_out(config, study, scorer, [trial])[trial.number]
    evaluations = len(evaluated_trials(study))
    files["README.md"] = model_card(config, trial, candidate, held_out, chosen_as, evaluations)
    if stack:
        write_stack_dir(scorer.engine, candidate, out, files, replace=force)
    else:
        scorer.engine.materialize(candidate, scorer.model)
        write_model_dir(scorer.model, scorer.engine.reference, candidate, out, files, replace=force)
    return out
