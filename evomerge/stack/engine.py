"""Materializing a StackRecipe over resident sources without copying a weight, and exporting it.

Each source is loaded once as a whole transformers model (a parameter-space recipe as a source is merged once
into its own model). A candidate is a shallow twin of the embeddings source's model whose `model.layers` is a
ModuleList of `StackSlot`s, each referencing a source's decoder layer: materializing a candidate only swaps
that list and sets `config.num_hidden_layers`.

A slot multiplies the hidden state entering its layer by its scale, and gives the layer's attention its own
KV-cache index while it runs (a layer referenced twice writes two cache entries), so `generate` works.

Export writes an ordinary checkpoint of the same architecture with the new layer count. Scales are folded:
for a pre-norm layer, out = s*h + f(h) since RMSNorm(s*h) = RMSNorm(h) (up to its epsilon). Writing
x_k = h_k / C_k with C_0 = 1 and C_{k+1} = s_k C_k, the stack x_{k+1} = x_k + f_k(x_k) / C_{k+1} computes the
scaled model exactly, and the final norm removes C_T. So each exported layer has its attention output and MLP
down projections multiplied by 1 / C_{k+1} (`folded_factors`; a product, as mergekit's passthrough `scale`
computes it, so that the mergekit config of a stack writes the same tensors); the only difference is the
epsilon inside the norms, measured by experiments/stack_zoo.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from evomerge.errors import UsageError
from evomerge.merge.engine import MergeEngine, recipe_dtype
from evomerge.merge.recipe import Recipe
from evomerge.output.model_dir import check_output_dir, write_model_dir
from evomerge.sources import model_directory, source_name
from evomerge.stack.recipe import StackRecipe, StackSpace

# what must agree for one source's layer to read another's hidden state and share one rotary embedding
STACKABLE = (
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_parameters",
    "rope_theta",
    "hidden_act",
)
# the projections that write a layer's branch outputs into the residual stream (Llama family names)
BRANCH_OUTPUTS = ("self_attn.o_proj.", "mlp.down_proj.")


class StackSlot(nn.Module):
    """One position of a stack: a source's decoder layer (shared, not copied), its input scale, its cache
    slot."""

    def __init__(self, layer: nn.Module, slot: int, scale: float) -> None:
        super().__init__()
        self.layer = layer
        self.slot = slot
        self.scale = scale

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        attention = self.layer.self_attn
        own = attention.layer_idx
        attention.layer_idx = self.slot
        try:
            return self.layer(
                hidden_states * self.scale if self.scale != 1.0 else hidden_states, *args, **kwargs
            )
        finally:
            attention.layer_idx = own


@dataclass
class StackSource:
    """A resident source: its reference (a model or a merge recipe), the whole model, and where its
    tokenizer is."""

    ref: str | Recipe
    model: PreTrainedModel
    directory: Path

    @property
    def name(self) -> str:
        return source_label(self.ref)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_decoder().layers


class StackEngine:
    """Holds the sources of a stack search resident and makes stacked models that reference their layers."""

    def __init__(self, sources: list[StackSource], embeddings: int) -> None:
        self.sources = sources
        self.embeddings = embeddings
        self.reference = sources[embeddings]
        check_stackable(sources)

    @classmethod
    def from_space(cls, space: StackSpace, device: str | torch.device = "cpu") -> StackEngine:
        return cls(load_sources(space.sources, device), space.embeddings)

    @property
    def source_layers(self) -> list[int]:
        return [len(source.layers) for source in self.sources]

    def new_target(self) -> PreTrainedModel:
        """A twin of the embeddings source's model that shares every module with it; `materialize` gives it
        its own layer list."""
        model = _shallow(self.reference.model)
        decoder_name = model.base_model_prefix
        setattr(model, decoder_name, _shallow(getattr(model, decoder_name)))
        model.config = copy.deepcopy(model.config)
        getattr(model, decoder_name).config = model.config
        return model

    def materialize(self, stack: StackRecipe, model: PreTrainedModel) -> None:
        """Point `model`'s layer list at the stack's layers (with their scales); copies no weight."""
        self._check(stack)
        slots = [
            StackSlot(self.sources[layer.source].layers[layer.layer], index, layer.scale)
            for index, layer in enumerate(stack.layers)
        ]
        getattr(model, model.base_model_prefix).layers = nn.ModuleList(slots)
        model.config.num_hidden_layers = len(slots)

    def exported_model(self, stack: StackRecipe) -> PreTrainedModel:
        """An ordinary model of the stack's depth holding copies of its layers, with the scales folded in."""
        self._check(stack)
        sizes = {self.sources[layer.source].model.config.intermediate_size for layer in stack.layers}
        if len(sizes) > 1:
            raise UsageError(
                f"the stack mixes MLP sizes {sorted(sizes)}; one checkpoint of this architecture holds "
                "one size"
            )
        reference = self.reference.model
        config = copy.deepcopy(reference.config)
        config.num_hidden_layers = len(stack.layers)
        config.intermediate_size = sizes.pop()
        with torch.device("meta"):
            model = type(reference)(config)
        state = {
            name: tensor
            for name, tensor in reference.state_dict().items()
            if not name.startswith(f"{reference.base_model_prefix}.layers.")
        }
        for index, (layer, factor) in enumerate(zip(stack.layers, folded_factors(stack))):
            for name, tensor in self.sources[layer.source].layers[layer.layer].state_dict().items():
                folded = tensor * factor if name.startswith(BRANCH_OUTPUTS) else tensor
                state[f"{reference.base_model_prefix}.layers.{index}.{name}"] = folded.clone()
        model.load_state_dict(state, strict=True, assign=True)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
        # non-persistent buffers (rotary frequencies) are not in the state dict: take the reference's
        decoder = getattr(model, model.base_model_prefix)
        decoder.rotary_emb = copy.deepcopy(getattr(reference, reference.base_model_prefix).rotary_emb)
        return model.eval()

    def _check(self, stack: StackRecipe) -> None:
        given = [source.ref for source in self.sources]
        if stack.sources != given or stack.embeddings != self.embeddings:
            raise UsageError(
                "the stack recipe names other sources (or embeddings source) than this engine holds"
            )
        for position, layer in enumerate(stack.layers):
            count = len(self.sources[layer.source].layers)
            if layer.layer >= count:
                raise UsageError(
                    f"stack layer {position}: source {layer.source} has {count} layers, "
                    f"no layer {layer.layer}"
                )


def source_label(ref: str | Recipe, short: bool = False) -> str:
    """A stack source in words: its model reference (`short`: its short name), or `merge of A, B` for an
    inline merge recipe."""
    name = source_name if short else str
    return name(ref) if isinstance(ref, str) else f"merge of {', '.join(name(s.model) for s in ref.sources)}"


def folded_factors(stack: StackRecipe) -> list[float]:
    """Per layer of the stack, the factor 1 / C_{k+1} (C_{k+1}: the product of the scales up to and including
    layer k) by which the export multiplies its BRANCH_OUTPUTS projections (see the module docstring)."""
    factors, cumulative = [], 1.0
    for layer in stack.layers:
        cumulative *= layer.scale
        factors.append(1.0 / cumulative)
    return factors


def load_sources(refs: list[str | Recipe], device: str | torch.device = "cpu") -> list[StackSource]:
    """Each distinct source loaded once as a whole model on `device`, in evaluation mode."""
    loaded: dict[str, StackSource] = {}
    sources = []
    for ref in refs:
        key = ref if isinstance(ref, str) else ref.to_yaml()
        if key not in loaded:
            loaded[key] = _load_source(ref, device)
        sources.append(loaded[key])
    return sources


def _load_source(ref: str | Recipe, device: str | torch.device) -> StackSource:
    if isinstance(ref, Recipe):
        engine = MergeEngine.from_recipe(ref, device=device)
        model = engine.new_target(recipe_dtype(ref))
        engine.materialize(ref, model)
        return StackSource(ref, model, engine.reference.directory)
    directory = model_directory(ref)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
    return StackSource(ref, model.to(device).eval(), directory)


def check_stackable(sources: list[StackSource]) -> None:
    """UsageError unless every source's layers can take every other's hidden state (and have a cache
    index)."""
    first = sources[0]
    for source in sources:
        decoder = source.model.get_decoder()
        if not isinstance(getattr(decoder, "layers", None), nn.ModuleList) or not all(
            hasattr(getattr(layer, "self_attn", None), "layer_idx") for layer in decoder.layers
        ):
            raise UsageError(
                f"layers of '{source.name}' cannot be stacked: only decoders with model.layers[i].self_attn "
                "(Llama, Mistral, Qwen2 and kin) are supported"
            )
        for field in STACKABLE:
            mine, theirs = getattr(first.model.config, field, None), getattr(source.model.config, field, None)
            if mine != theirs:
                raise UsageError(
                    f"layers of '{source.name}' cannot be stacked on those of '{first.name}': {field} is "
                    f"{theirs} there but {mine} here"
                )
        if next(source.model.parameters()).dtype != next(first.model.parameters()).dtype:
            raise UsageError(
                f"'{source.name}' and '{first.name}' are stored in different dtypes; convert one first"
            )


def write_stack(stack: StackRecipe, out: Path, device: str = "cpu") -> Path:
    """Build `stack` from its sources and write it to `out` as an ordinary HF directory with its recipe."""
    out = Path(out)
    check_output_dir(out)
    engine = StackEngine(load_sources(stack.sources, device), stack.embeddings)
    write_stack_dir(engine, stack, out)
    return out


def write_stack_dir(
    engine: StackEngine,
    stack: StackRecipe,
    out: Path,
    files: dict[str, str] | None = None,
    replace: bool = False,
) -> None:
    """Write `stack` (scales folded) as `write_model_dir` writes a merge: all or nothing, with the embeddings
    source's tokenizer, the stack recipe as `recipe.yaml` and any extra text `files`."""
    write_model_dir(engine.exported_model(stack), engine.reference, stack, out, files, replace=replace)


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes and its own (initially equal) tables of children,
    parameters and buffers: assigning a child on it leaves `module` as it was."""
    twin = copy.copy(module)
    for table in ("_modules", "_parameters", "_buffers"):
        setattr(twin, table, dict(getattr(module, table)))
    return twin
