"""mergekit configurations of every form evomerge reads, over tiny models, and how far mergekit's tensors are
from evomerge's: for tests/test_mergekit_input.py and experiments/mergekit_input_agreement.py.

Each config is merged three ways: by evomerge (`evomerge merge CONFIG`), by mergekit (`mergekit-yaml CONFIG`),
and by mergekit from the config evomerge's export writes of the candidate it read (`export --format
mergekit`). mergekit runs in its own virtual environment (experiments/setup_mergekit.sh makes
`.mergekit-venv`; or $MERGEKIT_YAML names a mergekit-yaml), all merges in one process
(tests/mergekit_batch.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from evomerge.output.mergekit import recipe_mergekit_yaml, stack_mergekit_yaml
from evomerge.search.space import space_class_of
from evomerge.sources import load_model
from evomerge.stack.recipe import StackRecipe

ROOT = Path(__file__).resolve().parents[1]
#: Forms whose tensors mergekit draws at random (DARE's drops): their distance is a figure, not a check.
RANDOM = ("dare_ties",)


def mergekit_python() -> Path | None:
    """The Python of mergekit's virtual environment, if mergekit is installed."""
    executable = Path(os.environ.get("MERGEKIT_YAML", ROOT / ".mergekit-venv" / "bin" / "mergekit-yaml"))
    return executable.parent / "python" if executable.is_file() else None


def configs(models: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """One mergekit config per form evomerge reads, over the models base, a, b and c (tiny Llamas of two
    layers saved in float32)."""
    base, a, b, c = (str(models[name]) for name in ("base", "a", "b", "c"))
    return {
        "linear": {  # filters, a gradient under a filter, normalize
            "merge_method": "linear",
            "models": [
                {
                    "model": a,
                    "parameters": {
                        "weight": [
                            {"filter": "self_attn", "value": [0.1, 0.8]},
                            {"filter": "mlp", "value": 0.3},
                            {"value": 0.5},
                        ]
                    },
                },
                {"model": b, "parameters": {"weight": 0.6}},
            ],
            "parameters": {"normalize": True},
        },
        "task_arithmetic": {  # a global per-model weight (a gradient), lambda
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": a, "parameters": {"weight": 0.7}}, {"model": b}],
            "parameters": {"weight": [0.4, 0.2], "lambda": 0.9},
        },
        "ties": {  # a gradient weight, dtype, the base's tokenizer
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": [0.2, 0.9], "density": 0.5}},
                {"model": b, "parameters": {"weight": 0.7, "density": 0.7}},
            ],
            "dtype": "float32",
            "tokenizer_source": "base",
        },
        "ties_slices": {  # a per-slice merge; a slice of one layer reads its gradients at t = 1
            "merge_method": "ties",
            "base_model": base,
            "slices": [
                {
                    "sources": [
                        {"model": a, "layer_range": [lo, lo + 1], "parameters": params_a},
                        {"model": b, "layer_range": [lo, lo + 1], "parameters": params_b},
                        {"model": base, "layer_range": [lo, lo + 1]},
                    ]
                }
                for lo, params_a, params_b in (
                    (0, {"weight": 0.3, "density": 0.6}, {"weight": 0.8, "density": [0.2, 0.9]}),
                    (1, {"weight": 0.9, "density": 0.5}, {"weight": 0.1, "density": 0.4}),
                )
            ],
        },
        "breadcrumbs": {  # gamma; a model without density keeps its tensors whole (no outliers removed)
            "merge_method": "breadcrumbs",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.6, "density": 0.8, "gamma": 0.05}},
                {"model": b, "parameters": {"weight": 0.5}},
            ],
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.6, "density": 0.7, "gamma": 0.1}},
                {"model": b, "parameters": {"weight": 0.5, "density": 0.9}},
            ],
        },
        "dare_ties_whole": {  # DARE keeping everything: no random draw
            "merge_method": "dare_ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.6, "density": 1.0}},
                {"model": b, "parameters": {"weight": 0.4}},
            ],
        },
        "dare_ties": {
            "merge_method": "dare_ties",
            "base_model": base,
            "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (a, b)],
        },
        "slerp": {  # mergekit's own example: t by filter, gradients of five points
            "merge_method": "slerp",
            "base_model": a,
            "slices": [{"sources": [{"model": m, "layer_range": [0, 2]} for m in (a, b)]}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
            "dtype": "float32",
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": m} for m in (a, b, c)],
        },
        "passthrough": {  # one model, its MLP halved
            "merge_method": "passthrough",
            "models": [
                {"model": b, "parameters": {"scale": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}}
            ],
        },
        "frankenmerge": {  # a layer stack
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": a, "layer_range": [0, 2]}]},
                {"sources": [{"model": b, "layer_range": [1, 2]}]},
                {"sources": [{"model": a, "layer_range": [1, 2]}]},
            ],
        },
    }


def agreement(models: dict[str, Path], workdir: Path, python: Path) -> dict[str, dict[str, float]]:
    """Per config: the largest absolute difference of any tensor between evomerge's merge and mergekit's of
    the same config (`mergekit`), and mergekit's of the config evomerge exports (`round_trip`)."""
    batch = []
    for name, config in configs(models).items():
        data = workdir / f"{name}.yaml"
        data.write_text(yaml.safe_dump(config), encoding="utf-8")
        space = space_class_of(config)
        candidate = space.parse(config, name)
        space.write(candidate, workdir / f"evomerge-{name}", device="cpu")
        exported = workdir / f"{name}-exported.yaml"
        exported.write_text(_exported(candidate), encoding="utf-8")
        batch += [data, workdir / f"mergekit-{name}", exported, workdir / f"round-trip-{name}"]
    subprocess.run(
        [str(python), str(ROOT / "tests" / "mergekit_batch.py"), *map(str, batch)],
        check=True,
        capture_output=True,
    )
    return {
        name: {
            way: max_difference(workdir / f"evomerge-{name}", workdir / f"{way.replace('_', '-')}-{name}")
            for way in ("mergekit", "round_trip")
        }
        for name in configs(models)
    }


def _exported(candidate: Any) -> str:
    """The mergekit config `evomerge export --format mergekit` writes of a candidate."""
    if isinstance(candidate, StackRecipe):
        return stack_mergekit_yaml(candidate)
    names = list(load_model(candidate.base or candidate.sources[0].model).tensors)
    return recipe_mergekit_yaml(candidate, names)


def max_difference(ours: Path, theirs: Path) -> float:
    """The largest absolute difference between two model directories' tensors (the same names in both)."""
    mine, other = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert mine.keys() == other.keys(), sorted(mine.keys() ^ other.keys())
    return max(float((mine[name].float() - other[name].float()).abs().max()) for name in mine)
