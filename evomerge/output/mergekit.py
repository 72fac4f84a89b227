"""A recipe written as a mergekit configuration (https://github.com/arcee-ai/mergekit), when it can be.

The translation keeps mergekit's own semantics equal to evomerge's:

- A per-layer list becomes a mergekit gradient with one point per layer: mergekit reads layer i of n at
  t = i / (n - 1) and the embeddings at t = 0, where evomerge takes the first layer's value. An evomerge
  gradient is a mergekit gradient as it is. mergekit also reads the final norm and the head at t = 0, where
  evomerge takes the last layer's value, so those tensors get a condition of their own, by full name.
- A per-kind map becomes a list of `{filter, value}` conditions, the `default` entry last without a filter.
  mergekit matches a filter as a substring of the tensor name, first match wins, so each kind is written with
  the filter of Llama-style names (`self_attn`, `mlp`, `embed_tokens`, `lm_head`, `norm`) and the
  translation is checked against the models' real tensor names: a recipe whose conditions would pick other
  tensors than evomerge's kinds cannot be expressed.
- DARE's `drop` is mergekit's `density` = 1 - drop, evomerge's `scale` is mergekit's `lambda`.

A layer stack (evomerge/stack/recipe.py) is a `passthrough` merge with one slice per layer, its scale folded
as the export folds it (evomerge/stack/engine.py: the attention and MLP output projections multiplied by the
layer's factor, through mergekit's per-tensor `scale` filtered on their names). mergekit takes the embeddings
from the first slice and the final norm and head from the last, so a slice of no layers from the embeddings
source opens and closes the list. `mergekit-yaml` on such a config writes the tensors of evomerge's export
exactly (tests/test_stack_search.py, with the mergekit that experiments/setup_mergekit.sh installs).

What cannot be expressed raises UsageError: sources mergekit cannot read (GGUF files, a stack's inline merge
recipes), and per-kind values on models whose tensor names mergekit's filters cannot tell apart. mergekit
draws DARE's random masks from torch's generator, evomerge from a hash of the element
(methods/counter_random.py), so a DARE merge made by mergekit is a close sibling of evomerge's, not the same
tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.adapters import split_adapter_reference
from evomerge.errors import UsageError
from evomerge.merge.recipe import Recipe
from evomerge.merge.values import FINAL_NORM, resolve_value
from evomerge.references import split_scheme
from evomerge.sources import HUB_SCHEME, resolve_ref, tensor_info
from evomerge.stack.engine import BRANCH_OUTPUTS, folded_factors, source_label
from evomerge.stack.recipe import StackRecipe

#: evomerge method -> mergekit `merge_method` (mergekit implements each under this name).
METHODS = {
    "linear": "linear",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
    "breadcrumbs": "breadcrumbs",
    "breadcrumbs_ties": "breadcrumbs_ties",
    "slerp": "slerp",
    "model_stock": "model_stock",
}
#: evomerge module kind -> the mergekit filter (a tensor-name substring) that selects it in Llama-style names.
FILTERS = {
    "attention": "self_attn",
    "mlp": "mlp",
    "embedding": "embed_tokens",
    "head": "lm_head",
    "norm": "norm",
}
RENAMED = {"scale": "lambda", "drop": "density"}


def mergekit_config(recipe: Recipe, tensor_names: list[str]) -> dict[str, Any]:
    """The mergekit configuration of `recipe` over models with these tensor names (UsageError if none)."""
    if recipe.method not in METHODS:
        raise UsageError(
            f"mergekit has no merge method like evomerge's '{recipe.method}'; "
            "export without --format mergekit"
        )
    models = [_model_path(source.model) for source in recipe.sources]
    config: dict[str, Any] = {"merge_method": METHODS[recipe.method]}
    if recipe.method == "slerp":
        config["base_model"] = models[0]
    elif recipe.base is not None:
        config["base_model"] = _model_path(recipe.base)
    config["models"] = [
        {"model": model, **({"parameters": _parameters(s.parameters, tensor_names)} if s.parameters else {})}
        for model, s in zip(models, recipe.sources)
    ]
    # evomerge's default is written out, as mergekit's default may differ (TIES: both true; others vary)
    method = recipe.method_def
    has_normalize = "normalize" in method.param_names()
    normalize = {"normalize": method.param("normalize").default} if has_normalize else {}
    parameters = {**normalize, **recipe.parameters}
    if parameters:
        config["parameters"] = _parameters(parameters, tensor_names)
    if recipe.dtype:
        config["dtype"] = recipe.dtype
    return config


def stack_mergekit_config(stack: StackRecipe) -> dict[str, Any]:
    """The mergekit `passthrough` configuration that writes `stack` as evomerge exports it; UsageError if a
    source is not a model file mergekit reads."""
    models = []
    for index, ref in enumerate(stack.sources):
        if not isinstance(ref, str):
            raise UsageError(
                f"mergekit cannot read stack source {index}, an inline merge ({source_label(ref)}); export "
                "without --format mergekit, or export that merge first and name its directory as the source"
            )
        models.append(_model_path(ref))
    slices = [_no_layers(models[stack.embeddings])]
    for layer, factor in zip(stack.layers, folded_factors(stack)):
        layers = [layer.layer, layer.layer + 1]
        source: dict[str, Any] = {"model": models[layer.source], "layer_range": layers}
        if factor != 1.0:
            scales = [{"filter": name, "value": factor} for name in BRANCH_OUTPUTS]
            source["parameters"] = {"scale": [*scales, {"value": 1.0}]}
        slices.append({"sources": [source]})
    return {"merge_method": "passthrough", "slices": [*slices, _no_layers(models[stack.embeddings])]}


def _no_layers(model: str) -> dict[str, Any]:
    """A slice of no layers: where mergekit takes the embeddings (first slice), final norm and head (last)."""
    return {"sources": [{"model": model, "layer_range": [0, 0]}]}


HEADER = "# mergekit configuration of this merge (mergekit-yaml mergekit.yaml OUT_DIR).\n"


def recipe_mergekit_yaml(recipe: Recipe, tensor_names: list[str]) -> str:
    """The mergekit config of a merge recipe over models with these tensor names, as YAML."""
    header = HEADER
    if "drop" in recipe.method_def.param_names():
        header += "# evomerge's recipe.yaml rebuilds the exact tensors; "
        header += "mergekit draws DARE's random drops itself.\n"
    return header + yaml.safe_dump(mergekit_config(recipe, tensor_names), sort_keys=False)


def stack_mergekit_yaml(stack: StackRecipe) -> str:
    """The mergekit config of a layer stack (a passthrough merge of one slice per layer), as YAML."""
    return HEADER + yaml.safe_dump(stack_mergekit_config(stack), sort_keys=False)


def _model_path(ref: str) -> str:
    """An absolute path for a local model or one with a scheme such as `zoo:` (mergekit knows neither our
    schemes nor our working directory); a hub name as it is (`hf:` dropped)."""
    if ref.endswith(".gguf"):
        raise UsageError(f"mergekit cannot read the GGUF model '{ref}'; export without --format mergekit")
    with_adapter = split_adapter_reference(ref)
    if with_adapter is not None:  # mergekit's own syntax for a model with a LoRA adapter
        return f"{_model_path(with_adapter[0])}+{Path(with_adapter[1]).expanduser().resolve()}"
    scheme = split_scheme(ref)
    if scheme is not None and scheme[0] == HUB_SCHEME:
        return scheme[1]
    if scheme is not None or Path(ref).expanduser().exists():
        return str(resolve_ref(ref).resolve())
    return ref


def _parameters(parameters: dict[str, Any], tensor_names: list[str]) -> dict[str, Any]:
    return {
        RENAMED.get(name, name): _setting(name, value, tensor_names) for name, value in parameters.items()
    }


def _setting(name: str, value: Any, tensor_names: list[str]) -> Any:
    """One parameter's value in mergekit's terms: scalar, gradient list, or a list of filter conditions.

    mergekit reads the final norm and the head (its "post" weights) at the gradient's first point, evomerge at
    the last layer's value: a value that varies by depth, or has a `final_norm` entry, gets a condition naming
    each of those tensors first.
    """
    layers = _layers(tensor_names)
    per_kind = isinstance(value, dict) and "gradient" not in value
    named = _varies(value) or (per_kind and FINAL_NORM in value)
    post = [
        {"filter": tensor, "value": _value(name, resolve_value(value, None, info.kind, layers))}
        for tensor in tensor_names
        if (info := tensor_info(tensor)).layer is None and info.kind in ("norm", "head") and named
    ]
    if per_kind:
        kinds = [kind for kind in value if kind not in ("default", FINAL_NORM)]
        _check_filters(name, kinds, [t for t in tensor_names if t not in {c["filter"] for c in post}])
        conditions = [{"filter": FILTERS[k], "value": _value(name, value[k])} for k in kinds]
        if "default" in value:
            conditions.append({"value": _value(name, value["default"])})
        return post + conditions
    return post + [{"value": _value(name, value)}] if post else _value(name, value)


def _value(name: str, value: Any) -> Any:
    """A scalar, list or gradient as mergekit writes it (a gradient is a plain list), `drop` as `density`."""
    if isinstance(value, dict):
        value = value["gradient"]
    if name == "drop":
        return [1.0 - v for v in value] if isinstance(value, list) else 1.0 - value
    return value


def _varies(value: Any) -> bool:
    """Whether a value can differ from one layer to another (a list or gradient, or a kind map with one)."""
    inner = value.values() if isinstance(value, dict) and "gradient" not in value else [value]
    return any(isinstance(v, (list, dict)) for v in inner)


def _layers(tensor_names: list[str]) -> int:
    layers = (info.layer for info in map(tensor_info, tensor_names) if info.layer is not None)
    return 1 + max(layers, default=0)


def _check_filters(name: str, kinds: list[str], tensor_names: list[str]) -> None:
    """Raise UsageError unless mergekit's first-match filters give each of these tensors the entry evomerge
    gives it."""
    for tensor in tensor_names:
        kind = tensor_info(tensor).kind
        matched = next((k for k in kinds if FILTERS[k] in tensor), None)
        wanted = kind if kind in kinds else None
        if matched != wanted:
            raise UsageError(
                f"mergekit cannot express the per-kind '{name}' of this recipe: its filters match tensor "
                f"names, and '{tensor}' ({kind}) would take the {matched or 'default'} value; "
                "export without --format mergekit"
            )
