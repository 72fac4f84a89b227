"""Loading the models of a merge, checking they can be merged, and naming what each tensor is.

A model reference is one of:
- `SCHEME:NAME`, resolved by the plug-in that registered the scheme (evomerge/references.py), such as
  `zoo:NAME`, a model of the tiny zoo (shipped with the package), or the core's `hf:ORG/MODEL`, a hub
  model named explicitly;
- a local Hugging Face directory (config.json plus *.safetensors, or pytorch_model*.bin read with
  `weights_only=True`);
- a local `.gguf` file, or a directory whose only weights are one (needs the `gguf` package): dequantized once
  by transformers into a float32 Hugging Face directory in the cache, `$EVOMERGE_CACHE/gguf-<fingerprint>`
  (default `~/.cache/evomerge`; 4 bytes per parameter on disk), which every later step reads
  (evomerge/gguf.py); the model's `ref` stays the .gguf the user named;
- `BASE+ADAPTER` (mergekit's `model+lora`), or a PEFT adapter directory alone (its config names the base): the
  adapter merged into the base by peft once, into `$EVOMERGE_CACHE/peft-<fingerprint>` (evomerge/adapters.py);
- a hub name such as `org/model`, or `org/model@REVISION` (a branch, tag or commit), downloaded when the hub
  is reachable (not with HF_HUB_OFFLINE=1): its safetensors, or its `pytorch_model*.bin` when it has none.

Tied embeddings: when a model's config ties the output head to the input embedding, `lm_head.weight` is
dropped at load, so the shared matrix is merged once (as the embedding) and the target model keeps the tie.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, PretrainedConfig

from evomerge.adapters import adapted_directory, adapter_base, is_adapter_directory, split_adapter_reference
from evomerge.errors import UsageError
from evomerge.gguf import dequantized_directory
from evomerge.references import register_model_scheme, resolve_model_scheme, split_scheme

#: The scheme of a hub model named explicitly: `hf:ORG/MODEL`.
HUB_SCHEME = "hf"
#: The weight files of a Hugging Face model directory, in the order they are looked for.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
#: A hub model's name: ORG/MODEL, optionally @REVISION (a branch, a tag or a commit).
_HUB_NAME = re.compile(r"([\w.-]+/[\w.-]+)(?:@([\w./-]+))?")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_KIND_MARKERS = (
    ("embedding", ("embed_tokens", "wte.", "wpe.", "word_embeddings", "embed_in", "tok_embeddings")),
    ("head", ("lm_head", "embed_out")),
    ("norm", ("norm", "ln_")),
    ("attention", ("attn", "attention")),
    ("mlp", ("mlp", "feed_forward", "ffn")),
)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor sits: its decoder layer (None outside the layer stack) and its module kind."""

    layer: int | None
    kind: str


def tensor_info(name: str) -> TensorInfo:
    """The layer index and module kind (embedding, attention, mlp, norm, head, other) of a tensor name."""
    match = _LAYER.search(name)
    lowered = name.lower()
    kind = next(
        (kind for kind, markers in _KIND_MARKERS if any(marker in lowered for marker in markers)), "other"
    )
    return TensorInfo(layer=int(match.group(1)) if match else None, kind=kind)


@dataclass
class LoadedModel:
    """A model held in memory as its config and its tensors (in their stored dtype), and the Hugging Face
    directory they were read from (for a GGUF, its dequantized copy)."""

    ref: str
    directory: Path
    config: PretrainedConfig
    tensors: dict[str, torch.Tensor]

    @property
    def num_layers(self) -> int:
        layers = {info.layer for info in map(tensor_info, self.tensors) if info.layer is not None}
        return max(layers) + 1 if layers else 1

    @property
    def module_kinds(self) -> set[str]:
        return {tensor_info(name).kind for name in self.tensors}


def source_name(ref: str) -> str:
    """A short name for a model reference: `zoo:expert_add` -> expert_add, `/models/x/` -> x."""
    name = parts[1] if (parts := split_scheme(ref)) else ref
    return Path(name).name or name


def resolve_ref(ref: str) -> Path:
    """The local path of a model reference, downloading a hub model when the hub is reachable; for a model
    with a PEFT adapter (`BASE+ADAPTER`, or an adapter directory alone), the directory of the two merged
    (evomerge/adapters.py)."""
    with_adapter = split_adapter_reference(ref)
    if with_adapter is not None:
        return adapted_directory(model_directory(with_adapter[0]), _located(with_adapter[1]))
    path = _located(ref)
    if is_adapter_directory(path):
        return adapted_directory(model_directory(adapter_base(path)), path)
    return path


def _located(ref: str) -> Path:
    """The path a reference names as it is: a scheme's, a local file or directory, or a hub download."""
    resolved = resolve_model_scheme(ref)
    if resolved is not None:
        return resolved
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if hub_model_id(ref) is not None and _hub_online():
        return _download(ref)
    raise UsageError(
        f"model '{ref}' not found: no such file or directory"
        + (" (and the hub is offline: HF_HUB_OFFLINE is set)" if hub_model_id(ref) is not None else "")
    )


def _hub_model(name: str) -> Path:
    """An `hf:ORG/MODEL` reference: the hub model, even where a local directory has the same name."""
    if _HUB_NAME.fullmatch(name) is None:
        raise UsageError(f"model '{HUB_SCHEME}:{name}': a hub model is named ORG/MODEL or ORG/MODEL@REVISION")
    if not _hub_online():
        raise UsageError(f"model '{HUB_SCHEME}:{name}' is on the hub, which is offline (HF_HUB_OFFLINE)")
    return _download(name)


def hub_model_id(ref: str) -> str | None:
    """The hub repository a model reference names (`org/model` of `org/model@rev` or `hf:org/model`), None
    for any other reference (a scheme's, a path that exists here)."""
    scheme = split_scheme(ref)
    if scheme is not None:
        name = scheme[1] if scheme[0] == HUB_SCHEME else ""
    else:
        name = "" if Path(ref).expanduser().exists() else ref
    match = _HUB_NAME.fullmatch(name)
    return match.group(1) if match else None


def _hub_online() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false")


def _download(ref: str) -> Path:
    """The local snapshot of a hub model (config, tokenizer, and its safetensors, or its .bin weights when it
    has no safetensors), at the reference's revision (default: main)."""
    from huggingface_hub import list_repo_files, snapshot_download

    name, revision = _HUB_NAME.fullmatch(ref).groups()
    try:
        files = list_repo_files(name, revision=revision)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "pytorch_model*.bin"
        patterns = ["*.json", weights, "tokenizer*", "*.model", "*.txt"]
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as error:  # the hub client raises many types; all mean the same to the user
        raise UsageError(f"model '{ref}' could not be downloaded from the hub: {error}") from None


register_model_scheme(HUB_SCHEME, _hub_model)


def load_model(ref: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model's config and tensors onto `device`."""
    directory = model_directory(ref)
    config = _load_config(directory)
    tensors = _load_directory_tensors(directory)
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return LoadedModel(ref=ref, directory=directory, config=config, tensors=tensors)


def model_directory(ref: str) -> Path:
    """The Hugging Face directory of a model reference: its own, or for a GGUF its dequantized copy."""
    path = resolve_ref(ref)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UsageError(
                f"'{path}' is a file but not a .gguf model; give a model directory or a .gguf file"
            )
        return dequantized_directory(path)
    gguf_files = sorted(path.glob("*.gguf"))
    if len(gguf_files) == 1 and not any(path.glob(pattern) for pattern in WEIGHT_FILES):
        return dequantized_directory(gguf_files[0])
    return path


def _load_config(path: Path) -> PretrainedConfig:
    if not (path / "config.json").is_file():
        raise UsageError(f"'{path}' is not a model directory: it has no config.json")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"cannot read the config of '{path}': {error}") from None


def _load_directory_tensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors_files = sorted(path.glob(WEIGHT_FILES[0]))
    if safetensors_files:
        tensors: dict[str, torch.Tensor] = {}
        for file in safetensors_files:
            try:
                tensors.update(load_file(file))
            except (SafetensorError, OSError) as error:
                raise UsageError(
                    f"cannot read '{file}': corrupt or truncated safetensors file ({error})"
                ) from None
        return tensors
    bin_files = sorted(path.glob(WEIGHT_FILES[1]))
    if bin_files:
        tensors = {}
        for file in bin_files:
            try:
                tensors.update(torch.load(file, map_location="cpu", weights_only=True))
            except Exception as error:  # torch.load raises many types for a bad file
                raise UsageError(f"cannot read '{file}': {error}") from None
        return tensors
    raise UsageError(f"'{path}' holds no weights: no *.safetensors, pytorch_model*.bin or single *.gguf file")


def check_compatible(models: list[LoadedModel]) -> None:
    """Raise UsageError unless all models share architecture, tensor names and shapes (the first is the
    reference)."""
    reference = models[0]
    for other in models[1:]:
        if reference.config.model_type != other.config.model_type:
            raise UsageError(
                f"incompatible models: '{reference.ref}' is {reference.config.model_type}, "
                f"'{other.ref}' is {other.config.model_type}"
            )
        for a, b in ((reference, other), (other, reference)):
            missing = [name for name in a.tensors if name not in b.tensors]
            if missing:
                raise UsageError(
                    f"incompatible models: '{b.ref}' has no tensor '{missing[0]}' that '{a.ref}' has"
                )
        for name, tensor in reference.tensors.items():
            theirs = other.tensors[name]
            if tensor.shape == theirs.shape:
                continue
            if tensor_info(name).kind in ("embedding", "head") and tensor.shape[1:] == theirs.shape[1:]:
                raise UsageError(
                    f"incompatible vocabularies: '{reference.ref}' has {tensor.shape[0]} tokens, "
                    f"'{other.ref}' has {theirs.shape[0]} (tensor '{name}')"
                )
            raise UsageError(
                f"incompatible models: tensor '{name}' has shape {list(tensor.shape)} in '{reference.ref}' "
                f"but {list(theirs.shape)} in '{other.ref}'"
            )
