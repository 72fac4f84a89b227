"""The PNG plots of a run report, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain numbers and a path, draws one figure and writes it; `report.py` gathers the numbers.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

Point = tuple[float, ...]


def plot_progress(path: Path, scores: list[float], baselines: dict[str, float], ylabel: str) -> None:
    """Each candidate's score in evaluation order, the best so far as a step line, baselines as horizontal lines."""
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

    Series drawn: "all candidates" (grey), "Pareto front" (blue), "baselines" (crosses), whichever are present.
    """
    pairs = list(itertools.combinations(range(len(names)), 2))
    figure, grid = plt.subplots(len(pairs), len(splits), figsize=(5 * len(splits), 4 * len(pairs)), squeeze=False)
    style = {
        "all candidates": {"color": "0.75", "s": 10},
        "Pareto front": {"color": "C0", "s": 28},
        "baselines": {"color": "C3", "s": 40, "marker": "x"},
    }
    for row, (i, j) in enumerate(pairs):
        for column, (split, series) in enumerate(splits.items()):
            axes = grid[row][column]
            for label, points in series.items():
                if points:
                    axes.scatter([p[i] for p in points], [p[j] for p in points], label=label, **style[label])
            axes.set_xlabel(names[i])
            axes.set_ylabel(names[j])
            axes.set_title(split)
            axes.grid(alpha=0.3)
            axes.legend(fontsize=7)
    _save(figure, path)


def plot_heatmap(path: Path, rows: list[str], columns: list[str], values: list[list[float]], title: str) -> None:
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


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
