"""Loading models, compatibility checks, and the tensor -> (layer, kind) map."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_llama
from safetensors.torch import load_file

from evomerge.errors import UsageError
from evomerge.sources import check_compatible, hub_model_id, load_model, tensor_info


@pytest.mark.parametrize(
    ("name", "layer", "kind"),
    [
        ("model.embed_tokens.weight", None, "embedding"),
        ("model.layers.0.self_attn.q_proj.weight", 0, "attention"),
        ("model.layers.11.mlp.down_proj.weight", 11, "mlp"),
        ("model.layers.3.input_layernorm.weight", 3, "norm"),
        ("model.layers.3.post_attention_layernorm.weight", 3, "norm"),
        ("model.layers.2.self_attn.q_norm.weight", 2, "norm"),
        ("model.norm.weight", None, "norm"),
        ("lm_head.weight", None, "head"),
        ("transformer.h.5.attn.c_attn.weight", 5, "attention"),
        ("transformer.h.5.ln_1.weight", 5, "norm"),
        ("transformer.wte.weight", None, "embedding"),
        ("model.layers.1.block_sparse_moe.gate.weight", 1, "other"),
    ],
)
def test_tensor_info_maps_names_to_layer_and_kind(name, layer, kind):
    info = tensor_info(name)
    assert (info.layer, info.kind) == (layer, kind)


def test_loads_a_safetensors_directory(tiny_models):
    model = load_model(str(tiny_models["a"]))
    on_disk = load_file(tiny_models["a"] / "model.safetensors")
    assert set(model.tensors) == set(on_disk)
    assert all(torch.equal(model.tensors[n], on_disk[n]) for n in on_disk)
    assert model.num_layers == 2 and model.config.model_type == "llama"


def test_loads_a_pytorch_bin_directory(tiny_models, tmp_path):
    source = tiny_models["a"]
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    torch.save(load_file(source / "model.safetensors"), tmp_path / "pytorch_model.bin")
    from_bin, from_safetensors = load_model(str(tmp_path)), load_model(str(source))
    assert all(torch.equal(from_bin.tensors[n], t) for n, t in from_safetensors.tensors.items())


def test_tied_embeddings_are_held_once(tmp_path):
    model = load_model(str(save_tiny_llama(tmp_path / "tied", seed=0, tie_word_embeddings=True)))
    assert "lm_head.weight" not in model.tensors
    assert "model.embed_tokens.weight" in model.tensors


def test_compatible_models_pass(tiny_models):
    check_compatible([load_model(str(p)) for p in tiny_models.values()])


def test_vocabulary_mismatch_names_the_tensor(tiny_models, tmp_path):
    other = load_model(str(save_tiny_llama(tmp_path / "v", seed=1, vocab_size=120)))
    with pytest.raises(
        UsageError,
        match=r"incompatible vocabularies: .* has \d+ tokens, .* has 120 "
        r"\(tensor '(lm_head|model.embed_tokens).weight'\)",
    ):
        check_compatible([load_model(str(tiny_models["base"])), other])


def test_shape_mismatch_names_the_tensor(tiny_models, tmp_path):
    other = load_model(str(save_tiny_llama(tmp_path / "s", seed=1, intermediate_size=48)))
    with pytest.raises(
        UsageError, match=r"tensor 'model.layers.0.mlp.\w+.weight' has shape \[\d+, \d+\] in .* but"
    ):
        check_compatible([load_model(str(tiny_models["base"])), other])


def test_missing_tensor_and_other_architecture_are_refused(tiny_models, tmp_path):
    base = load_model(str(tiny_models["base"]))
    deeper = load_model(str(save_tiny_llama(tmp_path / "d", seed=1, num_hidden_layers=3)))
    with pytest.raises(UsageError, match="has no tensor 'model.layers.2"):
        check_compatible([base, deeper])
    other = load_model(str(tiny_models["a"]))
    other.config.model_type = "mistral"
    with pytest.raises(UsageError, match="is llama, .* is mistral"):
        check_compatible([base, other])


def test_bad_paths_and_corrupt_files_are_usage_errors(tiny_models, tmp_path):
    with pytest.raises(UsageError, match="not found: no such file or directory"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="hub is offline"):
        load_model("some-org/some-model")
    with pytest.raises(UsageError, match="has no config.json"):
        load_model(str(tmp_path))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_models["a"] / "config.json").read_text())
    data = (tiny_models["a"] / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="corrupt or truncated safetensors file"):
        load_model(str(corrupt))


def test_a_gguf_file_that_is_not_gguf_is_a_usage_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(UsageError, match="cannot read GGUF file"):
        load_model(str(fake))


def test_hub_names_take_a_revision_and_local_paths_are_no_hub_names(tmp_path, monkeypatch):
    assert hub_model_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert hub_model_id("org/model@v1.0") == hub_model_id("hf:org/model@0123abc") == "org/model"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert hub_model_id("org/model") is None  # a directory here, though its name looks like a hub name
    assert hub_model_id("hf:org/model") == "org/model"  # named as the hub's explicitly
    assert hub_model_id("zoo:base") is None and hub_model_id("model") is None
    with pytest.raises(UsageError, match="hub is offline"):
        load_model("some-org/some-model@main")
