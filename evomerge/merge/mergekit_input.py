"""A mergekit configuration (mergekit-yaml's YAML, https://github.com/arcee-ai/mergekit) read as evomerge's
own candidate: the recipe (or, for a `passthrough` of slices, the layer stack) that makes the same tensors.

Data is mergekit's when it has a `merge_method`. `recipe_from_dict` (evomerge/merge/recipe.py) reads it
through `mergekit_recipe_data`, so `evomerge merge`, a run config's `recipe:` and seed recipes all take it;
`stack_from_dict` (evomerge/stack/recipe.py) reads a passthrough of slices through `mergekit_stack_data`.

How mergekit's parameters are read, as mergekit 0.1.5 does (mergekit/config.py, parameter_resolver.py,
plan.py):

- A parameter of a model is looked up in that model's `parameters`, then the slice's, then the global ones; a
  global parameter (lambda, normalize, t, ...) in the slice's, then the global ones. The first place that
  gives the tensor a value wins; a list of `{filter, value}` conditions gives the value of its first condition
  whose filter is a substring of the tensor's name (no filter, or `*`, matches every tensor), and none when no
  condition matches, so the next place is asked.
- A list of numbers is a gradient: a layer of a slice of n layers reads it at t = i / (n - 1) (t = 1 when the
  slice has one layer), the embeddings at t = 0 in the first slice, and the final norm and the head at t = 0
  in the last slice, where evomerge's gradients give them the last layer's value. Those tensors therefore get
  values of their own in the recipe (per-kind `head` and `final_norm`): a mergekit `weight: [0.2, 0.9]` is
  evomerge's `{head: 0.2, final_norm: 0.2, default: {gradient: [0.2, 0.9]}}`.
- Names: DARE's `density` is 1 - `drop`; `lambda` is `scale`; each method's `normalize` default is mergekit's,
  written out (mergekit's dare_ties and breadcrumbs_ties do not normalize, evomerge's do by default).

Every tensor of the reference model (the base, else the first model) gets its value the way mergekit gives it;
those values are written as evomerge's value forms (a scalar, a gradient, a per-layer list, per-kind entries)
and checked, tensor by tensor, to resolve to the same numbers (evomerge/merge/values.py). A filter that splits
what evomerge's kinds keep together (`q_proj` of the attention tensors) cannot be written and is refused.

Slices map when they are a per-slice merge of the same models, each source's `layer_range` the layers the
slice writes, the slices taking every layer once and in order: each layer's value is then written per layer.
A `passthrough` of slices (a frankenmerge, one model per slice) is a layer stack: the slices' layers in order,
under the embeddings, final norm and head of one model (mergekit takes the embeddings from the first slice's
model and the final norm and head from the last's, which must then be the same model).

What the merges share and where they differ (docs/mergekit.md has the measured agreement): linear, task
arithmetic, TIES, breadcrumbs, SLERP and Model Stock give the same tensors to float32 rounding (TIES'
magnitude cut may keep another entry among entries of equal magnitude at the cut, and mergekit keeps at least
one entry where density x size < 1). DARE's random drops are drawn by mergekit from torch's generator and
rescaled to the task vector's L1 norm, by evomerge from a hash of the element and rescaled by 1 / (1 - drop):
the same distribution, not the same tensors. mergekit computes in `dtype` when one is given, evomerge in
float32, storing in `dtype`: identical for float32 models.

A model with a LoRA adapter (`model+lora`) is read as evomerge reads one (evomerge/adapters.py: the adapter
merged into its model by peft). Anything else is refused in one line naming the key: methods evomerge does not
have, a `layer_range` beyond a model, slices that are not a per-slice merge or a stack, tokenizers
other than the one evomerge writes (the base's, else the first model's).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evomerge.errors import UsageError, validated
from evomerge.merge.values import FINAL_NORM, MODULE_KINDS, resolve_value
from evomerge.registry import suggestion

# ---------------------------------------------------------------------------------------------- the config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _InputModel(_Strict):
    model: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class _InputSlice(_Strict):
    model: str = Field(min_length=1)
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None


class _OutputSlice(_Strict):
    sources: list[_InputSlice] = Field(min_length=1)
    base_model: str | None = None
    residual_weight: float | None = None
    parameters: dict[str, Any] | None = None


class _Config(_Strict):
    """mergekit's MergeConfiguration: the keys evomerge reads, and those it refuses by name."""

    merge_method: str
    base_model: str | None = None
    models: list[_InputModel] | None = None
    slices: list[_OutputSlice] | None = Field(None, min_length=1)
    modules: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None


NOT_YET = {
    "modules": "per-module merges (`modules:`) are not supported yet; use `models:` or `slices:`",
    "tokenizer": "a `tokenizer:` section (added tokens, vocabulary surgery) is not supported yet; evomerge "
    "merges models of one vocabulary and writes the base's tokenizer (else the first model's)",
    "chat_template": "a `chat_template` is not supported yet; set it on the merged model's tokenizer "
    "afterwards",
}


def is_mergekit_config(data: Any) -> bool:
    """Whether plain data is a mergekit configuration (it has mergekit's `merge_method`)."""
    return isinstance(data, dict) and "merge_method" in data


def is_mergekit_stack(data: Any) -> bool:
    """Whether plain data is a mergekit passthrough of slices: a frankenmerge, evomerge's layer stack."""
    return is_mergekit_config(data) and data.get("merge_method") == "passthrough" and "slices" in data


def _config(data: dict[str, Any], origin: str) -> _Config:
    config = validated(_Config, data, f"{origin} (a mergekit config)")
    for key, why in NOT_YET.items():
        if getattr(config, key) is not None:
            raise UsageError(f"{origin}: {key}: {why}")
    if (config.models is None) == (config.slices is None):
        raise UsageError(f"{origin}: a mergekit config has either `models:` or `slices:` (exactly one)")
    return config


# ---------------------------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class _Param:
    """One of a mergekit method's parameters and what it is in evomerge's method: `ours` (None: it has no
    effect on the tensors, or must be `fixed`), per model or global, mergekit's default (None: required)."""

    name: str
    per_model: bool
    default: Any
    ours: str | None = None
    to_ours: Callable[[float], float] | None = None
    fixed: tuple[bool, str] | None = None  # the one value evomerge's method implies, and why
    always: bool = False  # written even where mergekit's default applies (evomerge's default differs)


@dataclass(frozen=True)
class _Method:
    ours: str
    params: tuple[_Param, ...]
    base: str  # "required": a base and its task vectors; "first": the base is the first source (SLERP);
    # "input": the base, when given, is merged as one more model (linear)

    def param(self, name: str) -> _Param | None:
        return next((p for p in self.params if p.name == name), None)


def _drop(density: float) -> float:
    return 1.0 - density


WEIGHT = _Param("weight", True, None, "weight")
INT8_MASK = _Param("int8_mask", False, False)  # the dtype of TIES' sign mask: no effect on the values
LAMBDA = _Param("lambda", False, 1.0, "scale")


def _task_arithmetic(ours: str, normalize: bool, rescale: bool, sparsity: tuple[_Param, ...]) -> _Method:
    why = (
        "evomerge's DARE rescales the entries it keeps by 1 / (1 - drop)"
        if rescale
        else f"evomerge's {ours} keeps the entries it keeps as they are"
    )
    return _Method(
        ours,
        (
            WEIGHT,
            *sparsity,
            LAMBDA,
            _Param("normalize", False, normalize, "normalize", always=True),
            _Param("rescale", False, rescale, fixed=(rescale, why)),
            INT8_MASK,
        ),
        "required",
    )


DENSITY = _Param("density", True, 1.0, "density")
DARE_DENSITY = _Param("density", True, 1.0, "drop", to_ours=_drop)
GAMMA = _Param("gamma", True, 0.01, "gamma", always=True)  # 0 where mergekit keeps a tensor whole

METHODS = {
    "linear": _Method(
        "linear", (WEIGHT, _Param("normalize", False, True, "normalize", always=True)), "input"
    ),
    "task_arithmetic": _task_arithmetic("task_arithmetic", False, False, ()),
    "ties": _task_arithmetic("ties", True, False, (DENSITY,)),
    "dare_linear": _task_arithmetic("dare_linear", False, True, (DARE_DENSITY,)),
    "dare_ties": _task_arithmetic("dare_ties", False, True, (DARE_DENSITY,)),
    "breadcrumbs": _task_arithmetic("breadcrumbs", False, False, (DENSITY, GAMMA)),
    "breadcrumbs_ties": _task_arithmetic("breadcrumbs_ties", False, False, (DENSITY, GAMMA)),
    "slerp": _Method("slerp", (_Param("t", False, None, "t"),), "first"),
    "model_stock": _Method(
        "model_stock",
        (
            _Param(
                "filter_wise",
                False,
                False,
                fixed=(False, "evomerge's Model Stock takes one angle per tensor"),
            ),
        ),
        "required",
    ),
    # one model, each tensor times its `scale`: evomerge's linear merge of that model with weight `scale`
    "passthrough": _Method(
        "linear",
        (
            _Param("scale", True, 1.0, "weight"),
            _Param(
                "normalize", False, False, "normalize", always=True, fixed=(False, "passthrough has none")
            ),
        ),
        "input",
    ),
}


def _method(config: _Config, origin: str) -> _Method:
    method = METHODS.get(config.merge_method)
    if method is None:
        raise UsageError(
            f"{origin}: merge_method '{config.merge_method}': evomerge has no such method"
            f"{suggestion(config.merge_method, list(METHODS))}; it reads mergekit's "
            f"{', '.join(METHODS)}"
        )
    return method


# ---------------------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class _Tensor:
    """One tensor of the reference model: its name, its decoder layer (None outside) and module kind."""

    name: str
    layer: int | None
    kind: str

    @property
    def key(self) -> str:
        """Its entry in a per-kind map (evomerge/merge/values.py)."""
        if self.kind == "norm" and self.layer is None:
            return FINAL_NORM
        return self.kind if self.kind in MODULE_KINDS else "default"


@cache
def _model_facts(ref: str) -> tuple[tuple[_Tensor, ...], str]:
    """The tensors of a model (read from its safetensors headers, or by loading it) and their stored dtype;
    kept while one config is read (each reading clears it)."""
    from evomerge.sources import load_model, resolve_ref, tensor_info

    path = resolve_ref(ref)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if files:
        from safetensors import safe_open

        dtypes = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        names, dtype = [], ""
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    names.append(name)
                    dtype = dtype or dtypes.get(handle.get_slice(name).get_dtype(), "")
    else:
        tensors = load_model(ref).tensors
        names = list(tensors)
        dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    tensors = tuple(_Tensor(name, (info := tensor_info(name)).layer, info.kind) for name in names)
    return tensors, dtype


def model_layer_count(ref: str) -> int:
    """The number of decoder layers of a model (from its tensor names)."""
    layers = [tensor.layer for tensor in _model_facts(ref)[0] if tensor.layer is not None]
    return max(layers, default=0) + 1


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Slice:
    """An output slice as mergekit plans it: the layers it writes, each model's parameters and its own."""

    start: int
    length: int
    models: dict[str, dict[str, Any]]
    parameters: dict[str, Any]


@dataclass
class _Plan:
    """The slices of a merge over the reference model's tensors, and where each tensor reads its values."""

    slices: list[_Slice]
    parameters: dict[str, Any]
    tensors: tuple[_Tensor, ...]
    num_layers: int
    origin: str
    places: dict[str, tuple[_Slice, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.places = {}
        for tensor in self.tensors:
            if tensor.layer is None:  # mergekit: embeddings from the first slice, the rest from the last
                self.places[tensor.name] = (self.slices[0 if tensor.kind == "embedding" else -1], 0.0)
                continue
            out = next(s for s in self.slices if s.start <= tensor.layer < s.start + s.length)
            position = tensor.layer - out.start
            self.places[tensor.name] = (out, position / (out.length - 1) if out.length > 1 else 1.0)

    def settings(self, out: _Slice, model: str | None) -> list[tuple[str, dict[str, Any]]]:
        """Where a parameter is looked up, first to last, with the key path naming each place."""
        scopes = []
        if model is not None:
            scopes.append((f"{self._model_place(out, model)}.parameters", out.models[model]))
        if out.parameters:
            scopes.append((f"slices[{self.slices.index(out)}].parameters", out.parameters))
        scopes.append(("parameters", self.parameters))
        return scopes

    def _model_place(self, out: _Slice, model: str) -> str:
        if len(self.slices) == 1 and out.start == 0 and not out.parameters:
            return f"model '{model}'"
        return f"slices[{self.slices.index(out)}] model '{model}'"

    def values(self, param: _Param, model: str | None) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """Each tensor's value of `param` (for `model`, or global), the setting it was read from (a scalar or
        a gradient list), and whether any place sets it (else every tensor has mergekit's default)."""
        values, settings, found = {}, {}, False
        for tensor in self.tensors:
            out, t = self.places[tensor.name]
            setting = _first_setting(self.settings(out, model), param.name, tensor.name, self.origin)
            if setting is None:
                if param.default is None:
                    whose = f" for {self._model_place(out, model)}" if model is not None else ""
                    raise UsageError(
                        f"{self.origin}: {param.name}: mergekit needs a value{whose} for tensor "
                        f"'{tensor.name}' (it has no default)"
                    )
                setting = param.default
            else:
                found = True
            settings[tensor.name] = setting
            values[tensor.name] = _at(setting, t)
        return values, settings, found


def _first_setting(scopes: list[tuple[str, dict[str, Any]]], name: str, tensor: str, origin: str) -> Any:
    """The scalar or gradient that the first place setting `name` gives `tensor` (mergekit's
    evaluate_setting, before the gradient is read at a position); None if no place gives it one."""
    for where, parameters in scopes:
        if name in parameters:
            chosen = _chosen(parameters[name], tensor, f"{origin}: {where}.{name}")
            if chosen is not None:
                return chosen
    return None


def _chosen(setting: Any, tensor: str, where: str) -> Any:
    if isinstance(setting, dict):
        setting = [setting]
    if _is_scalar(setting):
        return setting
    if not isinstance(setting, list):
        raise UsageError(
            f"{where}: expected a number, a list of numbers or filter conditions, got {setting!r}"
        )
    if not setting:
        return None
    if all(_is_scalar(item) for item in setting):
        return setting
    for condition in setting:
        if (
            not isinstance(condition, dict)
            or "value" not in condition
            or set(condition) - {"filter", "value"}
        ):
            raise UsageError(f"{where}: a condition is written {{filter: NAME-PART, value: VALUE}}")
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or (tensor and pattern in tensor):
            value = condition["value"]
            if not (_is_scalar(value) or (isinstance(value, list) and value and all(map(_is_scalar, value)))):
                raise UsageError(f"{where}: a condition's value is a number or a list of numbers")
            return value
    return None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def _at(setting: Any, t: float) -> Any:
    """A gradient read at t, as mergekit reads it (numbers interpolated, other values picked)."""
    if not isinstance(setting, list):
        return setting
    if any(isinstance(v, bool) for v in setting):
        return setting[int(t * (len(setting) - 1))]
    scaled = t * (len(setting) - 1)
    low = int(scaled)
    high = min(len(setting) - 1, low + 1)
    frac = scaled - low
    return (1 - frac) * setting[low] + frac * setting[high]


# ------------------------------------------------------------------------------------------ evomerge's forms


def _written(
    values: dict[str, Any], settings: dict[str, Any], plan: _Plan, gradients: bool, where: str
) -> Any:
    """The simplest evomerge value that gives every tensor its value: a scalar, a gradient (where mergekit
    read one gradient over all layers), a per-layer list, or a per-kind map of those; UsageError if none."""
    tensors = plan.tensors
    by_key: dict[str, list[_Tensor]] = defaultdict(list)
    for tensor in tensors:
        by_key[tensor.key].append(tensor)
    entries = {key: _entry(values, settings, group, plan, gradients, where) for key, group in by_key.items()}
    counts = Counter()
    for key, entry in entries.items():
        counts[_frozen(entry)] += len(by_key[key])
    default = max(entries.values(), key=lambda entry: counts[_frozen(entry)])
    kept = {
        key: entry
        for key, entry in entries.items()
        if not all(_same(_resolved(default, tensor, plan), values[tensor.name]) for tensor in by_key[key])
    }
    written = {**kept, "default": default} if kept else default
    for tensor in tensors:
        if not _same(_resolved(written, tensor, plan), values[tensor.name]):
            raise UsageError(
                f"{where}: evomerge's per-kind values cannot give '{tensor.name}' the value "
                f"{values[tensor.name]:g} that mergekit gives it"
            )
    return written


def _entry(
    values: dict[str, Any],
    settings: dict[str, Any],
    group: list[_Tensor],
    plan: _Plan,
    gradients: bool,
    where: str,
) -> Any:
    """The value of one per-kind entry: its tensors' values (one per layer, or one outside the layers)."""
    per_layer: dict[int | None, Any] = {}
    for tensor in group:
        value = values[tensor.name]
        if per_layer.setdefault(tensor.layer, value) != value:
            other = next(t.name for t in group if t.layer == tensor.layer)
            raise UsageError(
                f"{where}: mergekit's filters give '{tensor.name}' {value:g} and '{other}' "
                f"{per_layer[tensor.layer]:g}; evomerge's per-kind values give the {tensor.kind} tensors "
                "of a layer one value"
            )
    layered = {layer: value for layer, value in per_layer.items() if layer is not None}
    if not layered:
        return per_layer[None]
    if len(set(layered.values())) == 1 and set(per_layer.values()) == set(layered.values()):
        return next(iter(layered.values()))
    gradient = {_frozen(settings[t.name]) for t in group if t.layer is not None}
    points = settings[next(t.name for t in group if t.layer is not None)]
    if gradients and len(gradient) == 1 and isinstance(points, list) and plan.num_layers > 1:
        return {"gradient": list(points)}
    first = next(iter(layered.values()))
    return [layered.get(layer, first) for layer in range(plan.num_layers)]


def _same(ours: float, theirs: float) -> bool:
    """Equal up to the rounding of evomerge's and mergekit's gradient formulas (float64)."""
    return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)


def _resolved(value: Any, tensor: _Tensor, plan: _Plan) -> Any:
    return resolve_value(value, tensor.layer, tensor.kind, plan.num_layers)


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _mapped(value: Any, to_ours: Callable[[float], float]) -> Any:
    if isinstance(value, list):
        return [to_ours(v) for v in value]
    return to_ours(value)


# ---------------------------------------------------------------------------------------------- recipes


def mergekit_recipe_data(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """A mergekit configuration as evomerge's recipe data (plain, for recipe_from_dict); UsageError naming the
    key of anything evomerge cannot express."""
    if is_mergekit_stack(data):
        raise UsageError(
            f"{origin}: a mergekit passthrough of slices is a layer stack, not a merge: `evomerge merge` "
            "builds it; a search stacks layers from a run config's `stack:` section"
        )
    _model_facts.cache_clear()
    config = _config(data, origin)
    method = _method(config, origin)
    models = _models(config)
    _check_models(
        config, method, models, "models" if config.models is not None else "slices[0].sources", origin
    )
    _check_names(config, method, origin)
    base = config.base_model
    if method.base == "required":
        sources = [m for m in models if m != base]
    elif method.base == "first":
        sources = [base, *(m for m in models if m != base)]
    else:
        sources = models
    if not sources:
        raise UsageError(f"{origin}: merge_method {config.merge_method}: no model to merge besides the base")
    reference = base if method.base == "required" else sources[0]
    num_layers = model_layer_count(reference)
    plan = _Plan(
        _slices(config, models, num_layers, origin),
        config.parameters or {},
        _model_facts(reference)[0],
        num_layers,
        origin,
    )
    recipe: dict[str, Any] = {"method": method.ours}
    if method.base == "required":
        recipe["base"] = base
    recipe["sources"] = [{"model": model, **_parameters(plan, method, model, origin)} for model in sources]
    recipe["parameters"] = _parameters(plan, method, None, origin)
    dtype = config.out_dtype or config.dtype
    if dtype is not None:
        recipe["dtype"] = _dtype(dtype, origin)
    _check_tokenizer(config, reference, origin)
    return recipe


def _models(config: _Config) -> list[str]:
    """The models merged, in mergekit's order: `models:` and the base (mergekit adds it when it is not
    listed), or the first slice's."""
    if config.models is None:
        return [source.model for source in config.slices[0].sources]
    models = [m.model for m in config.models]
    base = config.base_model
    return models if base is None or base in models else [*models, base]


def _slices(config: _Config, models: list[str], num_layers: int, origin: str) -> list[_Slice]:
    """The output slices as mergekit plans them (`models:` is one slice of every layer); UsageError unless the
    slices are a per-slice merge: the same models in each, taking every layer once and in order."""
    if config.models is not None:
        parameters = {m.model: m.parameters or {} for m in config.models}
        return [_Slice(0, num_layers, {model: parameters.get(model, {}) for model in models}, {})]
    slices, start = [], 0
    for i, out in enumerate(config.slices):
        where = f"slices[{i}]"
        if out.residual_weight is not None:
            raise UsageError(f"{origin}: {where}.residual_weight is not supported yet")
        if out.base_model is not None and out.base_model != config.base_model:
            raise UsageError(
                f"{origin}: {where}.base_model: a base per slice is not supported; give one base_model"
            )
        if [source.model for source in out.sources] != models:
            raise UsageError(
                f"{origin}: {where}.sources: a per-slice merge maps when every slice merges the same "
                f"models in the same order ({', '.join(models)})"
            )
        length = None
        for j, source in enumerate(out.sources):
            low, high = _layer_range(source, f"{where}.sources[{j}]", origin)
            if low != start or (length is not None and high - low != length):
                raise UsageError(
                    f"{origin}: {where}.sources[{j}].layer_range [{low}, {high}]: a per-slice merge maps "
                    "when its slices take every layer once, in order, the same layers of every model (this "
                    f"slice starts at layer {start}; a frankenmerge is merge_method passthrough)"
                )
            length = high - low
        slices.append(
            _Slice(start, length, {s.model: s.parameters or {} for s in out.sources}, out.parameters or {})
        )
        start += length
    if start != num_layers:
        raise UsageError(
            f"{origin}: slices: they take layers 0 to {start - 1} of the models' {num_layers}; evomerge's "
            "merges keep every layer (a model of other layers is a layer stack: merge_method passthrough)"
        )
    return [s for s in slices if s.length > 0]


def _layer_range(source: _InputSlice, where: str, origin: str) -> tuple[int, int]:
    low, high = source.layer_range
    count = model_layer_count(source.model)
    if not 0 <= low <= high <= count:
        raise UsageError(
            f"{origin}: {where}.layer_range [{low}, {high}]: '{source.model}' has {count} layers "
            f"(0 to {count - 1})"
        )
    return low, high


def _check_models(config: _Config, method: _Method, models: list[str], where: str, origin: str) -> None:
    duplicates = [m for m, count in Counter(models).items() if count > 1]
    if duplicates:
        raise UsageError(f"{origin}: {where}: '{duplicates[0]}' is listed twice")
    if method.base != "input" and config.base_model is None:
        raise UsageError(f"{origin}: merge_method {config.merge_method} needs a base_model")
    if method.base != "input" and config.base_model not in models:
        raise UsageError(f"{origin}: {where}: the base_model '{config.base_model}' is not among them")
    if config.merge_method == "slerp" and len(models) != 2:
        raise UsageError(
            f"{origin}: {where}: slerp merges the base and one other model, not {len(models)} models"
        )
    if config.merge_method == "passthrough" and len(models) != 1:
        raise UsageError(
            f"{origin}: {where}: passthrough copies one model (a base_model counts as one), not {len(models)}"
        )


def _check_names(config: _Config, method: _Method, origin: str) -> None:
    """Refuse a parameter the method does not have, or one given where mergekit would not read it."""
    places = [("parameters", config.parameters or {}, False)]
    for m in config.models or []:
        places.append((f"model '{m.model}'.parameters", m.parameters or {}, True))
    for i, out in enumerate(config.slices or []):
        places.append((f"slices[{i}].parameters", out.parameters or {}, False))
        places += [
            (f"slices[{i}] model '{s.model}'.parameters", s.parameters or {}, True) for s in out.sources
        ]
    names = [p.name for p in method.params]
    for where, parameters, per_model in places:
        for name in parameters:
            param = method.param(name)
            if param is None:
                raise UsageError(
                    f"{origin}: {where}.{name}: mergekit's {config.merge_method} has no parameter '{name}'"
                    f"{suggestion(name, names)} (it has {', '.join(names)})"
                )
            if per_model and not param.per_model:
                raise UsageError(
                    f"{origin}: {where}.{name}: '{name}' is one setting for the whole merge, which mergekit "
                    "reads from the global (or slice) parameters only; move it there"
                )


def _parameters(plan: _Plan, method: _Method, model: str | None, origin: str) -> dict[str, Any]:
    """evomerge's parameters of one source (`model`) or the global ones, from mergekit's."""
    written: dict[str, Any] = {}
    per_tensor: dict[str, dict[str, Any]] = {}
    for param in method.params:
        if param.per_model != (model is not None):
            continue
        values, settings, found = plan.values(param, model)
        if not (found or param.always):
            continue
        where = f"{origin}: {'model ' + repr(model) + ' ' if model else ''}{param.name}"
        if any(isinstance(v, bool) for v in values.values()) or param.fixed or param.ours == "normalize":
            _one_setting(param, values, where, written)
            continue
        if param.ours is None:
            continue
        per_tensor[param.name] = values
        if param.to_ours is not None:
            values = {name: param.to_ours(v) for name, v in values.items()}
            settings = {name: _mapped(s, param.to_ours) for name, s in settings.items()}
        written[param.ours] = (values, settings, where)
    if "gamma" in written:
        _breadcrumbs_outliers(written, per_tensor, plan.origin)
    return {
        name: _written(*entry[:2], plan, len(plan.slices) == 1, entry[2])
        if isinstance(entry, tuple)
        else entry
        for name, entry in written.items()
    }


def _one_setting(param: _Param, values: dict[str, Any], where: str, written: dict[str, Any]) -> None:
    distinct = set(values.values())
    if len(distinct) != 1 or not all(isinstance(v, bool) for v in distinct):
        raise UsageError(
            f"{where}: evomerge takes one true or false for the whole merge, not {sorted(distinct)}"
        )
    value = distinct.pop()
    if param.fixed is not None and value != param.fixed[0]:
        raise UsageError(f"{where}: {str(value).lower()} is not supported: {param.fixed[1]}")
    if param.ours is not None:
        written[param.ours] = value


def _breadcrumbs_outliers(written: dict[str, Any], mergekit: dict[str, dict[str, Any]], origin: str) -> None:
    """mergekit's breadcrumbs keep a tensor whole where density >= 1 (no outlier removed: gamma 0 in
    evomerge's terms), and remove fewer outliers where density + gamma > 1, which evomerge cannot."""
    densities = mergekit.get("density", {})
    gammas, settings, where = written["gamma"]
    gammas, settings = dict(gammas), dict(settings)
    for name, gamma in gammas.items():
        density = densities.get(name, 1.0)
        if density >= 1:
            gammas[name] = settings[name] = 0.0
        elif density + gamma > 1:
            raise UsageError(
                f"{origin}: density {density:g} + gamma {gamma:g} > 1 for tensor '{name}': mergekit then "
                "removes fewer outliers, evomerge keeps fewer entries; lower one of them"
            )
    written["gamma"] = (gammas, settings, where)


DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _dtype(name: str, origin: str) -> str:
    dtype = DTYPES.get(name.removeprefix("torch."))
    if dtype is None:
        raise UsageError(f"{origin}: dtype '{name}': evomerge stores float32, float16 or bfloat16")
    return dtype


def _check_tokenizer(config: _Config, reference: str, origin: str) -> None:
    """evomerge writes the tokenizer of its reference model (the base, else the first source)."""
    source = config.tokenizer_source
    if source is None:
        return
    if source == "union":
        raise UsageError(
            f"{origin}: tokenizer_source union builds a new vocabulary, which is not supported yet; evomerge "
            "merges models of one vocabulary: use tokenizer_source base, or leave it out"
        )
    model = config.base_model if source == "base" else source
    if model is None:
        raise UsageError(f"{origin}: tokenizer_source base: there is no base_model")
    if model != reference:
        raise UsageError(
            f"{origin}: tokenizer_source '{source}': evomerge writes the tokenizer of '{reference}' (the "
            "base, else the first model); name that model, or list this one first"
        )


# ---------------------------------------------------------------------------------------------- layer stacks


def mergekit_stack_data(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """A mergekit passthrough of slices as evomerge's layer-stack data (plain, for stack_from_dict)."""
    _model_facts.cache_clear()
    config = _config(data, origin)
    if config.parameters:
        raise UsageError(f"{origin}: parameters: {_NO_SCALE}")
    sources: list[str] = []
    layers = []
    for i, out in enumerate(config.slices):
        where = f"slices[{i}]"
        if len(out.sources) != 1:
            raise UsageError(f"{origin}: {where}.sources: a passthrough slice copies one model's layers")
        source = out.sources[0]
        if out.parameters or source.parameters or out.residual_weight is not None or out.base_model:
            raise UsageError(f"{origin}: {where}: {_NO_SCALE}")
        low, high = _layer_range(source, f"{where}.sources[0]", origin)
        if source.model not in sources:
            sources.append(source.model)
        layers += [[sources.index(source.model), layer, 1.0] for layer in range(low, high)]
    first, last = config.slices[0].sources[0].model, config.slices[-1].sources[0].model
    if first != last:
        raise UsageError(
            f"{origin}: slices: mergekit takes the embeddings from the first slice's model ('{first}') and "
            f"the final norm and head from the last's ('{last}'); an evomerge stack takes all three from "
            f"one model: add a slice `{{sources: [{{model: {first}, layer_range: [0, 0]}}]}}` at the end"
        )
    if config.tokenizer_source is not None and (
        config.tokenizer_source != first
        and not (config.tokenizer_source == "base" and config.base_model == first)
    ):
        raise UsageError(
            f"{origin}: tokenizer_source '{config.tokenizer_source}': an evomerge stack writes the "
            f"tokenizer of its embeddings model, '{first}'"
        )
    dtype = config.out_dtype or config.dtype
    stored = {_model_facts(ref)[1] for ref in sources}
    if dtype is not None and {_dtype(dtype, origin)} != stored:
        raise UsageError(
            f"{origin}: dtype {dtype}: an evomerge stack keeps its models' dtype "
            f"({', '.join(sorted(stored))}); remove dtype"
        )
    return {"sources": sources, "embeddings": sources.index(first), "layers": layers}


_NO_SCALE = (
    "passthrough parameters (scale) are not supported: an evomerge stack scales the hidden state entering a "
    "layer, not tensors"
)
