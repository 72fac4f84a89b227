"""A recipe parameter's value and how it resolves for one tensor.

A value is a scalar, a per-layer list (one value per decoder layer), a gradient (`{gradient: [first, ...,
last]}`, its points placed evenly from the first layer to the last and interpolated linearly), or a per-kind
map that picks one of those by the tensor's module kind (embedding, attention, mlp, norm, head; `default` for
the rest). Tensors outside the layer stack take the first layer's value (embeddings) or the last's (final
norm, head). A per-kind map's `final_norm` entry, when it has one, is the value of the norm after the last
layer, apart from the layers' own norms (`norm`): mergekit reads that norm at a gradient's first point
(evomerge/merge/mergekit_input.py).
"""

from __future__ import annotations

from typing import Any

from evomerge.errors import UsageError

MODULE_KINDS = ("embedding", "attention", "mlp", "norm", "head")
#: The per-kind map's key for the final norm (a norm outside the layer stack).
FINAL_NORM = "final_norm"
#: Every key a per-kind map may have.
KIND_KEYS = (*MODULE_KINDS, FINAL_NORM, "default")


def resolve_value(value: Any, layer: int | None, kind: str, num_layers: int, where: str = "") -> Any:
    """The value a parameter takes for one tensor (see the module docstring for the rules)."""
    if isinstance(value, dict) and "gradient" not in value:
        key = FINAL_NORM if kind == "norm" and layer is None and FINAL_NORM in value else kind
        if key in value:
            value = value[key]
        elif "default" in value:
            value = value["default"]
        else:
            raise UsageError(f"{where}: no value for {kind} tensors; add '{kind}:' or 'default:'")
    position = _depth_index(layer, kind, num_layers)
    if isinstance(value, list):
        if len(value) != num_layers:
            raise UsageError(f"{where}: has {len(value)} values but the models have {num_layers} layers")
        return value[position]
    if isinstance(value, dict):
        return _interpolate(value["gradient"], position / max(num_layers - 1, 1))
    return value


def _depth_index(layer: int | None, kind: str, num_layers: int) -> int:
    if layer is not None:
        return layer
    return 0 if kind == "embedding" else num_layers - 1


def _interpolate(points: list[float], t: float) -> float:
    if len(points) == 1:
        return points[0]
    x = t * (len(points) - 1)
    i = min(int(x), len(points) - 2)
    return points[i] + (x - i) * (points[i + 1] - points[i])
