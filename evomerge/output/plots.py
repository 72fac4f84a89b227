"""The PNG plots of a run report, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain numbers and a path, draws one figure and writes it; `report.py` gathers the numbers.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from evomerge.extras import require

require("matplotlib", "plots", "drawing a report's plots").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib.patches import Patch  # noqa: E402

Point = tuple[float, ...]


def plot_progress(path: Path, scores: list[float], baselines: dict[str, float], ylabel: str) -> None:
    """Each candidate's score in evaluation order, the best so far as a step line, baselines as horizontal
    lines."""
    figure, axes = plt.subplots(figsize=(7, 4))
    evaluations = range(1, len(scores) + 1)
    best = list(itertools.accumulate(scores, max))
    axes.scatter(evaluations, scores, s=10, color="0.6", label="candidate")
    axes.step(evaluations, best, where="post", color="C0", linewidth=2, label="best so far")
    for index, (label, value) in enumerate(baselines.items()):
        axes.axhline(value, linestyle="--", linewidth=1, color=f"C{index + 1}", label=label)
    axes.set_xlabel("evaluations")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3)
    _save(figure, path)


def plot_pareto(
    path: Path,
    names: list[str],
    splits: dict[str, dict[str, list[Point]]],
) -> None:
    """One row per pair of objectives, one column per split; each split maps a series name to its points.

    "all candidates" are drawn grey, "Pareto front" blue, any other series (baselines, each source alone) as
    crosses.
    """
    pairs = list(itertools.combinations(range(len(names)), 2))
    figure, grid = plt.subplots(
        len(pairs), len(splits), figsize=(5 * len(splits), 4 * len(pairs)), squeeze=False
    )
    style = {"all candidates": {"color": "0.75", "s": 10}, "Pareto front": {"color": "C0", "s": 28}}
    reference = {"color": "C3", "s": 40, "marker": "x"}
    for row, (i, j) in enumerate(pairs):
        for column, (split, series) in enumerate(splits.items()):
            axes = grid[row][column]
            for label, points in series.items():
                if points:
                    xs, ys = [p[i] for p in points], [p[j] for p in points]
                    axes.scatter(xs, ys, label=label, **style.get(label, reference))
            axes.set_xlabel(names[i])
            axes.set_ylabel(names[j])
            axes.set_title(split)
            axes.grid(alpha=0.3)
            axes.legend(fontsize=7)
    _save(figure, path)


def plot_heatmap(
    path: Path, rows: list[str], columns: list[str], values: list[list[float]], title: str
) -> None:
    """A heat map with the value written in every cell."""
    figure, axes = plt.subplots(figsize=(1.2 * len(columns) + 4, 0.45 * len(rows) + 1.5))
    image = axes.imshow(values, aspect="auto", cmap="viridis")
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows)
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            color = "black" if image.norm(value) > 0.6 else "white"
            axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    _save(figure, path)


def plot_stack(path: Path, layers: list[tuple[int, int, float]], sources: list[str], title: str) -> None:
    """A stack's layers in order, each (source index, source layer, scale) a bar: its height the scale, its
    colour the source, the source layer written above it."""
    figure, axes = plt.subplots(figsize=(max(6.0, 0.4 * len(layers) + 2), 4))
    positions = range(len(layers))
    scales = [scale for _, _, scale in layers]
    axes.bar(positions, scales, color=[f"C{source % 10}" for source, _, _ in layers])
    for position, (_, layer, scale) in zip(positions, layers):
        axes.text(position, scale, f"L{layer}", ha="center", va="bottom", fontsize=8)
    axes.axhline(1.0, linestyle=":", linewidth=1, color="0.4")
    axes.set_ylim(0, 1.2 * max(1.0, *scales))
    axes.set_xticks(list(positions), [str(p) for p in positions])
    axes.set_xlabel("layer of the stack (Lk: layer k of its source)")
    axes.set_ylabel("scale of the layer's input")
    handles = [Patch(color=f"C{i % 10}", label=f"source {i}: {name}") for i, name in enumerate(sources)]
    axes.legend(handles=handles, fontsize=7, loc="upper right")
    axes.set_title(title)
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
