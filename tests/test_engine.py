"""The engine: in-place materialization, per-layer / per-kind recipes, reproducibility, dtypes, failures."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import MergeFailure, UsageError
from evomerge.merge.engine import MergeEngine
from evomerge.merge.recipe import recipe_from_dict
from evomerge.sources import LoadedModel, load_model


def recipe(tiny_models, method="dare_ties", seed=0, **per_source):
    sources = [
        {"model": str(tiny_models[n]), **{k: v[i] for k, v in per_source.items()}}
        for i, n in enumerate("abc")
    ]
    return recipe_from_dict(
        {"method": method, "base": str(tiny_models["base"]), "sources": sources, "seed": seed}
    )


@pytest.fixture(scope="module")
def engine(tiny_models) -> MergeEngine:
    return MergeEngine.from_recipe(recipe(tiny_models))


def state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_materialize_writes_in_place_what_merged_tensors_computes(engine, tiny_models):
    model = engine.new_target()
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    r = recipe(tiny_models, drop=[0.3, 0.5, 0.1])
    engine.materialize(r, model)
    params = dict(model.named_parameters())
    for name, merged in engine.merged_tensors(r):
        assert torch.equal(params[name], merged.to(params[name].dtype)), name
    assert pointers == {name: p.data_ptr() for name, p in model.named_parameters()}


def test_materialize_is_bit_reproducible_whatever_came_before(engine, tiny_models):
    model = engine.new_target()
    first, other = recipe(tiny_models, drop=[0.5] * 3, seed=1), recipe(tiny_models, drop=[0.2] * 3, seed=2)
    engine.materialize(first, model)
    before = state(model)
    engine.materialize(other, model)
    assert any(not torch.equal(before[n], t) for n, t in state(model).items())
    engine.materialize(first, model)
    assert all(torch.equal(before[n], t) for n, t in state(model).items())


def test_dare_seed_changes_the_merge(engine, tiny_models):
    model = engine.new_target()
    engine.materialize(recipe(tiny_models, drop=[0.5] * 3, seed=1), model)
    one = state(model)
    engine.materialize(recipe(tiny_models, drop=[0.5] * 3, seed=2), model)
    assert not torch.equal(
        one["model.layers.0.mlp.up_proj.weight"], model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    )


def test_per_layer_weights_pick_each_layer_from_its_source(tiny_models):
    a, b = load_model(str(tiny_models["a"])), load_model(str(tiny_models["b"]))
    r = recipe_from_dict(
        {
            "method": "linear",
            "sources": [{"model": a.ref, "weight": [1.0, 0.0]}, {"model": b.ref, "weight": [0.0, 1.0]}],
        }
    )
    merged = dict(MergeEngine(None, [a, b]).merged_tensors(r))
    for name, tensor in merged.items():
        expected = b if ".layers.1." in name or name in ("lm_head.weight", "model.norm.weight") else a
        assert torch.equal(tensor, expected.tensors[name].float()), name


def test_per_kind_weights_pick_each_module_kind_from_its_source(tiny_models):
    a, b = load_model(str(tiny_models["a"])), load_model(str(tiny_models["b"]))
    r = recipe_from_dict(
        {
            "method": "linear",
            "sources": [
                {"model": a.ref, "weight": {"attention": 1.0, "default": 0.0}},
                {"model": b.ref, "weight": {"attention": 0.0, "default": 1.0}},
            ],
        }
    )
    for name, tensor in MergeEngine(None, [a, b]).merged_tensors(r):
        expected = a if "self_attn" in name else b
        assert torch.equal(tensor, expected.tensors[name].float()), name


def test_stores_in_the_target_dtype(engine, tiny_models):
    model = engine.new_target(torch.bfloat16)
    r = recipe(tiny_models, drop=[0.0] * 3)
    engine.materialize(r, model)
    params = dict(model.named_parameters())
    for name, merged in engine.merged_tensors(r):
        assert params[name].dtype == torch.bfloat16
        assert torch.equal(params[name], merged.to(torch.bfloat16))


def test_integer_tensors_are_copied_not_merged(tiny_models):
    base, a, b = (load_model(str(tiny_models[n])) for n in ("base", "a", "b"))
    for i, model in enumerate((base, a, b)):
        model.tensors["model.position_ids"] = torch.arange(8) + i
    r = recipe_from_dict(
        {"method": "task_arithmetic", "base": base.ref, "sources": [{"model": a.ref}, {"model": b.ref}]}
    )
    merged = dict(MergeEngine(base, [a, b]).merged_tensors(r))
    assert torch.equal(merged["model.position_ids"], torch.arange(8))


def test_nan_or_inf_in_the_merge_is_a_merge_failure(tiny_models):
    base, a = load_model(str(tiny_models["base"])), load_model(str(tiny_models["a"]))
    a.tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    r = recipe_from_dict({"method": "task_arithmetic", "base": base.ref, "sources": [{"model": a.ref}]})
    with pytest.raises(MergeFailure, match="NaN or Inf in tensor 'model.layers.1.mlp.up_proj.weight'"):
        dict(MergeEngine(base, [a]).merged_tensors(r))


def test_engine_refuses_a_recipe_over_other_models(engine, tiny_models):
    other = recipe_from_dict(
        {"method": "ties", "base": str(tiny_models["base"]), "sources": [{"model": str(tiny_models["a"])}]}
    )
    with pytest.raises(UsageError, match="this engine holds"):
        engine.plan(other)


def test_each_model_named_twice_is_loaded_once(tiny_models):
    r = recipe_from_dict(
        {
            "method": "linear",
            "sources": [{"model": str(tiny_models["a"])}, {"model": str(tiny_models["a"]), "weight": 2.0}],
        }
    )
    engine = MergeEngine.from_recipe(r)
    assert engine.sources[0] is engine.sources[1]
    assert isinstance(engine.sources[0], LoadedModel)


def test_tied_embeddings_are_merged_once_and_stay_tied(tmp_path):
    from conftest import save_tiny_llama

    base, a, b = (
        load_model(str(save_tiny_llama(tmp_path / n, seed=s, tie_word_embeddings=True)))
        for s, n in enumerate(("base", "a", "b"))
    )
    r = recipe_from_dict(
        {"method": "task_arithmetic", "base": base.ref, "sources": [{"model": a.ref}, {"model": b.ref}]}
    )
    engine = MergeEngine(base, [a, b])
    model = engine.new_target()
    engine.materialize(r, model)
    merged = dict(engine.merged_tensors(r))
    assert "lm_head.weight" not in merged
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, merged["model.embed_tokens.weight"])
