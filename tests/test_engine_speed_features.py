"""What makes a candidate fast must not change it: block-wise merges, sort-free magnitude cuts, skipped
tensors, resident sources on another device or in another dtype; and a merge that cannot fit is refused up
front."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import UsageError
from evomerge.merge import engine as engine_module
from evomerge.merge.engine import MergeEngine
from evomerge.merge.methods import get_method, magnitude_cut, task_arithmetic
from evomerge.merge.recipe import recipe_from_dict

FAMILY = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"]


def params_for(name: str, sources: int) -> dict:
    method = get_method(name)
    values = {
        "weight": [0.7, -0.3, 1.2],
        "density": [0.3, 0.8, 0.05],
        "drop": [0.5, 0.1, 0.0],
        "gamma": [0.02, 0.1, 0.0],
        "scale": 0.9,
        "normalize": True,
    }
    return {
        spec.name: values[spec.name][:sources] if spec.scope == "source" else values[spec.name]
        for spec in method.params
    }


def tie_heavy(shape, dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and three sources whose task vectors take few distinct magnitudes (many ties at any cut)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=generator).to(dtype)
    return base, [
        (base.float() + torch.randint(-3, 4, shape, generator=generator) * 0.5).to(dtype) for _ in range(3)
    ]


def merged(name, base, sources, block=None, out=None):
    method = get_method(name)
    settings = method.settings_for(params_for(name, 3), seed=3)
    if out is None:
        return method.function(base, sources, settings, block=block)
    method.merge_into(out, base, sources, settings, block=block)
    return out


@pytest.mark.parametrize("name", FAMILY)
def test_blocks_change_no_bit_of_the_merge(name):
    base, sources = tie_heavy((37, 29), torch.bfloat16)
    whole = merged(name, base, sources)
    assert whole.dtype == torch.float32
    assert torch.equal(merged(name, base, sources, block=50), whole)
    into = merged(name, base, sources, block=13, out=torch.empty(37, 29, dtype=torch.bfloat16))
    assert torch.equal(into, whole.to(torch.bfloat16))
    strided = torch.empty(29, 37).t()  # a non-contiguous target
    assert torch.equal(merged(name, base, sources, block=13, out=strided), whole)


@pytest.mark.parametrize("misleading", [False, True])
def test_magnitude_cut_keeps_the_k_largest_ties_to_the_lower_index(monkeypatch, misleading):
    monkeypatch.setattr(magnitude_cut, "CUT_SAMPLE", 1000)  # samples every 10th of 10000 entries
    base, deltas = tie_heavy((10_000,), torch.float32)
    base = torch.zeros(10_000)
    if misleading:  # every sampled entry is the largest: at densities 0.3 and 0.77 the bracket misses
        for delta in deltas:
            delta[::10] = 100.0
    for density, delta in zip([0.3, 0.77, 0.05], deltas, strict=True):
        k = int(density * delta.numel())
        expected = torch.zeros_like(delta)
        order = delta.abs().argsort(descending=True, stable=True)[:k]
        expected[order] = delta[order]
        settings = task_arithmetic.TaskArithmeticSettings("magnitude", None, weight=[1.0], density=[density])
        out = task_arithmetic.generalized_task_arithmetic(base, [delta], settings, block=640)
        assert torch.equal(out, expected)


def per_layer_recipe(tiny_models, layer1_weight: float):
    sources = [{"model": str(tiny_models[n]), "weight": [0.5, layer1_weight]} for n in "ab"]
    return recipe_from_dict(
        {"method": "task_arithmetic", "base": str(tiny_models["base"]), "sources": sources}
    )


def test_tensors_whose_parameters_did_not_change_are_not_written_again(tiny_models):
    first, second = per_layer_recipe(tiny_models, 0.5), per_layer_recipe(tiny_models, 0.9)
    engine = MergeEngine.from_recipe(first)
    model = engine.new_target()
    engine.materialize(first, model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        params["model.layers.0.mlp.up_proj.weight"].fill_(7.0)  # a write the engine cannot know of
    engine.materialize(second, model)
    assert torch.all(
        params["model.layers.0.mlp.up_proj.weight"] == 7.0
    )  # layer 0's parameters did not change
    expected = dict(engine.merged_tensors(second))
    assert torch.equal(
        params["model.layers.1.mlp.up_proj.weight"], expected["model.layers.1.mlp.up_proj.weight"]
    )
    other = engine.new_target()  # a second target has its own record: everything is written
    engine.materialize(second, other)
    assert all(torch.equal(t, expected[n]) for n, t in other.named_parameters() if n in expected)


def test_sources_can_stay_on_another_device_in_another_dtype(tiny_models):
    recipe = per_layer_recipe(tiny_models, 0.9)
    engine = MergeEngine.from_recipe(recipe, device="cpu", sources_device="cpu", sources_dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in engine.sources[0].tensors.values() if t.is_floating_point())
    model = engine.new_target(torch.float32)
    engine.materialize(recipe, model)
    base = engine.base.tensors["model.layers.1.mlp.up_proj.weight"].float()
    expected = base + sum(
        0.9 * (s.tensors["model.layers.1.mlp.up_proj.weight"].float() - base) for s in engine.sources
    )
    assert torch.allclose(
        dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"], expected, atol=1e-6
    )


@pytest.mark.parametrize(
    ("device", "sources_device", "message"),
    [
        ("cuda", None, "keep the sources in host memory"),
        ("cuda", "cpu", "the models of the merge need"),
        ("cpu", None, "use fewer or smaller models"),
    ],
)
def test_a_merge_that_cannot_fit_is_refused_before_loading(
    monkeypatch, tiny_models, device, sources_device, message
):
    monkeypatch.setattr(engine_module, "free_bytes", lambda where: 1000)
    with pytest.raises(UsageError, match=message):
        MergeEngine.from_recipe(
            per_layer_recipe(tiny_models, 0.9), device=device, sources_device=sources_device
        )


def test_a_run_config_keeps_the_sources_where_and_in_the_precision_it_says(tiny_models, task_dir, tmp_path):
    from runs import config_data

    from evomerge.config import config_from_dict
    from evomerge.search.scoring import CandidateScorer

    data = config_data(tiny_models, task_dir, tmp_path / "run", sources_device="cpu", sources_dtype="float16")
    data["recipe"]["method"] = "task_arithmetic"  # no magnitude cut: float16 rounding could move one
    data["genome"] = data["genome"][:1]
    scorer = CandidateScorer(config_from_dict(data))
    resident = [*scorer.engine.sources, scorer.engine.base]
    assert {t.dtype for model in resident for t in model.tensors.values()} == {torch.float16}
    assert next(scorer.model.parameters()).dtype == torch.float32  # the target keeps the models' own dtype
    merged = MergeEngine.from_recipe(scorer.config.recipe).merged_tensors(scorer.config.recipe)
    scorer.score(scorer.config.recipe)  # materialized from the float16 sources
    target = dict(scorer.model.named_parameters())
    for name, full_precision in merged:  # equal to the float32 sources' merge up to float16 rounding
        torch.testing.assert_close(target[name], full_precision, rtol=2e-3, atol=2e-3)
    with pytest.raises(UsageError, match="sources_dtype: Input should be 'float32', 'float16' or 'bfloat16'"):
        config_from_dict({**data, "sources_dtype": "int8"})
