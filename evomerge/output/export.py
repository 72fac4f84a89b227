"""`evomerge export RUN_DIR --out DIR`: one candidate of a run as a model directory with its card.

The directory is what the run's search space exports (`SearchSpace.export`: safetensors, config, generation
config, tokenizer, `recipe.yaml`; a layer stack as an ordinary checkpoint, scales folded), plus `README.md`
(the model card, with the held-out scores the ledger holds) and, with `--format mergekit`, `mergekit.yaml`.
Export loads the run's models but scores nothing: held-out scores are recorded by the run, or by
`evomerge score`. Everything the user could get wrong is checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig
from evomerge.errors import UsageError
from evomerge.output.model_card import model_card
from evomerge.output.model_dir import check_output_dir
from evomerge.search.results import best_trial, evaluated_trials, held_out_scores, pareto_front, trial_recipe
from evomerge.search.space import space_of

FORMATS = ("hf", "mergekit")


def pick_trial(
    config: RunConfig, study: optuna.Study, number: int | None, pick: str
) -> tuple[FrozenTrial, str]:
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
            f"--pick {pick!r}: use best, or pareto:K with K from 1 to {len(front)} (the Pareto front in "
            "trial order, as `evomerge report` lists it)"
        )
    return front[int(k) - 1], f"Pareto point {k} of {len(front)}"


def export_candidate(
    config: RunConfig,
    study: optuna.Study,
    trial: FrozenTrial,
    chosen_as: str,
    out: Path,
    force: bool = False,
    fmt: str = "hf",
) -> Path:
    """Write the trial's merge or layer stack to `out`; returns `out`."""
    check_output_dir(out, replace=force)
    candidate = trial_recipe(trial)
    space = space_of(config)
    engine = space.load_engine()
    files = {}
    if fmt == "mergekit":
        files["mergekit.yaml"] = space.mergekit_yaml(candidate, engine)
    held_out = held_out_scores(study).get(trial.number)
    evaluations = len(evaluated_trials(study))
    files["README.md"] = model_card(config, trial, candidate, held_out, chosen_as, evaluations)
    space.export(engine, candidate, out, files, replace=force)
    return out
