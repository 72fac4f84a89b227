"""Materializing a Recipe into a model, in place.

The engine's contract:
- **Resident.** The base and the sources are loaded once, when the engine is made; materializing a candidate
  reads no file and loads no model.
- **In place.** `materialize(recipe, model)` writes every merged tensor into the parameters of a model that
  already exists (the one the evaluator holds); nothing else is allocated per candidate beyond the working
  tensors of one merge step.
- **Bit-reproducible.** The same recipe over the same sources gives bit-identical tensors, whatever was
  materialized before: each tensor's random draws (DARE) come from a generator seeded by the recipe's seed and
  the tensor's name.
- **Float32 inside.** Methods accumulate in float32; the result is stored in the target model's dtype.
- **Finite or failed.** A merged tensor with NaN or Inf raises MergeFailure naming the tensor; the target
  model then holds a partial merge until the next successful materialize.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from evomerge.errors import MergeFailure, UsageError
from evomerge.recipe import Recipe, resolve_parameters
from evomerge.sources import LoadedModel, check_compatible, load_model, tensor_info


@dataclass(frozen=True)
class MergeStep:
    """One tensor to produce: merged by the method with these parameters, or copied from the reference."""

    name: str
    params: dict[str, Any] | None
    seed: int


class MergeEngine:
    """Holds the base and sources resident and writes recipes over them into models."""

    def __init__(self, base: LoadedModel | None, sources: list[LoadedModel]) -> None:
        self.base = base
        self.sources = sources
        self.reference = base if base is not None else sources[0]
        check_compatible([self.reference, *[s for s in sources if s is not self.reference]])
        self.num_layers = self.reference.num_layers

    @classmethod
    def from_recipe(cls, recipe: Recipe, device: str | torch.device = "cpu") -> MergeEngine:
        """Load the recipe's base and sources onto `device` (each model once, even if named twice)."""
        loaded: dict[str, LoadedModel] = {}
        for ref in [recipe.base, *(source.model for source in recipe.sources)]:
            if ref is not None and ref not in loaded:
                loaded[ref] = load_model(ref, device)
        return cls(loaded[recipe.base] if recipe.base else None, [loaded[s.model] for s in recipe.sources])

    def plan(self, recipe: Recipe) -> list[MergeStep]:
        """Resolve the recipe for every tensor; raises UsageError if it does not fit these models."""
        self._check_same_models(recipe)
        by_place: dict[tuple[int | None, str], dict[str, Any]] = {}
        steps = []
        for name, tensor in self.reference.tensors.items():
            if not tensor.is_floating_point():
                steps.append(MergeStep(name, None, 0))
                continue
            info = tensor_info(name)
            place = (info.layer, info.kind)
            if place not in by_place:
                by_place[place] = resolve_parameters(recipe, info.layer, info.kind, self.num_layers)
            steps.append(MergeStep(name, by_place[place], _tensor_seed(recipe.seed, name)))
        return steps

    def merged_tensors(self, recipe: Recipe, steps: list[MergeStep] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for every tensor of the merged model: merged ones in float32, integer ones as stored."""
        method = recipe.method_def
        base_tensors = self.base.tensors if self.base is not None else None
        for step in steps if steps is not None else self.plan(recipe):
            if step.params is None:
                yield step.name, self.reference.tensors[step.name]
                continue
            device = self.reference.tensors[step.name].device
            generator = torch.Generator(device=device).manual_seed(step.seed)
            merged = method.merge(
                base_tensors[step.name] if base_tensors is not None else None,
                [source.tensors[step.name] for source in self.sources],
                step.params,
                generator,
            )
            if not torch.isfinite(merged).all():
                raise MergeFailure(f"the merge produced NaN or Inf in tensor '{step.name}'")
            yield step.name, merged

    def materialize(self, recipe: Recipe, model: PreTrainedModel, progress: bool = False) -> None:
        """Write the recipe's merge into `model`'s parameters and buffers, in place, in the model's dtype."""
        steps = self.plan(recipe)
        targets = dict(model.named_parameters())
        targets.update(model.named_buffers())
        missing = [step.name for step in steps if step.name not in targets]
        if missing:
            raise UsageError(f"the target model has no tensor '{missing[0]}' that the sources have")
        merged = self.merged_tensors(recipe, steps)
        if progress:
            from tqdm import tqdm

            merged = tqdm(merged, total=len(steps), desc="merging", unit="tensor", leave=False, disable=None)
        with torch.no_grad():
            for name, tensor in merged:
                targets[name].copy_(tensor)

    def new_target(self, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """A model of the sources' architecture to materialize into, loaded once from the reference model.

        Its weights are overwritten by every materialize; it is loaded (not built from the config) so that
        non-persistent buffers such as rotary frequencies are computed as the architecture computes them.
        """
        if dtype is None:
            dtype = next(t.dtype for t in self.reference.tensors.values() if t.is_floating_point())
        device = next(iter(self.reference.tensors.values())).device
        ref = self.reference
        model = AutoModelForCausalLM.from_pretrained(ref.directory, gguf_file=ref.gguf_file, dtype=dtype)
        return model.to(device).eval()

    def _check_same_models(self, recipe: Recipe) -> None:
        expected = [source.ref for source in self.sources]
        given = [source.model for source in recipe.sources]
        base = self.base.ref if self.base is not None else None
        if given != expected or (recipe.base is not None and recipe.base != base):
            raise UsageError(
                f"the recipe names base {recipe.base} and sources {given}, "
                f"but this engine holds base {base} and sources {expected}"
            )


def _tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends only on the recipe seed and the tensor name."""
    return zlib.crc32(f"{seed}:{name}".encode())


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def recipe_dtype(recipe: Recipe) -> torch.dtype | None:
    """The dtype the recipe asks the merged model to be stored in, or None for the base model's."""
    return DTYPES[recipe.dtype] if recipe.dtype else None
