"""The genome: the search space a method's declarations give, and vector <-> recipe."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from evomerge.errors import UsageError
from evomerge.merge.engine import MergeEngine
from evomerge.merge.genome import Genome
from evomerge.merge.methods import get_method
from evomerge.merge.recipe import recipe_from_dict
from evomerge.search.genes import SearchedParam
from evomerge.sources import load_model

KINDS = {"embedding", "attention", "mlp", "norm", "head"}


def template(n_sources=3, method="ties", **parameters):
    return recipe_from_dict(
        {
            "method": method,
            "base": "m/base",
            "sources": [{"model": f"m/{i}"} for i in range(n_sources)],
            "parameters": parameters,
        }
    )


SEARCH = [
    SearchedParam(param="weight", granularity="layer", low=0.0, high=2.0),
    SearchedParam(param="density", granularity="group", group_size=3, low=0.1, high=1.0),
    SearchedParam(param="scale", granularity="global", low=0.5, high=1.5),
]


def test_the_method_declarations_give_one_gene_per_source_layer_group_or_kind():
    genome = Genome(template(), SEARCH, num_layers=4, kinds=KINDS)
    # weight: 3 sources x 4 layers; density: 3 sources x 2 groups (0-2, 3); scale: global
    assert genome.dimension == 12 + 6 + 1
    assert genome.names[:2] == ["sources.0.weight@layer0", "sources.0.weight@layer1"]
    assert "sources.2.density@layers0-2" in genome.names and "sources.2.density@layer3" in genome.names
    assert genome.names[-1] == "parameters.scale@global"


def test_decode_writes_per_layer_group_and_global_values_into_the_recipe():
    genome = Genome(template(), SEARCH, num_layers=4, kinds=KINDS)
    values = {name: 0.5 for name in genome.names}
    values["sources.1.weight@layer2"] = 1.75
    values["sources.0.density@layer3"] = 0.25
    recipe = genome.decode(values)
    assert recipe.sources[1].parameters["weight"] == [0.5, 0.5, 1.75, 0.5]
    assert recipe.sources[0].parameters["density"] == [0.5, 0.5, 0.5, 0.25]
    assert recipe.parameters["scale"] == 0.5
    assert recipe.method == "ties" and recipe.base == "m/base"


def test_decode_rounds_densities_to_the_magnitude_rank_grid_within_the_bounds():
    genome = Genome(template(), SEARCH, num_layers=4, kinds=KINDS)
    values = {name: 0.5 for name in genome.names}
    values["sources.0.density@layer3"] = 0.2
    values["sources.1.weight@layer2"] = 0.2  # weights have no grid
    recipe = genome.decode(values)
    assert recipe.sources[0].parameters["density"][3] == 819 / 4096  # round(0.2 * 4096) = 819
    assert recipe.sources[1].parameters["weight"][2] == 0.2
    density = get_method("ties").param("density")
    assert density.on_grid(0.30001, 0.3, 0.9) == 1229 / 4096  # the nearest multiple inside [0.3, 0.9]
    assert density.on_grid(0.3, 0.3, 0.3) == 0.3  # no multiple inside the bounds: unchanged
    assert density.on_grid(1e-6, 1e-6, 0.1) == 1 / 4096  # never 0, which the density excludes


def test_kind_granularity_gives_a_gene_per_kind_present_and_a_default_for_unknown_kinds():
    searched = [SearchedParam(param="weight", granularity="kind", low=0.0, high=1.0)]
    genome = Genome(template(n_sources=1), searched, num_layers=2, kinds=KINDS | {"other"})
    assert genome.names == [
        f"sources.0.weight@{k}" for k in ("embedding", "attention", "mlp", "norm", "head", "default")
    ]
    recipe = genome.decode_unit([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert recipe.sources[0].parameters["weight"] == pytest.approx(
        {"embedding": 0.0, "attention": 0.2, "mlp": 0.4, "norm": 0.6, "head": 0.8, "default": 1.0}
    )


def test_unit_cube_maps_linearly_or_geometrically_and_reflects_outside_points():
    searched = [
        SearchedParam(param="density", granularity="global", low=0.01, high=1.0, log=True),
        SearchedParam(param="scale", granularity="global", low=0.0, high=2.0),
    ]
    genome = Genome(template(n_sources=1), searched, num_layers=2, kinds=KINDS)
    recipe = genome.decode_unit([0.5, 0.25])
    half_step = 0.5 / 4096  # densities are rounded to multiples of 1/4096
    assert genome.genes[0].value(0.5) == pytest.approx(0.1)
    assert recipe.sources[0].parameters["density"] == pytest.approx(0.1, abs=half_step)
    assert recipe.parameters["scale"] == 0.5
    reflected = genome.decode_unit([1.7, -0.25])  # reflected to 0.3 and 0.25
    assert reflected.sources[0].parameters["density"] == pytest.approx(0.01**0.7, abs=half_step)
    assert reflected.parameters["scale"] == 0.5
    assert genome.decode_unit([3.0, 2.5]).parameters["scale"] == 1.0  # 2.5 -> 0.5


def test_encode_inverts_decode_and_projects_finer_recipes():
    genome = Genome(template(), SEARCH, num_layers=4, kinds=KINDS)
    unit = [i / (genome.dimension + 1) for i in range(1, genome.dimension + 1)]
    # up to the densities' rounding to multiples of 1/4096 (half a step over the bounds' width 0.9)
    assert genome.encode_unit(genome.decode_unit(unit)) == pytest.approx(unit, abs=0.5 / 4096 / 0.9)
    uniform = template()  # weight 1, density 1, scale 1 by default
    values = genome.encode(uniform)
    assert values["sources.0.weight@layer0"] == 1.0 and values["sources.2.density@layer3"] == 1.0
    assert values["parameters.scale@global"] == 1.0


def test_decoded_recipes_merge_on_real_models(tiny_models):
    base = load_model(str(tiny_models["base"]))
    sources = [load_model(str(tiny_models[n])) for n in "abc"]
    t = recipe_from_dict({"method": "ties", "base": base.ref, "sources": [{"model": s.ref} for s in sources]})
    genome = Genome(t, SEARCH, num_layers=base.num_layers, kinds=base.module_kinds)
    engine = MergeEngine(base, sources)
    model = engine.new_target()
    engine.materialize(genome.decode_unit([0.3] * genome.dimension), model)
    first = model.state_dict()["model.layers.1.mlp.up_proj.weight"].clone()
    engine.materialize(genome.decode_unit([0.9] * genome.dimension), model)
    assert not torch.equal(first, model.state_dict()["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize(
    ("searched", "message"),
    [
        ([SearchedParam(param="density", low=0.0, high=1.0)], "'density' = 0.0 is outside \\(0, 1\\]"),
        ([SearchedParam(param="normalize", low=0.0, high=1.0)], "cannot be searched"),
        ([SearchedParam(param="densty", low=0.1, high=1.0)], "did you mean 'density'"),
        ([SearchedParam(param="scale", low=0.1, high=1.0)] * 2, "listed twice"),
        ([], "no parameter is searched"),
    ],
)
def test_bad_genomes_are_refused_with_one_line(searched, message):
    with pytest.raises(UsageError, match=message):
        Genome(template(), searched, num_layers=2, kinds=KINDS)


def test_bounds_out_of_order_or_log_of_zero_are_refused():
    with pytest.raises(ValidationError, match="low 1.0 > high 0.5"):
        SearchedParam(param="scale", low=1.0, high=0.5)
    with pytest.raises(ValidationError, match="log scale needs low > 0"):
        SearchedParam(param="scale", low=0.0, high=1.0, log=True)
