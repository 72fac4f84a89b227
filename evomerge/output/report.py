"""`evomerge report RUN_DIR`: what a run found, in `RUN_DIR/report.md` with its PNG plots beside it.

`report_section` reports one search study, of merge parameters or of a layer stack: its settings, the
held-out table against what its search space measures it by (the baselines of `evomerge baselines`, when they
were run, or each source alone for a layer stack), the best candidate and Pareto points, the plots (written
beside the report, their file names prefixed so that sections of several studies share one directory) and the
best candidate. `write_report` writes a run's report.md from it.

The report only reads the ledger: held-out scores are those the run recorded at its end (or `evomerge score`
since); a row without one shows a dash and the report says how to compute it. So a report is cheap to redo
during a run, and loads no model.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import SEARCH_BEST, RunConfig
from evomerge.errors import UsageError
from evomerge.evaluate.scores import Scores
from evomerge.extras import require
from evomerge.output.model_card import task_description
from evomerge.search.ledger import ELAPSED_ATTR, load_run_study
from evomerge.search.results import (
    Row,
    evaluated_trials,
    held_out_scores,
    objective_values,
    pareto_front,
    reported_trials,
    trial_recipe,
)
from evomerge.search.space import Candidate, SearchSpace, space_of

REPORT_FILE = "report.md"
PROGRESS_PLOT = "progress.png"
PARETO_PLOT = "pareto.png"


def summary_score(config: RunConfig, values: list[float]) -> float:
    """One number per model for tables and plots: the weighted mean of the objectives, minimized ones negated
    (with one maximized objective, its value). Higher is better."""
    signed = [v if o.direction == "maximize" else -v for o, v in zip(config.objectives, values)]
    total = sum(o.weight for o in config.objectives)
    return sum(o.weight * v for o, v in zip(config.objectives, signed)) / total


def candidate_rows(
    config: RunConfig, trials: list[FrozenTrial], front: list[FrozenTrial], held_out: dict[int, Scores]
) -> list[Row]:
    """Rows of the reported trials (the best first, then the Pareto points), named as `export --pick` names
    them: `best`, and `pareto:K` for the K-th point of the front in trial order."""
    position = {t.number: k for k, t in enumerate(front, start=1)} if config.multi_objective else {}
    rows = []
    for index, trial in enumerate(trials):
        names = ["best"] if index == 0 else []
        if trial.number in position:
            names.append(f"pareto:{position[trial.number]}")
        scores = held_out.get(trial.number)
        rows.append(
            Row(
                f"{' / '.join(names)} (trial {trial.number})",
                list(trial.values),
                objective_values(config, scores) if scores else None,
                trial,
            )
        )
    return rows


def results_table(config: RunConfig, rows: list[Row]) -> str:
    """Markdown: each objective on the held-out split, then the mean on held-out and on search."""
    names = [f"{o.task} {o.metric}" for o in config.objectives]
    lines = [
        "| model | " + " | ".join(f"{n} (held-out)" for n in names) + " | mean (held-out) | mean (search) |",
        "| --- |" + " ---: |" * (len(names) + 2),
    ]
    for row in rows:
        held = row.held_out
        cells = [f"{v:.3f}" for v in held] if held else ["–"] * len(names)
        mean_held = f"{summary_score(config, held):.3f}" if held else "–"
        mean_search = f"{summary_score(config, row.search):.3f}"
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {mean_held} | {mean_search} |")
    return "\n".join(lines)


def candidates_table(config: RunConfig, rows: list[Row], order: dict[int, int]) -> str:
    """Markdown: search and held-out value of each objective, merge and evaluation seconds, evaluation
    number."""
    names = [o.task for o in config.objectives]
    lines = [
        "| candidate | "
        + " | ".join(f"{n} search / held-out" for n in names)
        + " | merge s | eval s | found at evaluation |",
        "| --- |" + " ---: |" * (len(names) + 3),
    ]
    for row in rows:
        held = row.held_out or [None] * len(names)
        cells = [f"{s:.3f} / " + (f"{h:.3f}" if h is not None else "–") for s, h in zip(row.search, held)]
        attrs = row.trial.user_attrs
        lines.append(
            f"| {row.name} | "
            + " | ".join(cells)
            + f" | {attrs.get('merge_seconds', 0):.3f} | {attrs.get('eval_seconds', 0):.3f}"
            + f" | {order[row.trial.number]} |"
        )
    return "\n".join(lines)


def write_report(config: RunConfig) -> Path:
    """Write report.md and its plots into the run directory (a section per phase for a hybrid run); returns
    the report's path."""
    from evomerge.search.hybrid import phase_configs

    require("matplotlib", "plots", "writing a run report")

    lines = [f"# Run report: {config.run_dir}", ""]
    studies = []
    if config.hybrid:
        phases = phase_configs(config)
        lines += [
            "A hybrid run: a merge-parameter search, then a layer-stacking search over its best merge "
            f"(`{SEARCH_BEST}`) and the other stack sources, in one ledger.",
            "",
        ]
        for (name, phase), prefix in zip(phases, ("merge_", "stack_"), strict=False):
            lines += [
                f"## {name.capitalize()}",
                "",
                report_section(phase, load_run_study(phase), config.run_dir, prefix, level=3),
            ]
            studies += space_of(phase).studies()
        if len(phases) == 1:
            lines += [
                "## Layer-stacking phase",
                "",
                "Not started yet: it begins when the merge phase has used its budget.",
                "",
            ]
            studies.append(config.stack_study)
    else:
        lines.append(report_section(config, load_run_study(config), config.run_dir))
        studies = space_of(config).studies()
    names = (
        ", ".join(f"`{name}`" for name in studies[:-1]) + " and " * (len(studies) > 1) + f"`{studies[-1]}`"
    )
    lines += [f"Browse every candidate with `optuna-dashboard {config.storage_url}` (studies {names}).", ""]
    path = config.run_dir / REPORT_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def report_section(
    config: RunConfig, study: optuna.Study, directory: Path, plot_prefix: str = "", level: int = 2
) -> str:
    """The report of one search study (merge parameters or layer stacking) as Markdown whose headings are of
    `level`, its plots written into `directory` with file names starting with `plot_prefix`."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise UsageError(f"the run in {config.run_dir} has no completed candidate yet; nothing to report")
    space = space_of(config)
    held_out = held_out_scores(study)
    references = space.reference_rows(study, held_out)
    front = pareto_front(study)
    candidates = candidate_rows(config, reported_trials(config, study), front, held_out)
    best = trial_recipe(candidates[0].trial)
    plots = _plots(
        config, space, directory, plot_prefix, completed, front, held_out, references, candidates[0], best
    )
    order = {t.number: i for i, t in enumerate(evaluated_trials(study), start=1)}
    return _section_text(config, space, study, candidates, references, order, best, plots, "#" * level)


def _plots(
    config: RunConfig,
    space: SearchSpace,
    directory: Path,
    prefix: str,
    completed: list[FrozenTrial],
    front: list[FrozenTrial],
    held_out: dict[int, Scores],
    references: list[Row],
    best_row: Row,
    best: Candidate,
) -> list[tuple[str, str]]:
    """Draw the section's plots; returns (title, file name) of each."""
    from evomerge.output.plots import plot_pareto, plot_progress  # the `plots` extra

    kind = space.reference_kind
    ylabel = f"{'mean objective' if config.multi_objective else config.objectives[0].task} (search split)"
    progress = f"{prefix}{PROGRESS_PLOT}"
    plot_progress(
        directory / progress,
        [summary_score(config, list(t.values)) for t in completed],
        {row.name: summary_score(config, row.search) for row in references},
        ylabel,
    )
    plots = [(f"Best objective against evaluations ({kind} dashed)", progress)]
    if config.multi_objective:
        front_held = [objective_values(config, held_out[t.number]) for t in front if t.number in held_out]
        pareto = f"{prefix}{PARETO_PLOT}"
        plot_pareto(
            directory / pareto,
            [o.task for o in config.objectives],
            {
                "search split": {
                    "all candidates": [tuple(t.values) for t in completed],
                    "Pareto front": [tuple(t.values) for t in front],
                    kind: [tuple(row.search) for row in references],
                },
                "held-out split": {
                    "Pareto front": [tuple(v) for v in front_held],
                    kind: [tuple(row.held_out) for row in references if row.held_out],
                },
            },
        )
        plots.append(("Pareto front, search and held-out split", pareto))
    return plots + space.best_plots(directory, prefix, best, best_row.name)


def _section_text(config, space, study, candidates, references, order, best, plots, h: str) -> str:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    finished = len(evaluated_trials(study))
    merge = sum(t.user_attrs.get("merge_seconds", 0.0) for t in trials)
    evaluate = sum(t.user_attrs.get("eval_seconds", 0.0) for t in trials)
    elapsed = float(study.user_attrs.get(ELAPSED_ATTR, 0.0))
    unscored = (
        []
        if all(row.held_out for row in [*references, *candidates])
        else [
            f"A dash: no held-out score in the ledger yet; `evomerge score {config.run_dir}` computes them.",
            "",
        ]
    )
    lines = [
        *space.settings_lines(),
        f"- optimizer: {config.optimizer.name}, seed {config.seed}; objectives: "
        + ", ".join(f"{o.task}.{o.metric} ({o.direction})" for o in config.objectives),
        *(f"- task `{name}`: {task_description(spec)}" for name, spec in config.tasks.items()),
        f"- evaluations used: {finished}"
        + (f" of {config.budget.evaluations}" if config.budget.evaluations else "")
        + f" ({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} stopped early, "
        f"{count[TrialState.FAIL]} failed); search time {elapsed / 60:.1f} min"
        + f" (merging {merge:.1f} s, scoring {evaluate:.1f} s in all)",
        "",
        "Search scores are what the optimizer saw; held-out scores come from the disjoint held-out split, "
        "which it never saw. The mean is the weighted mean of the objectives.",
        "",
        f"{h} Results on the held-out split",
        "",
        results_table(config, references + candidates[:1]),
        "",
        space.references_text(references),
        "",
        f"{h} Best candidate" + (" and Pareto front" if config.multi_objective else ""),
        "",
        candidates_table(config, candidates, order),
        "",
        *unscored,
        "Export one with `evomerge export RUN_DIR --out DIR --pick best` "
        "(or `--pick pareto:K`, `--trial N`).",
        "",
    ]
    for title, file in plots:
        lines += [f"{h} {title}", "", f"![{title}]({file})", ""]
    lines += [f"{h} Best {space.candidate_heading()}", "", "```yaml", best.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
