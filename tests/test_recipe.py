"""Recipes: YAML round trip, how per-layer / gradient / per-kind values resolve, and validation messages."""

from __future__ import annotations

import pytest
import yaml

from evomerge.errors import UsageError
from evomerge.merge.recipe import load_recipe, recipe_from_dict, resolve_parameters, resolve_value

TIES = {
    "method": "ties",
    "base": "m/base",
    "sources": [
        {
            "model": "m/a",
            "weight": [0.5, 1.0],
            "density": {"attention": 0.4, "default": {"gradient": [0.2, 1.0]}},
        },
        {"model": "m/b", "density": 0.7},
    ],
    "parameters": {"scale": 1.5},
}


def test_recipe_round_trips_through_yaml(tmp_path):
    recipe = recipe_from_dict(TIES)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path) == recipe
    assert yaml.safe_load(recipe.to_yaml())["sources"][0]["weight"] == [0.5, 1.0]


def test_scalar_list_and_gradient_values_resolve_by_layer():
    assert resolve_value(0.3, layer=4, kind="mlp", num_layers=5) == 0.3
    assert resolve_value([1, 2, 3], layer=1, kind="mlp", num_layers=3) == 2
    gradient = {"gradient": [0.0, 1.0, 0.0]}
    # 3 points spread over layers 0..4: positions 0, 0.5, 1 -> layer 1 sits halfway up the first segment
    assert [resolve_value(gradient, layer, "mlp", 5) for layer in range(5)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert resolve_value({"gradient": [0.25]}, layer=3, kind="mlp", num_layers=5) == 0.25


def test_tensors_outside_the_layer_stack_take_the_first_or_last_layer_value():
    assert resolve_value([1, 2, 3], layer=None, kind="embedding", num_layers=3) == 1
    assert resolve_value([1, 2, 3], layer=None, kind="head", num_layers=3) == 3
    assert resolve_value({"gradient": [0.0, 1.0]}, layer=None, kind="norm", num_layers=3) == 1.0


def test_kind_map_picks_the_tensor_kind_else_default():
    value = {"attention": 0.4, "mlp": [0.1, 0.2], "default": 0.9}
    assert resolve_value(value, layer=1, kind="attention", num_layers=2) == 0.4
    assert resolve_value(value, layer=1, kind="mlp", num_layers=2) == 0.2
    assert resolve_value(value, layer=0, kind="norm", num_layers=2) == 0.9


def test_resolve_parameters_fills_defaults_and_lists_per_source_values():
    recipe = recipe_from_dict(TIES)
    params = resolve_parameters(recipe, layer=1, kind="mlp", num_layers=2)
    assert params == {"weight": [1.0, 1.0], "density": [1.0, 0.7], "scale": 1.5, "normalize": True}
    params = resolve_parameters(recipe, layer=0, kind="attention", num_layers=2)
    assert params["weight"] == [0.5, 1.0] and params["density"] == [0.4, 0.7]


def _with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(TIES))
    for key, value in changes.items():
        data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(method="tie"), "unknown merge method 'tie' (did you mean 'ties'?)"),
        (
            _with(sources=[{"model": "m/a", "density": 0.0}]),
            "sources.0.density: 'density' = 0.0 is outside (0, 1]",
        ),
        (_with(sources=[{"model": "m/a", "density": 1.2}]), "is outside (0, 1]"),
        (
            _with(method="dare_ties", sources=[{"model": "m/a", "drop": -0.1}]),
            "'drop' = -0.1 is outside [0, 1)",
        ),
        (_with(sources=[{"model": "m/a", "densty": 0.5}]), "no parameter 'densty' (did you mean 'density'?)"),
        (_with(parameters={"density": 0.5}), "'density' is a per-source parameter"),
        (_with(sources=[{"model": "m/a", "scale": 2.0}]), "'scale' is a global parameter"),
        (_with(sources=[{"model": "m/a", "density": {"attn": 0.5}}]), "unknown module kind 'attn'"),
        (_with(sources=[{"model": "m/a", "density": {"gradient": []}}]), "a gradient is written"),
        (_with(sources=[{"model": "m/a", "weight": "high"}]), "'weight' must be a number"),
        (_with(parameters={"normalize": "yes"}), "'normalize' must be true or false"),
        (_with(base=None), "method 'ties' needs a 'base' model"),
        (_with(method="slerp", parameters={}), "takes exactly 2 sources, the recipe lists"),
        (_with(sources=[]), "sources: List should have at least 1 item"),
        (_with(color="red"), "color: Extra inputs are not permitted"),
    ],
)
def test_bad_recipes_get_one_clear_message(data, message):
    if data.get("method") == "slerp":
        data["sources"] = [{"model": m} for m in ("x", "y", "z")]
    with pytest.raises(UsageError) as caught:
        recipe_from_dict(data)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_values_that_do_not_fit_the_models_are_refused_when_resolved():
    recipe = recipe_from_dict(TIES)
    with pytest.raises(UsageError, match="sources.0.weight: has 2 values but the models have 3 layers"):
        resolve_parameters(recipe, layer=0, kind="mlp", num_layers=3)
    no_default = recipe_from_dict(_with(sources=[{"model": "m/a", "density": {"attention": 0.5}}]))
    with pytest.raises(UsageError, match="no value for mlp tensors; add 'mlp:' or 'default:'"):
        resolve_parameters(no_default, layer=0, kind="mlp", num_layers=2)


def test_unreadable_recipe_files_are_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ties\nsources: [\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_recipe(scalar)
