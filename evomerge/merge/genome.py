"""The genome: which recipe parameters a search varies, at what granularity, within what bounds.

A genome turns a point of the search space into a Recipe (`decode`) and a Recipe into a point (`encode`, to
seed a search with known merges). The search space is built from what the merge method declares: a searched
parameter that the method takes per source gets one gene per source, a global one a single gene, and each
is then split by granularity:

- `global`: one value for every tensor;
- `layer`: one value per decoder layer (a list in the recipe);
- `group`: one value per group of `group_size` consecutive layers (written out as a per-layer list);
- `kind`: one value per module kind present in the models (embedding, attention, mlp, norm, head, and a
  `default` gene when the models have tensors of no known kind).

Genes are named after where they land in the recipe, e.g. `sources.0.density@layer1`,
`parameters.scale@global`, `sources.2.weight@attention`, `sources.1.weight@layers2-3`.

Optimizers see the unit cube: `decode_unit` maps u in [0, 1] to low + u (high - low), or geometrically
between low and high for a `log` parameter. A coordinate outside [0, 1] is first reflected back into it
(1.2 -> 0.8, -0.3 -> 0.3): an unbounded optimizer such as CMA-ES then sees no flat plateau past the bounds.
`decode` rounds a parameter that the method declares on a grid (TIES' density) to it (ParamSpec.on_grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.errors import UsageError
from evomerge.merge.methods.registry import ParamSpec
from evomerge.merge.recipe import Recipe, recipe_from_dict
from evomerge.merge.values import MODULE_KINDS, resolve_value
from evomerge.search.genes import Gene, GeneSpace, SearchedParam


class Genome(GeneSpace):
    """The genes of a search over one template recipe and one set of models."""

    def __init__(self, template: Recipe, searched: Sequence[SearchedParam], num_layers: int, kinds: set[str]):
        self.template = template
        self.num_layers = num_layers
        method = template.method_def
        gene_kinds = [k for k in MODULE_KINDS if k in kinds] + (
            ["default"] if kinds - set(MODULE_KINDS) else []
        )
        genes: list[Gene] = []
        seen: set[str] = set()
        for searched_param in searched:
            spec = method.param(searched_param.param)
            if spec.kind == "bool":
                raise UsageError(
                    f"genome: '{spec.name}' is true/false and cannot be searched; fix it in the recipe"
                )
            if searched_param.param in seen:
                raise UsageError(f"genome: '{searched_param.param}' is listed twice")
            seen.add(searched_param.param)
            for bound in (searched_param.low, searched_param.high):
                spec.check(bound, f"genome: bounds of '{spec.name}'")
            sources = range(len(template.sources)) if spec.scope == "source" else [None]
            for source in sources:
                genes.extend(_genes_of(searched_param, spec, source, num_layers, gene_kinds))
        if not genes:
            raise UsageError("genome: no parameter is searched; list at least one under 'genome'")
        self.genes = genes

    def decode(self, values: Mapping[str, float]) -> Recipe:
        """The recipe whose searched parameters take `values` (gene name -> parameter value, rounded to the
        parameter's grid if it has one)."""
        data = self.template.model_dump(exclude_none=True)
        per_place: dict[tuple[int | None, str], Any] = {}
        for gene in self.genes:
            key = (gene.source, gene.param.param)
            value = gene.on_grid(float(values[gene.name]))
            if gene.kind is not None:
                per_place.setdefault(key, {})[gene.kind] = value
            elif gene.layers is not None:
                layer_values = per_place.setdefault(key, [0.0] * self.num_layers)
                for layer in gene.layers:
                    layer_values[layer] = value
            else:
                per_place[key] = value
        for (source, name), value in per_place.items():
            target = data["sources"][source] if source is not None else data.setdefault("parameters", {})
            target[name] = value
        return recipe_from_dict(data, origin="genome")

    def encode(self, recipe: Recipe) -> dict[str, float]:
        """Gene values that reproduce `recipe` as closely as this genome can, clipped to the bounds.

        A recipe finer than the genome is projected: each gene takes the recipe's value at its first layer
        (or, for a kind gene, at the middle layer for that kind).
        """
        if [s.model for s in recipe.sources] != [s.model for s in self.template.sources]:
            raise UsageError(
                "genome: a seed recipe must list the same sources, in the same order, as the search"
            )
        values = {}
        for gene in self.genes:
            name = gene.param.param
            spec = self.template.method_def.param(name)
            if gene.source is None:
                raw = recipe.parameters.get(name, spec.default)
            else:
                raw = recipe.sources[gene.source].parameters.get(name, spec.default)
            layer = gene.layers[0] if gene.layers is not None else self.num_layers // 2
            kind = gene.kind if gene.kind not in (None, "default") else "mlp"
            value = float(resolve_value(raw, layer, kind, self.num_layers, f"seed recipe {gene.name}"))
            values[gene.name] = gene.value(gene.unit(value))
        return values


def _genes_of(
    searched: SearchedParam, spec: ParamSpec, source: int | None, num_layers: int, kinds: list[str]
) -> list[Gene]:
    place = f"sources.{source}.{searched.param}" if source is not None else f"parameters.{searched.param}"
    if searched.granularity == "global":
        return [Gene(f"{place}@global", searched, source, None, None, spec)]
    if searched.granularity == "kind":
        return [Gene(f"{place}@{kind}", searched, source, None, kind, spec) for kind in kinds]
    size = 1 if searched.granularity == "layer" else searched.group_size
    genes = []
    for start in range(0, num_layers, size):
        layers = tuple(range(start, min(start + size, num_layers)))
        label = f"layer{start}" if len(layers) == 1 else f"layers{layers[0]}-{layers[-1]}"
        genes.append(Gene(f"{place}@{label}", searched, source, layers, None, spec))
    return genes
