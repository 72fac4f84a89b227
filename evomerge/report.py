"""`evomerge report RUN_DIR`: what a run found, in `RUN_DIR/report.md` with its PNG plots beside it.

`report_section` reports one search study, of merge parameters or of a layer stack: its settings, the
held-out table against what it is measured by (the baselines of `evomerge baselines`, when they were run, or
each source alone for a layer stack: the stack search's first candidates), the best candidate and Pareto
points, the plots (written beside the report, their file names prefixed so that sections of several studies
share one directory) and the best recipe. `write_report` writes a run's report.md from it.

The rows shown are scored on the held-out split first where the ledger has no held-out record for them yet
(and the records are stored), so every number in the tables has its held-out twin. Nothing else is computed:
the report is cheap to redo during a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import SEARCH_BEST, RunConfig
from evomerge.dfs import StackRecipe
from evomerge.errors import UsageError
from evomerge.evaluate.tasks import Scores
from evomerge.extras import require
from evomerge.model_card import task_description
from evomerge.recipe import Recipe, resolve_value
from evomerge.search.baselines import BaselineResult, load_baselines
from evomerge.search.held_out import record_held_out
from evomerge.search.ledger import ELAPSED_ATTR, load_run_study
from evomerge.search.results import evaluated_trials, pareto_front, reported_trials, seed_trials, trial_recipe
from evomerge.search.scoring import CandidateScorer
from evomerge.search.space import Candidate
from evomerge.sources import source_name
from evomerge.stacking import source_label

REPORT_FILE = "report.md"
PROGRESS_PLOT = "progress.png"
PARETO_PLOT = "pareto.png"
RECIPE_PLOT = "best_recipe.png"
STACK_PLOT = "best_stack.png"


@dataclass(frozen=True)
class Row:
    """One model of a results table: its objective values on the search split and, if scored, the held-out one."""

    name: str
    search: list[float]
    held_out: list[float] | None
    trial: FrozenTrial | None = None


def objective_values(config: RunConfig, scores: Scores) -> list[float]:
    return [scores[o.task][o.metric] for o in config.objectives]


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
        rows.append(Row(f"{' / '.join(names)} (trial {trial.number})", list(trial.values),
                        objective_values(config, scores) if scores else None, trial))
    return rows


def baseline_rows(config: RunConfig, baselines: list[BaselineResult]) -> list[Row]:
    return [
        Row(result.label, list(result.trial.values),
            objective_values(config, result.held_out) if result.held_out else None, result.trial)
        for result in baselines
    ]


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
    """Markdown: search and held-out value of each objective, merge and evaluation seconds, evaluation number."""
    names = [o.task for o in config.objectives]
    lines = [
        "| candidate | " + " | ".join(f"{n} search / held-out" for n in names)
        + " | merge s | eval s | found at evaluation |",
        "| --- |" + " ---: |" * (len(names) + 3),
    ]
    for row in rows:
        held = row.held_out or [None] * len(names)
        cells = [f"{s:.3f} / " + (f"{h:.3f}" if h is not None else "–") for s, h in zip(row.search, held)]
        attrs = row.trial.user_attrs
        lines.append(
            f"| {row.name} | " + " | ".join(cells)
            + f" | {attrs.get('merge_seconds', 0):.3f} | {attrs.get('eval_seconds', 0):.3f}"
            + f" | {order[row.trial.number]} |"
        )
    return "\n".join(lines)


def recipe_grid(recipe: Recipe) -> tuple[list[str], list[str], list[list[float]]]:
    """The recipe's numeric parameters resolved per layer: (row labels, column labels, values).

    The layer count is the longest per-layer list in the recipe (one column, "every layer", when it has none).
    """
    found: list[tuple[str, Any]] = [
        (f"{source_name(s.model)} {name}", value) for s in recipe.sources for name, value in s.parameters.items()
    ]
    found += list(recipe.parameters.items())
    found = [(label, value) for label, value in found if not isinstance(value, bool)]
    layers = max([len(v) for v in _layer_lists(found)], default=1)
    rows, values = [], []
    for label, value in found:
        kinds = sorted(value, key=lambda k: k == "default") if _by_kind(value) else [None]
        for kind in kinds:
            rows.append(label if kind is None else f"{label} [{kind}]")
            inner = value[kind] if kind is not None else value
            values.append([float(resolve_value(inner, layer, "mlp", layers)) for layer in range(layers)])
    columns = [f"layer {i}" for i in range(layers)] if layers > 1 else ["every layer"]
    return rows, columns, values


def _by_kind(value: Any) -> bool:
    return isinstance(value, dict) and "gradient" not in value


def _layer_lists(found: list[tuple[str, Any]]) -> list[list]:
    lists = []
    for _, value in found:
        inner = value.values() if _by_kind(value) else [value]
        lists += [v for v in inner if isinstance(v, list)]
    return lists


def sources_alone(config: RunConfig, study: optuna.Study) -> dict[int, FrozenTrial]:
    """A layer-stacking run's completed trial of each source alone (its first seeds), by source index; none
    for a merge run."""
    if config.stack is None:
        return {}
    return {index: t for index, t in seed_trials(config, study).items() if index < len(config.stack.sources)}


def source_rows(config: RunConfig, alone: dict[int, FrozenTrial], held_out: dict[int, Scores]) -> list[Row]:
    """Rows of each source alone (`sources_alone`) in a layer-stacking run."""
    rows = []
    for index, trial in sorted(alone.items()):
        scores = held_out.get(trial.number)
        name = f"{source_label(config.stack.sources[index], short=True)} alone (trial {trial.number})"
        held = objective_values(config, scores) if scores else None
        rows.append(Row(name, list(trial.values), held, trial))
    return rows


def write_report(config: RunConfig, scorer: CandidateScorer | None = None) -> Path:
    """Write report.md and its plots into the run directory (a section per phase for a hybrid run); returns the
    report's path."""
    from evomerge.search.hybrid import phase_configs

    require("matplotlib", "plots", "writing a run report")  # before held-out scoring, which can take minutes

    lines = [f"# Run report: {config.run_dir}", ""]
    if config.hybrid:
        phases = phase_configs(config)
        lines += [
            "A hybrid run: a merge-parameter search, then a layer-stacking search over its best merge "
            f"(`{SEARCH_BEST}`) and the other stack sources, in one ledger.",
            "",
        ]
        for (name, phase), prefix in zip(phases, ("merge_", "stack_"), strict=False):
            lines += [f"## {name.capitalize()}", "",
                      report_section(phase, load_run_study(phase), config.run_dir, prefix, level=3)]
        if len(phases) == 1:
            lines += ["## Layer-stacking phase", "", "Not started yet: it begins when the merge phase has used "
                      "its budget.", ""]
        studies = f"`{config.study}`, `{config.stack_study}` and `baselines`"
    else:
        lines.append(report_section(config, load_run_study(config), config.run_dir, scorer=scorer))
        studies = f"`{config.study}`" + (" and `baselines`" if config.stack is None else "")
    lines += [f"Browse every candidate with `optuna-dashboard {config.storage_url}` (studies {studies}).", ""]
    path = config.run_dir / REPORT_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def report_section(
    config: RunConfig,
    study: optuna.Study,
    directory: Path,
    plot_prefix: str = "",
    scorer: CandidateScorer | None = None,
    level: int = 2,
) -> str:
    """The report of one search study (merge parameters or layer stacking) as Markdown whose headings are of
    `level`, its plots written into `directory` with file names starting with `plot_prefix`.

    Held-out scores the ledger lacks for the rows shown are computed first (with `scorer`, else one built
    for the purpose) and stored.
    """
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise UsageError(f"the run in {config.run_dir} has no completed candidate yet; nothing to report")
    reported = reported_trials(config, study)
    alone = sources_alone(config, study)
    held_out = record_held_out(config, study, scorer, [*reported, *alone.values()])
    if config.stack is None:
        references = baseline_rows(config, load_baselines(config))
    else:
        references = source_rows(config, alone, held_out)
    front = pareto_front(study)
    candidates = candidate_rows(config, reported, front, held_out)
    best = trial_recipe(candidates[0].trial)
    plots = _plots(
        config, directory, plot_prefix, completed, front, held_out, references, candidates[0], best
    )
    order = {t.number: i for i, t in enumerate(evaluated_trials(study), start=1)}
    return _section_text(config, study, candidates, references, order, best, plots, "#" * level)


def _plots(
    config: RunConfig,
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
    from evomerge.plots import plot_heatmap, plot_pareto, plot_progress, plot_stack  # the `plots` extra

    kind = "each source alone" if config.stack is not None else "baselines"
    ylabel = f"{'mean objective' if config.multi_objective else config.objectives[0].task} (search split)"
    progress = f"{prefix}{PROGRESS_PLOT}"
    plot_progress(
        directory / progress, [summary_score(config, list(t.values)) for t in completed],
        {row.name: summary_score(config, row.search) for row in references}, ylabel,
    )
    plots = [(f"Best objective against evaluations ({kind} dashed)", progress)]
    if config.multi_objective:
        front_held = [objective_values(config, held_out[t.number]) for t in front if t.number in held_out]
        pareto = f"{prefix}{PARETO_PLOT}"
        plot_pareto(
            directory / pareto, [o.task for o in config.objectives],
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
    if isinstance(best, StackRecipe):
        drawn = f"{prefix}{STACK_PLOT}"
        layers = [(layer.source, layer.layer, layer.scale) for layer in best.layers]
        names = [source_label(ref, short=True) for ref in best.sources]
        plot_stack(directory / drawn, layers, names, f"{len(best.layers)} layers: {best_row.name}")
        return [*plots, ("The best stack: each layer's source, source layer and input scale", drawn)]
    rows, columns, values = recipe_grid(best)
    if rows:
        drawn = f"{prefix}{RECIPE_PLOT}"
        plot_heatmap(directory / drawn, rows, columns, values, f"{best.method}: {best_row.name}")
        plots.append(("Parameters of the best recipe by layer", drawn))
    return plots


def _settings(config: RunConfig) -> list[str]:
    """The lines saying what the study searched: the merge and its genome, or the stack's layout."""
    if config.stack is None:
        recipe = config.recipe
        return [
            f"- merge: `{recipe.method}` of {', '.join(s.model for s in recipe.sources)}"
            + (f" over base {recipe.base}" if recipe.base else ""),
            "- searched: "
            + ", ".join(f"{g.param} ({g.granularity}, {g.low:g}..{g.high:g})" for g in config.genome),
        ]
    space = config.stack
    sources = ", ".join(f"source {index} {source_label(ref)}" for index, ref in enumerate(space.sources))
    scales = (
        f"input scale of each layer {space.scale_low:g}..{space.scale_high:g}" if space.searches_scales
        else f"no scale searched (every scale {space.scale_low:g})"
    )
    return [
        f"- layer stack of: {sources}; embeddings, final norm and head of source {space.embeddings}",
        f"- searched: which layers, in order, of the sources' layers laid out {space.repeats} times; depth "
        f"{space.min_depth}..{space.max_depth or 'every slot'}; {scales}",
    ]


def _section_text(config, study, candidates, references, order, best, plots, h: str) -> str:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    finished = len(evaluated_trials(study))
    merge = sum(t.user_attrs.get("merge_seconds", 0.0) for t in trials)
    evaluate = sum(t.user_attrs.get("eval_seconds", 0.0) for t in trials)
    elapsed = float(study.user_attrs.get(ELAPSED_ATTR, 0.0))
    if config.stack is not None:
        references_text = (
            "Each source alone: the search's first candidates, each source's own layers in order (scale 1) "
            f"under the embeddings, final norm and head of source {config.stack.embeddings}."
        )
    elif references:
        references_text = (
            "Baselines: each family's global setting was chosen on the search split from a small grid "
            "(`evomerge/search/baselines.py`); every grid point is a trial of the study `baselines` in this "
            "ledger."
        )
    else:
        references_text = (
            f"No baselines in this run's ledger yet: `evomerge baselines {config.run_dir}` adds them."
        )
    lines = [
        *_settings(config),
        f"- optimizer: {config.optimizer.name}, seed {config.seed}; objectives: "
        + ", ".join(f"{o.task}.{o.metric} ({o.direction})" for o in config.objectives),
        *(f"- task `{name}`: {task_description(spec)}" for name, spec in config.tasks.items()),
        f"- evaluations used: {finished}" + (f" of {config.budget.evaluations}" if config.budget.evaluations else "")
        + f" ({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} stopped early, "
        f"{count[TrialState.FAIL]} failed); search time {elapsed / 60:.1f} min"
        + f" (merging {merge:.1f} s, scoring {evaluate:.1f} s in all)",
        "",
        "Search scores are what the optimizer saw; held-out scores come from the disjoint held-out split, which "
        "it never saw. The mean is the weighted mean of the objectives.",
        "",
        f"{h} Results on the held-out split",
        "",
        results_table(config, references + candidates[:1]),
        "",
        references_text,
        "",
        f"{h} Best candidate" + (" and Pareto front" if config.multi_objective else ""),
        "",
        candidates_table(config, candidates, order),
        "",
        "Export one with `evomerge export RUN_DIR --out DIR --pick best` (or `--pick pareto:K`, `--trial N`).",
        "",
    ]
    for title, file in plots:
        lines += [f"{h} {title}", "", f"![{title}]({file})", ""]
    lines += [
        f"{h} Best {'stack ' if isinstance(best, StackRecipe) else ''}recipe",
        "",
        "```yaml",
        best.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
