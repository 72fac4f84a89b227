"""Materializing a Recipe into a model, in place.

The engine's contract:
- **Resident.** The base and the sources are loaded once, when the engine is made; materializing a candidate
  reads no file and loads no model.
- **In place.** `materialize(recipe, model)` writes every merged tensor into the parameters of a model that
  already exists (the one the evaluator holds), block by block (methods/blocks.py); nothing else is allocated
  per candidate beyond the working blocks of one merge step (and DARE's masks of one tensor). A tensor whose
  parameters did not change since the last materialize into the same model is not written again.
- **Memory.** Resident: the base and the sources in their own dtype (or `sources_dtype`), on the device or,
  with `sources_device="cpu"`, in host memory (each tensor then crosses to the device when it is merged); the
  target; working blocks (and, for compiled DARE, its index hash per row length: fused.KEPT_HASH_ELEMENTS).
  `from_recipe` checks this fits before loading and raises UsageError when it cannot.
- **Bit-reproducible.** The same recipe over the same sources gives bit-identical tensors, whatever was
  materialized before and on whatever device: each tensor's random draws (DARE) are a hash of the recipe's
  seed, the tensor's name and the element (methods/counter_random.py).
- **Fast.** On large models the merges run as compiled kernels (methods/fused.py; `kernels`). The resident
  models, and a target made `stacked`, hold their tensors of one size as rows of one buffer (layout.py), so
  that each size is merged in one kernel call (each call has a cost of its own). Each task vector's cuts on
  the density grid are found once (MagnitudeRanks), so a TIES candidate's cuts are lookups.
- **Float32 inside.** Methods accumulate in float32; the result is stored in the target model's dtype.
- **Finite or failed.** A merged tensor with NaN or Inf raises MergeFailure naming the tensor; the target
  model then holds a partial merge until the next successful materialize.
"""

from __future__ import annotations

import math
import os
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from evomerge.errors import MergeFailure, UsageError
from evomerge.merge import layout
from evomerge.merge.methods import fused
from evomerge.merge.methods.fused import KernelCall
from evomerge.merge.methods.magnitude_cut import (
    COUNTED_BYTES_PER_ELEMENT,
    COUNTED_MIN_BLOCK,
    RANKS_BYTES_PER_ELEMENT,
    MagnitudeRanks,
)
from evomerge.merge.methods.registry import MergeMethod
from evomerge.merge.recipe import Recipe, resolve_parameters
from evomerge.sources import LoadedModel, check_compatible, load_model, tensor_info


@dataclass(frozen=True)
class MergeStep:
    """One tensor to produce: merged by the method with these parameters, or copied from the reference."""

    name: str
    params: dict[str, Any] | None
    seed: int

    def key(self, method: str) -> tuple:
        """What the merged tensor depends on besides the resident models: equal keys, equal tensors."""
        params = self.params or {}
        frozen = tuple((name, tuple(v) if isinstance(v, list) else v) for name, v in sorted(params.items()))
        return (method if self.params is not None else None, self.seed, frozen)


#: How merges are computed: "compiled" kernels (methods/fused.py), "blocks" of eager torch operations, or
#: "auto": compiled on CPU for models of at least COMPILE_FROM_ELEMENTS elements, where compiling pays for
#: itself.
Kernels = Literal["auto", "compiled", "blocks"]
#: Compiling a method's kernel takes seconds to a minute once per process; a candidate of a model this large
#: (about 33 M parameters) saves about that much (experiments/bench_merge.py).
COMPILE_FROM_ELEMENTS = 1 << 25
#: Working memory for finding one task vector's MagnitudeRanks: this fraction of a model's bytes, or
#: RANKS_MEMORY_FLOOR if more. A tensor whose sort needs more (the embeddings, usually) is counted instead.
RANKS_MEMORY_SHARE = 1 / 8
RANKS_MEMORY_FLOOR = 64 << 20


class MergeEngine:
    """Holds the base and sources resident and writes recipes over them into models."""

    def __init__(
        self,
        base: LoadedModel | None,
        sources: list[LoadedModel],
        device: str | torch.device | None = None,
        stored_dtype: torch.dtype | None = None,
        kernels: Kernels = "auto",
    ) -> None:
        """`device`: where merges are computed and targets live; by default where the models' tensors are.
        `stored_dtype`: the models' own floating dtype, the targets' default; by default their tensors' dtype
        (`from_recipe` passes the stored one when the sources are kept in another). `kernels`: see Kernels."""
        self.base = base
        self.sources = sources
        self.reference = base if base is not None else sources[0]
        check_compatible([self.reference, *[s for s in sources if s is not self.reference]])
        self.num_layers = self.reference.num_layers
        self.device = (
            torch.device(device) if device is not None else next(iter(self.reference.tensors.values())).device
        )
        self.stored_dtype = stored_dtype or floating_dtype(self.reference)
        elements = sum(t.numel() for t in self.reference.tensors.values() if t.is_floating_point())
        self.compiled = kernels == "compiled" or (
            kernels == "auto" and self.device.type == "cpu" and elements >= COMPILE_FROM_ELEMENTS
        )
        # planned kernel calls wait for others of their size only where they hold no copies of the inputs
        self._inputs_resident = all(
            t.device == self.device
            for model in [base, *sources]
            if model is not None
            for t in model.tensors.values()
        )
        if (
            self.compiled and self._inputs_resident
        ):  # tensors of one size as rows: merged in one kernel call each
            for model in {id(m): m for m in [base, *sources] if m is not None}.values():
                layout.stack(model.tensors)
        self._ranks_budget = max(RANKS_MEMORY_SHARE * model_bytes(self.reference), RANKS_MEMORY_FLOOR)
        self._ranks: dict[str, list[MagnitudeRanks]] = {}  # per tensor: each source's, once computed
        # per target model: the key of every tensor as last written there (see materialize)
        self._written: weakref.WeakKeyDictionary[PreTrainedModel, dict[str, tuple]] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        device: str | torch.device = "cpu",
        sources_device: str | torch.device | None = None,
        sources_dtype: torch.dtype | None = None,
        kernels: Kernels = "auto",
    ) -> MergeEngine:
        """Load the recipe's base and sources (each model once, even if named twice) to merge on `device`.

        They stay resident on `sources_device` (default: `device`; "cpu" keeps them in host memory when the
        accelerator cannot hold them all), in their own dtype or `sources_dtype`. Raises UsageError, before
        loading more than one model, when they and a target cannot fit.
        """
        device = torch.device(device)
        resident = torch.device(sources_device) if sources_device is not None else device
        refs = list(
            dict.fromkeys(r for r in [recipe.base, *(s.model for s in recipe.sources)] if r is not None)
        )
        loaded: dict[str, LoadedModel] = {}
        stored_dtype = None
        for ref in refs:
            model = load_model(ref, "cpu")
            if not loaded:
                check_fits(model, len(refs), resident, device, sources_dtype, recipe_dtype(recipe))
                stored_dtype = floating_dtype(model)
            pin = (
                resident.type == "cpu" and device.type == "cuda"
            )  # pinned: copies to the device run at full speed
            model.tensors = {
                name: _resident(
                    t.to(resident, sources_dtype if sources_dtype and t.is_floating_point() else t.dtype), pin
                )
                for name, t in model.tensors.items()
            }
            loaded[ref] = model
        base = loaded[recipe.base] if recipe.base else None
        return cls(base, [loaded[s.model] for s in recipe.sources], device, stored_dtype, kernels)

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

    def merged_tensors(
        self, recipe: Recipe, steps: list[MergeStep] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for every tensor of the merged model: merged ones in float32, integer ones as
        stored."""
        method = recipe.method_def
        for step in steps if steps is not None else self.plan(recipe):
            if step.params is None:
                yield step.name, self.reference.tensors[step.name].to(self.device)
                continue
            base, sources = self._inputs(step)
            merged = method.merge(base, sources, method.settings_for(step.params, step.seed))
            if not torch.isfinite(merged).all():
                raise MergeFailure(f"the merge produced NaN or Inf in tensor '{step.name}'")
            yield step.name, merged

    def materialize(self, recipe: Recipe, model: PreTrainedModel, progress: bool = False) -> None:
        """Write the recipe's merge into `model`'s parameters and buffers, in place, in the model's dtype.

        The same tensors as `merged_tensors`, rounded to the model's dtype, written block by block. A tensor
        whose parameters (and seed) are those it was last written with in this model is skipped: the engine
        assumes nothing else writes into the model's weights between materializes. A value that is not finite
        (in the model's dtype: an overflow too) raises MergeFailure, and the next materialize writes
        everything.
        """
        steps = self.plan(recipe)
        targets = dict(model.named_parameters())
        targets.update(model.named_buffers())
        missing = [step.name for step in steps if step.name not in targets]
        if missing:
            raise UsageError(f"the target model has no tensor '{missing[0]}' that the sources have")
        written = self._written.pop(model, {})
        todo = [
            (step, key)
            for step in steps
            if written.get(step.name) != (key := (*step.key(recipe.method), targets[step.name].data_ptr()))
        ]
        if progress:
            from tqdm import tqdm

            todo = tqdm(todo, desc="merging", unit="tensor", leave=False, disable=None)
        method = recipe.method_def
        finite: list[
            tuple[str, torch.Tensor]
        ] = []  # per merged tensor: the sum of what was written (see below)
        # planned calls of one size: step, key, settings, call
        pending: dict[tuple, list[tuple[MergeStep, tuple, object, KernelCall]]] = {}
        with torch.no_grad():
            for step, key in todo:
                target = targets[step.name]
                written.pop(step.name, None)
                if step.params is None:
                    target.copy_(self.reference.tensors[step.name])
                    written[step.name] = key
                    continue
                base, sources = self._inputs(step)
                ranks = self._magnitude_ranks(step.name, base, sources) if method.uses_ranks else None
                settings = method.settings_for(step.params, step.seed)
                call = (
                    method.planned_call(target, base, sources, settings, ranks)
                    if self.compiled and self._inputs_resident
                    else None
                )
                if call is None:
                    checksum = self._merge_into(method, target, settings, base, sources, ranks)
                    finite.append((step.name, checksum))
                    written[step.name] = key
                    continue
                pending.setdefault(call.group(), []).append((step, key, settings, call))
            for group in pending.values():
                self._run_group(method, group, targets, finite, written)
        # the sum of what was written, computed as it is written (a NaN or Inf anywhere makes it non-finite),
        # where isfinite would take passes of its own; a sum that overflows float32 is checked element by
        # element
        sums = torch.stack([checksum for _, checksum in finite]) if finite else None
        if sums is not None and not bool(torch.isfinite(sums).all()):
            for (name, _), total in zip(finite, sums.tolist(), strict=True):
                if not math.isfinite(total) and not torch.isfinite(targets[name]).all():
                    raise MergeFailure(f"the merge produced NaN or Inf in tensor '{name}'")
        self._written[model] = written

    def _merge_into(
        self,
        method: MergeMethod,
        target: torch.Tensor,
        settings: object,
        base: torch.Tensor | None,
        sources: list[torch.Tensor],
        ranks: list[MagnitudeRanks] | None,
        compiled: bool | None = None,
    ) -> torch.Tensor:
        """Merge one tensor into its target; returns the float32 sum of what was written."""
        checksum = torch.empty((), dtype=torch.float32, device=target.device)
        method.merge_into(
            target,
            base,
            sources,
            settings,
            compiled=self.compiled if compiled is None else compiled,
            ranks=ranks,
            checksum=checksum,
        )
        return checksum

    def _run_group(
        self,
        method: MergeMethod,
        group: list[tuple[MergeStep, tuple, object, KernelCall]],
        targets: dict[str, torch.Tensor],
        finite: list[tuple[str, torch.Tensor]],
        written: dict[str, tuple],
    ) -> None:
        """Run planned kernel calls of one size, those whose tensors lie back to back as one call
        (fused.run_many), or by blocks where compiled kernels cannot run."""
        checksums = torch.empty(len(group), dtype=torch.float32, device=self.device)
        ran = fused.run_many([call for _, _, _, call in group], checksums)
        for i, (step, key, settings, _) in enumerate(group):
            if ran:
                finite.append((step.name, checksums[i]))
            else:
                base, sources = self._inputs(step)
                ranks = self._magnitude_ranks(step.name, base, sources) if method.uses_ranks else None
                checksum = self._merge_into(
                    method, targets[step.name], settings, base, sources, ranks, compiled=False
                )
                finite.append((step.name, checksum))
            written[step.name] = key

    def _inputs(self, step: MergeStep) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The base and source tensors of one step on the merge device."""
        base = (
            self.base.tensors[step.name].to(self.device, non_blocking=True) if self.base is not None else None
        )
        sources = [source.tensors[step.name].to(self.device, non_blocking=True) for source in self.sources]
        return base, sources

    def _magnitude_ranks(
        self, name: str, base: torch.Tensor | None, sources: list[torch.Tensor]
    ) -> list[MagnitudeRanks] | None:
        """Each source's MagnitudeRanks of tensor `name`, found on first use (None without a base): sorted, or
        counted in blocks where a sort would take more than the engine's working memory for it."""
        if base is None:
            return None
        if name not in self._ranks:
            if RANKS_BYTES_PER_ELEMENT * base.numel() <= self._ranks_budget:
                self._ranks[name] = [MagnitudeRanks.of(base, source) for source in sources]
            else:
                block = max(COUNTED_MIN_BLOCK, int(self._ranks_budget) // COUNTED_BYTES_PER_ELEMENT)
                self._ranks[name] = [MagnitudeRanks.counted(base, source, block) for source in sources]
        return self._ranks[name]

    def new_target(self, dtype: torch.dtype | None = None, stacked: bool = False) -> PreTrainedModel:
        """A model of the sources' architecture to materialize into, loaded once from the reference model.

        Its weights are overwritten by every materialize; it is loaded (not built from the config) so that
        non-persistent buffers such as rotary frequencies are computed as the architecture computes them.
        `stacked`: lay out its parameters of one size as rows of one buffer (layout.stack_parameters), where
        this engine merges by compiled kernels: each size is then merged in one kernel call. Parameters that
        every materialize writes (all, usually) are then left unset until the first. For a model that is
        searched over, not for one to be saved.
        """
        dtype = dtype or self.stored_dtype
        ref = self.reference
        model = AutoModelForCausalLM.from_pretrained(ref.directory, dtype=dtype)
        model = model.to(self.device).eval()
        if stacked and self.compiled and self._inputs_resident:
            written = {name for name, _ in model.named_parameters()} <= self.reference.tensors.keys()
            layout.stack_parameters(model, self.reference.tensors, values=not written)
        return model

    def _check_same_models(self, recipe: Recipe) -> None:
        expected = [source.ref for source in self.sources]
        given = [source.model for source in recipe.sources]
        base = self.base.ref if self.base is not None else None
        if given != expected or (recipe.base is not None and recipe.base != base):
            raise UsageError(
                f"the recipe names base {recipe.base} and sources {given}, "
                f"but this engine holds base {base} and sources {expected}"
            )


def _resident(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    return tensor.pin_memory() if pin else tensor


def _tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends only on the recipe seed and the tensor name."""
    return zlib.crc32(f"{seed}:{name}".encode())


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def recipe_dtype(recipe: Recipe) -> torch.dtype | None:
    """The dtype the recipe asks the merged model to be stored in, or None for the base model's."""
    return DTYPES[recipe.dtype] if recipe.dtype else None


def floating_dtype(model: LoadedModel) -> torch.dtype:
    """The dtype of a model's floating tensors (the first one's)."""
    return next(t.dtype for t in model.tensors.values() if t.is_floating_point())


def model_bytes(model: LoadedModel, dtype: torch.dtype | None = None) -> int:
    """Bytes a model's tensors take, with its floating tensors in `dtype` when given."""
    return sum(
        t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
        for t in model.tensors.values()
    )


def free_bytes(device: torch.device) -> int:
    """Memory that can still be allocated on `device`: free accelerator memory, or the host's available
    memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open(
        "/proc/meminfo"
    ) as meminfo:  # MemAvailable counts reclaimable caches, unlike sysconf's free pages
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    first: LoadedModel,
    models: int,
    resident: torch.device,
    device: torch.device,
    sources_dtype: torch.dtype | None,
    target_dtype: torch.dtype | None,
) -> None:
    """Raise UsageError unless `models` models like `first` fit on `resident` and a target plus working memory
    on `device` (the models' largest tensor, in float32, once per model: DARE's draws and masks, and
    blocks)."""
    largest = max(t.numel() for t in first.tensors.values())
    target = model_bytes(first, target_dtype)
    sources = models * model_bytes(first, sources_dtype)
    working = 4 * largest * (models + 2)
    gib = 2**30
    if resident == device:
        need, free = sources + target + working, free_bytes(device)
        if need > free:
            hint = (
                "; keep the sources in host memory (sources_device='cpu') or in a lower precision "
                "(sources_dtype)"
                if device.type != "cpu"
                else "; use fewer or smaller models, or a lower precision for the sources (sources_dtype)"
            )
            raise UsageError(
                f"the merge needs {need / gib:.1f} GiB on {device} ({models} models, a target and working "
                f"memory) but only {free / gib:.1f} GiB are free{hint}"
            )
        return
    for what, need, where in (
        ("the models", sources, resident),
        ("a target and working memory", target + working, device),
    ):
        free = free_bytes(where)
        if need > free:
            raise UsageError(
                f"{what} of the merge need {need / gib:.1f} GiB on {where} but only {free / gib:.1f} GiB are "
                "free; use fewer or smaller models, or a lower precision for the sources (sources_dtype)"
            )
