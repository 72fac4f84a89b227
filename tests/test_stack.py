"""The data-flow space: the slot genome, stacked models that reference the sources' layers, and export."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM

from evomerge.errors import UsageError
from evomerge.stack.engine import StackEngine, write_stack
from evomerge.stack.genome import StackGenome
from evomerge.stack.recipe import StackLayer, StackRecipe, StackSpace, load_stack, stack_from_dict

IDS = torch.tensor([[1, 5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def space(tiny_models) -> StackSpace:
    return StackSpace(
        sources=[str(tiny_models["a"]), str(tiny_models["b"])], repeats=2, scale_low=0.5, scale_high=2.0
    )


@pytest.fixture(scope="module")
def engine(space) -> StackEngine:
    return StackEngine.from_space(space)


def stack(space: StackSpace, *layers: tuple[int, int, float]) -> StackRecipe:
    return StackRecipe(
        sources=space.sources, layers=[StackLayer(source=s, layer=i, scale=c) for s, i, c in layers]
    )


def test_slots_are_the_sources_layers_in_order_repeated(space):
    genome = StackGenome(space, [2, 2])
    assert genome.slots == [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    assert genome.dimension == 16 and genome.names[:3] == ["slot0.include", "slot0.scale", "slot1.include"]


def test_a_stack_encodes_to_genes_that_decode_back_to_it(space):
    genome = StackGenome(space, [2, 2])
    wanted = stack(space, (0, 1, 1.0), (1, 0, 1.5), (0, 0, 0.5), (1, 1, 2.0))
    assert genome.decode(genome.encode(wanted)) == wanted
    assert genome.decode_unit(genome.encode_unit(wanted)) == wanted
    with pytest.raises(UsageError, match="no slot left"):
        genome.encode(stack(space, (0, 1, 1.0), (0, 0, 1.0), (0, 1, 1.0), (0, 0, 1.0)))


def test_depth_guards_keep_the_highest_or_drop_the_lowest_inclusion_values(space):
    genome = StackGenome(space.model_copy(update={"min_depth": 3, "max_depth": 4}), [2, 2])
    values = {f"slot{i}.include": 0.1 * i for i in range(8)} | {f"slot{i}.scale": 1.0 for i in range(8)}
    assert genome.kept_slots(values) == [5, 6, 7]  # only slot 6 and 7 are above 0.5; slot 5 is the next best
    values.update({f"slot{i}.include": 0.9 - 0.01 * i for i in range(8)})
    assert genome.kept_slots(values) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"repeats": 0}, "repeats"),
        ({"min_depth": 5, "max_depth": 4}, "max_depth 4 < min_depth 5"),
        ({"scale_low": 2.0, "scale_high": 1.0}, "scale_low"),
        ({"embeddings": 2}, "names no source"),
    ],
)
def test_bad_stack_spaces_are_refused(space, change, message):
    with pytest.raises(ValueError, match=message):
        StackSpace.model_validate({**space.model_dump(), **change})


def test_a_depth_no_genome_can_reach_is_refused(space):
    with pytest.raises(UsageError, match="min_depth 9 is more than the 8 slots"):
        StackGenome(space.model_copy(update={"min_depth": 9}), [2, 2])


def test_stack_recipes_round_trip_through_yaml(space, tmp_path):
    wanted = stack(space, (1, 0, 1.5), (0, 1, 1.0))
    (tmp_path / "stack.yaml").write_text(wanted.to_yaml())
    assert load_stack(tmp_path / "stack.yaml") == wanted
    with pytest.raises(UsageError, match="source index 3 names no source"):
        stack_from_dict({"sources": space.sources, "layers": [[3, 0, 1.0]]})


def test_a_source_stack_is_that_source_and_no_weight_is_copied(space, engine):
    model = engine.new_target()
    engine.materialize(StackGenome(space, engine.source_layers).source_stack(0, 2), model)
    source = engine.sources[0].model
    assert torch.equal(model(IDS).logits, source(IDS).logits)
    ours = {p.data_ptr() for p in model.parameters()}
    assert ours <= {p.data_ptr() for e in engine.sources for p in e.model.parameters()}
    assert source.config.num_hidden_layers == 2 and len(source.model.layers) == 2


def test_a_layer_used_twice_gets_its_own_cache_slot_so_generation_matches_full_recomputation(space, engine):
    model = engine.new_target()
    engine.materialize(stack(space, (0, 0, 1.0), (1, 0, 1.3), (0, 0, 0.7), (0, 1, 1.0)), model)
    generated = model.generate(IDS, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    recomputed = IDS
    for _ in range(6):
        recomputed = torch.cat([recomputed, model(recomputed, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, recomputed)


def test_scales_multiply_the_hidden_state_entering_the_layer(space, engine):
    model = engine.new_target()
    engine.materialize(stack(space, (0, 0, 2.0)), model)
    layer, source = engine.sources[0].model.model.layers[0], engine.sources[0].model
    embedded = source.model.embed_tokens(IDS)
    positions = source.model.rotary_emb(embedded, torch.arange(IDS.shape[1])[None])
    hidden = layer(2.0 * embedded, position_embeddings=positions, attention_mask=None)
    expected = source.lm_head(source.model.norm(hidden))
    torch.testing.assert_close(model(IDS, attention_mask=torch.ones_like(IDS)).logits, expected)


def test_export_is_a_plain_checkpoint_with_the_scales_folded(space, tmp_path):
    engine = StackEngine.from_space(space)  # its own: the norms' epsilon is set to 0 below
    wanted = stack(space, (1, 1, 0.6), (0, 0, 1.7), (1, 0, 1.0), (0, 0, 0.8), (0, 1, 1.2))
    model = engine.new_target()
    engine.materialize(wanted, model)
    write_stack(wanted, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert exported.config.num_hidden_layers == 5
    assert load_stack(tmp_path / "out" / "recipe.yaml") == wanted
    scaled, folded = model(IDS).logits, exported(IDS).logits
    assert (
        folded - scaled
    ).abs().max() < 0.01 * scaled.abs().max()  # RMSNorm's epsilon: see evomerge/stack/engine.py
    for norm in [m for net in (exported, *(s.model for s in engine.sources)) for m in net.modules()]:
        if hasattr(norm, "variance_epsilon"):
            norm.variance_epsilon = 0.0
    torch.testing.assert_close(exported(IDS).logits, model(IDS).logits)  # without it the fold is exact
    with pytest.raises(UsageError, match="already exists"):
        write_stack(wanted, tmp_path / "out")


def test_sources_whose_layers_cannot_be_stacked_are_refused(tiny_models, tmp_path):
    wide = save_tiny_llama(tmp_path / "wide", 7, hidden_size=32)
    with pytest.raises(UsageError, match="hidden_size is 32 there but 16 here"):
        StackEngine.from_space(StackSpace(sources=[str(tiny_models["a"]), str(wide)]))
