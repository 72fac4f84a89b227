"""Merge methods against hand-computed results on small tensors, and their invariants."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from evomerge.errors import UsageError
from evomerge.merge.engine import MergeEngine
from evomerge.merge.methods import get_method, registry
from evomerge.merge.methods.params import SCALE
from evomerge.merge.recipe import recipe_from_dict

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
D1 = torch.tensor([1.0, -2.0, 3.0, -4.0])
D2 = torch.tensor([-3.0, 2.0, 1.0, -1.0])
X1, X2 = BASE + D1, BASE + D2


def merge(name: str, sources, base=BASE, seed=0, **params):
    method = get_method(name)
    full = {spec.name: spec.default for spec in method.params}
    full.update(params)
    per_source = {
        key
        for key, value in full.items()
        if method.param(key).scope == "source" and not isinstance(value, list)
    }
    resolved = {key: [value] * len(sources) if key in per_source else value for key, value in full.items()}
    return method.merge(base, sources, method.settings_for(resolved, seed))


def test_task_arithmetic_by_hand():
    out = merge("task_arithmetic", [X1, X2], weight=[1.0, 0.5], scale=2.0)
    # base + 2 * (d1 + 0.5 d2) = 1 + 2 * [-0.5, -1, 3.5, -4.5]
    assert torch.equal(out, torch.tensor([0.0, -1.0, 8.0, -8.0]))


def test_ties_sign_election_and_disjoint_mean_by_hand():
    out = merge("ties", [X1, X2], density=1.0)
    # sum of deltas [-2, 0, 4, -5] elects signs [-, +, +, -]; x1 disagrees on entries 0 and 1.
    # disjoint means: [-3/1, 2/1, (3+1)/2, (-4-1)/2]
    assert torch.equal(out, BASE + torch.tensor([-3.0, 2.0, 2.0, -2.5]))


def test_ties_trims_by_magnitude_by_hand():
    out = merge("ties", [X1, X2], density=0.5)
    # trimmed: d1 -> [0, 0, 3, -4], d2 -> [-3, 2, 0, 0]; no conflicts left
    assert torch.equal(out, BASE + torch.tensor([-3.0, 2.0, 3.0, -4.0]))


def test_ties_weighted_normalization_by_hand():
    out = merge("ties", [X1, X2], density=1.0, weight=[2.0, 1.0])
    # weighted deltas [2, -4, 6, -8] and [-3, 2, 1, -1]; sum [-1, -2, 7, -9] elects [-, -, +, -]
    # entry 0: only x2 agrees -> -3 / 1; entry 1: only x1 -> -4 / 2;
    # entry 2: (6 + 1) / 3; entry 3: (-8 - 1) / 3
    assert torch.allclose(out, BASE + torch.tensor([-3.0, -2.0, 7 / 3, -3.0]))


def test_breadcrumbs_keeps_the_band_between_outliers_and_smallest_by_hand():
    delta = torch.tensor([5.0, -1.0, 4.0, 0.5, -3.0, 2.0, 0.1, 6.0, -0.2, 1.0])
    out = merge("breadcrumbs", [delta], base=torch.zeros(10), density=0.5, gamma=0.1)
    # drops the outlier 6, keeps the next five by magnitude (5, 4, -3, 2, -1), drops the rest
    assert torch.equal(out, torch.tensor([5.0, -1.0, 4.0, 0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0]))


def test_linear_weighted_average_by_hand():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.equal(merge("linear", [a, b], base=None, weight=[1.0, 3.0]), torch.tensor([2.5, 5.0]))
    assert torch.equal(
        merge("linear", [a, b], base=None, weight=[1.0, 3.0], normalize=False), torch.tensor([10.0, 20.0])
    )


def test_slerp_by_hand():
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = math.sqrt(0.5)
    assert torch.allclose(merge("slerp", [v0, v1], base=None, t=0.5), torch.tensor([half, half]))
    assert torch.allclose(merge("slerp", [v0, v1], base=None, t=0.0), v0)
    assert torch.allclose(merge("slerp", [v0, v1], base=None, t=1.0), v1, atol=1e-7)
    # colinear tensors fall back to linear interpolation
    assert torch.allclose(merge("slerp", [v0, 3 * v0], base=None, t=0.5), 2 * v0)


def test_model_stock_by_hand():
    x1, x2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    cosine = 1 / math.sqrt(2)
    t = 2 * cosine / (1 + cosine)
    expected = t * torch.tensor([1.0, 0.5])
    assert torch.allclose(merge("model_stock", [x1, x2], base=torch.zeros(2)), expected)


def test_weight_one_on_one_source_gives_that_source():
    assert torch.equal(merge("linear", [X1, X2], base=None, weight=[1.0, 0.0]), X1)
    assert torch.equal(merge("task_arithmetic", [X1], weight=[1.0]), X1)
    assert torch.equal(merge("ties", [X1], weight=[1.0], density=1.0), X1)


def test_ties_density_one_with_one_source_equals_task_arithmetic():
    torch.manual_seed(0)
    base, source = torch.randn(16, 8), torch.randn(16, 8)
    ties = merge("ties", [source], base=base, weight=[0.7], density=1.0, normalize=False, scale=1.3)
    ta = merge("task_arithmetic", [source], base=base, weight=[0.7], scale=1.3)
    # the same definition; TIES' path scales the weighted delta after the sign election, task arithmetic folds
    # weight and scale into one coefficient: equal up to float32 rounding
    torch.testing.assert_close(ties, ta, rtol=1e-6, atol=1e-6)


def test_dare_with_drop_zero_equals_task_arithmetic():
    torch.manual_seed(0)
    base, sources = torch.randn(32, 8), [torch.randn(32, 8), torch.randn(32, 8)]
    ta = merge("task_arithmetic", sources, base=base, weight=[0.4, 0.9])
    dare = merge("dare_linear", sources, base=base, weight=[0.4, 0.9], drop=0.0)
    assert torch.equal(dare, ta)


def test_dare_keeps_rescaled_or_drops_each_entry_and_is_reproducible_by_seed():
    base, source = torch.zeros(100_000), torch.full((100_000,), 2.0)
    out = merge("dare_linear", [source], base=base, drop=0.75, seed=7)
    kept = out != 0
    assert torch.all(out[kept] == 8.0)  # 2 / (1 - 0.75)
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    again = merge("dare_linear", [source], base=base, drop=0.75, seed=7)
    other = merge("dare_linear", [source], base=base, drop=0.75, seed=8)
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_dare_ties_elects_signs_after_dropping():
    base = torch.zeros(4)
    out = merge("dare_ties", [D1, D2], base=base, drop=0.0)
    assert torch.equal(out, merge("ties", [D1, D2], base=base, density=1.0))


def test_methods_accumulate_in_float32_from_bfloat16():
    base = torch.zeros(4, dtype=torch.bfloat16)
    sources = [torch.full((4,), 1.0 / 3, dtype=torch.bfloat16) for _ in range(3)]
    for name in ["task_arithmetic", "ties", "dare_ties", "linear", "model_stock", "breadcrumbs"]:
        assert merge(name, sources, base=base).dtype == torch.float32, name
    assert merge("slerp", sources[:2], base=None).dtype == torch.float32


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(UsageError, match="did you mean 'ties'"):
        get_method("tiess")


@pytest.mark.parametrize(
    ("method", "param", "value"),
    [("ties", "density", 0.0), ("ties", "density", 1.5), ("dare_ties", "drop", -0.1), ("slerp", "t", 2.0)],
)
def test_parameter_bounds_are_enforced(method, param, value):
    with pytest.raises(UsageError, match=f"'{param}'"):
        get_method(method).param(param).check(value, "test")


@dataclass(frozen=True)
class MeanDeltaSettings:
    scale: float


def mean_delta(base, sources, settings: MeanDeltaSettings) -> torch.Tensor:
    b = base.float()
    return b + settings.scale * torch.stack([s.float() - b for s in sources]).mean(dim=0)


def test_a_new_method_is_a_settings_type_a_function_and_one_registration(monkeypatch, tiny_models):
    # as docs/architecture.md's "Adding a merge method" shows: recipes and the engine find it in the registry
    monkeypatch.setattr(registry, "_METHODS", registry._METHODS.copy())
    registry.register(
        registry.MergeMethod(
            name="mean_delta",
            function=mean_delta,
            params=(SCALE,),
            needs_base=True,
            settings=MeanDeltaSettings,
        )
    )
    sources = [{"model": str(tiny_models[n])} for n in "ab"]
    recipe = recipe_from_dict(
        {
            "method": "mean_delta",
            "base": str(tiny_models["base"]),
            "sources": sources,
            "parameters": {"scale": 0.5},
        }
    )
    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target(torch.float32)
    engine.materialize(recipe, model)
    name = "model.layers.1.mlp.up_proj.weight"
    base, sources = engine.base.tensors[name].float(), [s.tensors[name].float() for s in engine.sources]
    expected = base + 0.5 * ((sources[0] - base) + (sources[1] - base)) / 2
    torch.testing.assert_close(dict(model.named_parameters())[name], expected)
