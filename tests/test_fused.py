"""Compiled kernels, DARE's counter-based draws and the magnitude ranks (sorted or counted): each a faster way
to compute the same merge, checked against the block path, against Python's integers and against a stable
sort."""

from __future__ import annotations

import warnings

import pytest
import torch

from evomerge.errors import MergeFailure
from evomerge.merge import engine as engine_module
from evomerge.merge import layout
from evomerge.merge.engine import MergeEngine
from evomerge.merge.methods import fused, get_method
from evomerge.merge.methods.counter_random import DRAW_RANGE, draws, index_hash, mix32, mix32_int, source_key
from evomerge.merge.methods.magnitude_cut import RANK_GRID, RANKS_BYTES_PER_ELEMENT, MagnitudeRanks, top_cut
from evomerge.merge.recipe import recipe_from_dict
from evomerge.sources import load_model


def tie_heavy(n: int, sources: int = 3, dtype=torch.bfloat16) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and sources whose task vectors take few distinct magnitudes (many ties at any cut)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=generator).to(dtype)
    return base, [
        (base.float() + torch.randint(-3, 4, (n,), generator=generator) * 0.5).to(dtype)
        for _ in range(sources)
    ]


def test_the_hash_is_lowbias32_on_32_bit_integers():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9]
    as_int32 = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    assert [x & 0xFFFFFFFF for x in mix32(as_int32).tolist()] == [mix32_int(v) for v in values]
    assert mix32_int(1) == 0x688990C0  # pinned: the draws, hence every DARE merge, must never change
    start = 2**31 - 10  # indices past 2^31 are taken modulo 2^32 as well
    hashed = [x & 0xFFFFFFFF for x in index_hash(start, start + 20).tolist()]
    assert hashed == [mix32_int(e) for e in range(start, start + 20)]


def test_draws_are_uniform_and_independent_across_sources_and_seeds():
    hashed = index_hash(0, 1 << 20)
    a, b, c = (draws(hashed, source_key(seed, source)) for seed, source in [(1, 0), (1, 1), (2, 0)])
    for d in (a, b, c):
        assert int(d.min()) >= 0 and int(d.max()) < DRAW_RANGE
        assert abs(float((d < DRAW_RANGE // 4).float().mean()) - 0.25) < 0.003
    # two masks at keep 1/2 agree on about half the entries, as independent ones would
    assert abs(float(((a < DRAW_RANGE // 2) == (b < DRAW_RANGE // 2)).float().mean()) - 0.5) < 0.003
    assert abs(float(((a < DRAW_RANGE // 2) == (c < DRAW_RANGE // 2)).float().mean()) - 0.5) < 0.003


def test_magnitude_ranks_give_the_k_largest_with_ties_to_the_lower_index():
    base, sources = tie_heavy(10_007)
    magnitude = (sources[0].float() - base.float()).abs()
    order = magnitude.argsort(descending=True, stable=True)
    ranks = MagnitudeRanks.of(base, sources[0])
    n = magnitude.numel()
    for j in (0, 1, 5, 1000, 2048, 3333, RANK_GRID - 1):
        k = j * n // RANK_GRID
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order[:k]] = True
        cut = ranks.cut(k)
        assert torch.equal(cut.mask(magnitude), expected), j
        assert torch.equal(cut.mask(magnitude[100:], start=100), expected[100:])  # a block that starts later
        selected = top_cut(lambda a, b: magnitude[a:b], base, sources[0], 1000, k)
        assert torch.equal(selected.mask(magnitude), expected), j
    assert ranks.cut(3) is None  # not a stored rank: the merge selects it instead


@pytest.mark.parametrize("block", [1000, 4096, 1 << 20])
def test_counted_ranks_are_the_sorted_ones_block_by_block(block):
    base, sources = tie_heavy(30_011, sources=1)
    continuous = (
        base.float() + torch.randn(30_011, generator=torch.Generator().manual_seed(1)) * 1e-2
    ).bfloat16()
    continuous[7] = float("nan")  # NaN counts as the largest magnitude in both
    for source in (sources[0], continuous):
        sorted_, counted = MagnitudeRanks.of(base, source), MagnitudeRanks.counted(base, source, block)
        torch.testing.assert_close(counted.thresholds, sorted_.thresholds, rtol=0, atol=0, equal_nan=True)
        magnitude = (source.float() - base.float()).abs()
        for j in range(RANK_GRID + 1):
            k = j * 30_011 // RANK_GRID
            assert torch.equal(counted.cut(k).mask(magnitude), sorted_.cut(k).mask(magnitude)), j


FUSED_PARAMS = {
    "weight": [0.7, -0.3, 1.2],
    "density": [0.5, 0.25, 0.75],
    "drop": [0.5, 0.1, 0.0],
    "gamma": [0.125, 0.0625, 0.25],
    "scale": 0.9,
}


@pytest.mark.parametrize("wide, kept_hash", [(False, True), (False, False), (True, False)])
@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs"])
def test_compiled_kernels_give_the_block_path_merge(name, wide, kept_hash, monkeypatch):
    if wide:  # index the elements in int64, as for tensors of 2^31 elements or more
        monkeypatch.setattr(fused, "WIDE_FROM_ELEMENTS", 0)
    if not kept_hash:  # DARE's index hash computed in the kernel, as for rows longer than KEPT_HASH_ELEMENTS
        monkeypatch.setattr(fused, "KEPT_HASH_ELEMENTS", 0)
    monkeypatch.setattr(fused, "_kept_hashes", {})
    method = get_method(name)
    base, sources = tie_heavy(20_011)
    params = {spec.name: FUSED_PARAMS.get(spec.name, spec.default) for spec in method.params}
    ranks = [MagnitudeRanks.of(base, s) for s in sources] if method.uses_ranks else None
    settings = method.settings_for(params, seed=5)
    blocks = torch.empty(20_011)
    method.merge_into(blocks, base, sources, settings, block=4096, ranks=ranks)
    compiled = torch.empty(20_011)
    method.merge_into(compiled, base, sources, settings, compiled=True, ranks=ranks)
    assert not fused._unavailable, fused._unavailable  # the kernel ran: no fall back to blocks
    torch.testing.assert_close(compiled, blocks, rtol=1e-6, atol=1e-6)
    assert torch.equal(compiled == 0, blocks == 0)  # the same entries dropped
    kept = list(fused._kept_hashes.values())
    assert len(kept) == (name == "dare_ties" and kept_hash and not wide)
    assert all(torch.equal(hashed, index_hash(0, 20_011)) for hashed in kept)


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear"])
def test_the_engine_merges_the_same_model_by_kernels_over_rows_and_by_blocks(
    tiny_models, method, stacked, monkeypatch
):
    # layer 0 keeps whole task vectors (no cut, no drop), layer 1 sparsifies them: still one call per size
    sources = [
        {"model": str(tiny_models[n]), "weight": 0.6, "density": [1.0, 0.25], "drop": [0.0, 0.5]}
        for n in "ab"
    ]
    sources = [
        {k: v for k, v in s.items() if k in get_method(method).param_names() + ["model"]} for s in sources
    ]
    recipe = recipe_from_dict({"method": method, "base": str(tiny_models["base"]), "sources": sources})
    rows = []  # the number of tensors each compiled call merged
    run_rows = fused._run_rows
    monkeypatch.setattr(
        fused, "_run_rows", lambda calls, sums: rows.append(len(calls)) or run_rows(calls, sums)
    )
    models = []
    for kernels in ("compiled", "blocks"):
        engine = MergeEngine.from_recipe(recipe, kernels=kernels)
        assert engine.compiled == (kernels == "compiled")
        models.append(engine.new_target(stacked=stacked))
        engine.materialize(recipe, models[-1])
        if kernels == "compiled":
            classes = layout.size_classes(dict(models[-1].named_parameters()))
    assert bool(engine._ranks) == (
        method == "ties"
    )  # the task vectors were sorted once, and the cuts looked up
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    # every floating tensor merged once; a stacked target's tensors of one size all in one call, as rows
    floating = sum(p.is_floating_point() for p in models[0].parameters())
    assert sum(rows) == floating
    in_classes = sorted(len(names) for names in classes)
    assert sorted(rows) == (
        sorted(in_classes + [1] * (floating - sum(in_classes))) if stacked else [1] * floating
    )


def test_stacked_tensors_and_parameters_keep_their_values_as_rows_of_one_buffer(tiny_models):
    model = load_model(str(tiny_models["a"]))
    tensors = dict(model.tensors)
    layout.stack(tensors)
    classes = layout.size_classes(model.tensors)
    assert classes and all(len(names) > 1 for names in classes)
    for name, tensor in model.tensors.items():
        assert torch.equal(tensors[name], tensor) and tensors[name].shape == tensor.shape, name
    for names in classes:
        first = tensors[names[0]]
        for row, name in enumerate(names):
            assert tensors[name].untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            assert tensors[name].storage_offset() == first.storage_offset() + row * first.numel()
    engine = MergeEngine(model, [model], kernels="blocks")
    target = engine.new_target()
    tokens = torch.arange(12).reshape(2, 6)
    expected = target(tokens).logits
    layout.stack_parameters(target)
    assert torch.equal(target(tokens).logits, expected)
    parameters = dict(target.named_parameters())
    storages = {parameters[name].untyped_storage().data_ptr() for names in classes for name in names}
    assert len(storages) == len(classes)


@pytest.fixture
def without_a_compiler(monkeypatch):
    """torch.compile failing as it does without a C++ compiler, in a process that has not compiled yet."""

    def no_compiler(function, **options):
        def fail(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return fail

    monkeypatch.setattr(fused, "_unavailable", [])
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(torch, "compile", no_compiler)


def test_the_engine_merges_by_blocks_when_kernels_cannot_compile(tiny_models, without_a_compiler):
    recipe = recipe_from_dict(
        {
            "method": "dare_ties",
            "base": str(tiny_models["base"]),
            "sources": [{"model": str(tiny_models[n]), "drop": 0.5} for n in "ab"],
        }
    )
    blocks = MergeEngine.from_recipe(recipe, kernels="blocks")
    expected = blocks.new_target()
    blocks.materialize(recipe, expected)
    engine = MergeEngine.from_recipe(recipe, kernels="compiled")
    model = engine.new_target()
    with pytest.warns(RuntimeWarning, match="compiled merge kernels cannot run here"):
        engine.materialize(recipe, model)
    for (name, a), b in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_engine_counts_the_ranks_of_tensors_too_large_to_sort_and_merges_the_same_model(
    tiny_models, monkeypatch
):
    sources = [{"model": str(tiny_models[n]), "weight": 0.6, "density": [0.5, 0.25]} for n in "ab"]
    recipe = recipe_from_dict({"method": "ties", "base": str(tiny_models["base"]), "sources": sources})
    sorted_engine = MergeEngine.from_recipe(recipe, kernels="blocks")
    expected = sorted_engine.new_target()
    sorted_engine.materialize(recipe, expected)
    counted, count = [], MagnitudeRanks.counted
    monkeypatch.setattr(
        engine_module, "RANKS_MEMORY_FLOOR", 0
    )  # 1/8 of a tiny model: most tensors are counted
    monkeypatch.setattr(
        MagnitudeRanks, "counted", lambda *args: counted.append(args[0].numel()) or count(*args)
    )
    counting_engine = MergeEngine.from_recipe(recipe, kernels="blocks")
    model = counting_engine.new_target()
    counting_engine.materialize(recipe, model)
    too_large = [
        t.numel()
        for t in counting_engine.base.tensors.values()
        if RANKS_BYTES_PER_ELEMENT * t.numel() > counting_engine._ranks_budget
    ]
    assert too_large and sorted(counted) == sorted(2 * too_large)
    for (name, a), b in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kernels", ["compiled", "blocks"])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties"])
def test_a_merge_that_writes_inf_fails_naming_the_tensor_by_kernels_and_by_blocks(
    tiny_models, method, kernels
):
    base, a = load_model(str(tiny_models["base"])), load_model(str(tiny_models["a"]))
    name = "model.layers.1.mlp.up_proj.weight"
    a.tensors[name][0] = float("inf")  # a whole row: some of it survives DARE's drops
    params = {"weight": 1.0, "density": 0.5, "drop": 0.5}
    source = {"model": a.ref} | {k: v for k, v in params.items() if k in get_method(method).param_names()}
    recipe = recipe_from_dict({"method": method, "base": base.ref, "sources": [source]})
    engine = MergeEngine(base, [a], kernels=kernels)
    model = engine.new_target()
    with pytest.raises(MergeFailure, match=f"NaN or Inf in tensor '{name}'"):
        engine.materialize(recipe, model)


@pytest.mark.parametrize("kernels", ["compiled", "blocks"])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_a_merge_that_overflows_only_in_float16_fails_by_kernels_and_by_blocks(tiny_models, method, kernels):
    base, a = load_model(str(tiny_models["base"])), load_model(str(tiny_models["a"]))
    params = {"density": 0.5, "drop": 0.5}
    source = {"model": a.ref} | {k: v for k, v in params.items() if k in get_method(method).param_names()}
    # deltas of ~1e-2 scaled to ~1e5: past float16's largest value, 65504
    recipe = recipe_from_dict(
        {"method": method, "base": base.ref, "sources": [source], "parameters": {"scale": 1e7}}
    )
    engine = MergeEngine(base, [a], kernels=kernels)
    engine.materialize(recipe, engine.new_target(torch.float32))  # finite in float32
    with pytest.raises(MergeFailure, match="NaN or Inf in tensor"):
        engine.materialize(recipe, engine.new_target(torch.float16))


def test_kernels_of_many_shapes_and_dtypes_all_run_compiled(monkeypatch):
    """More compiled variants of one kernel than dynamo's default limit (8), each first met after the kernel
    has compiled: all compile (past dynamo's limit, a call would raise here rather than run uncompiled)."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_unavailable", [])
    variants = [
        (rows, n, dtype, sources)
        for rows, n in [(1, 1000), (3, 1000), (1, 5000), (3, 5000)]
        for dtype in (torch.bfloat16, torch.float16)
        for sources in (2, 3)
    ]
    for rows, n, dtype, sources in variants:
        tensors = [torch.randn(rows, n).to(dtype) for _ in range(sources)]
        out = torch.empty(rows, n, dtype=dtype)
        coefficients = [0.5, 0.25, 0.25][:sources]
        calls = [fused.weighted_sum_call(out[r], [t[r] for t in tensors], coefficients) for r in range(rows)]
        assert fused.run_many(calls), fused._unavailable
        expected = sum(c * t.float() for c, t in zip(coefficients, tensors, strict=False)).to(dtype)
        torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)


def test_a_kernel_that_cannot_compile_falls_back_to_blocks_with_one_warning(without_a_compiler):
    method = get_method("ties")
    base, sources = tie_heavy(5000)
    params = {spec.name: FUSED_PARAMS.get(spec.name, spec.default) for spec in method.params}
    settings = method.settings_for(params)
    expected = method.merge(base, sources, settings)
    out = torch.empty(5000)
    with pytest.warns(RuntimeWarning, match="compiled merge kernels cannot run here .*No working C"):
        method.merge_into(out, base, sources, settings, compiled=True)
    assert torch.equal(out, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: blocks from now on
        method.merge_into(out, base, sources, settings, compiled=True)
    assert torch.equal(out, expected)
