"""GGUF loading: a tiny Llama written as an F32 GGUF file loads back to exactly its HF directory's tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import save_tiny_llama  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from evomerge.merge.engine import MergeEngine  # noqa: E402
from evomerge.sources import load_model  # noqa: E402

# HF tensor name (inside `model.layers.N.`) -> llama.cpp tensor name (inside `blk.N.`).
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection the way llama.cpp's convert_hf_to_gguf.py does.

    HF's Llama applies rotary embeddings to the two *halves* of each head (`rotate_half`), while llama.cpp
    rotates *adjacent pairs* of dimensions. So within each head the converter interleaves the rows: the
    head's rows [a0..a(d/2-1), b0..b(d/2-1)] are stored as [a0, b0, a1, b1, ...]. transformers' GGUF reader
    undoes this on load (LlamaTensorProcessor), so writing the permuted rows makes the round trip exact.
    `heads` is the attention head count for q and the key-value head count for k.
    """
    rows = weight.shape[0]
    per_half = rows // heads // 2
    return weight.reshape(heads, 2, per_half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(hf_dir: Path, path: Path) -> Path:
    """Write the Llama in `hf_dir` as an F32 GGUF file with llama.cpp metadata and tensor names."""
    config = AutoConfig.from_pretrained(hf_dir)
    state = load_model(str(hf_dir)).tensors
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")  # also writes general.architecture = "llama"
    writer.add_name("evomerge-tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
        "output.weight": state["lm_head.weight"],
    }
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            tensor = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = llama_cpp_permute(tensor, heads)
            elif gguf_name == "attn_k":
                tensor = llama_cpp_permute(tensor, kv_heads)
            tensors[f"blk.{layer}.{gguf_name}.weight"] = tensor
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor.to(torch.float32).contiguous().numpy())

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llama_cpp_permute_is_not_the_identity():
    weight = torch.arange(8.0).reshape(8, 1)
    assert llama_cpp_permute(weight, heads=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_round_trip_gives_the_hf_tensors(tmp_path):
    hf_dir = save_tiny_llama(tmp_path / "hf", seed=3)
    gguf_path = write_llama_gguf(hf_dir, tmp_path / "gguf" / "tiny-f32.gguf")

    from_hf = load_model(str(hf_dir))
    from_gguf = load_model(str(gguf_path))

    assert from_gguf.gguf_file == str(gguf_path.resolve())
    assert from_gguf.config.model_type == "llama"
    assert not from_gguf.config.tie_word_embeddings
    assert sorted(from_gguf.tensors) == sorted(from_hf.tensors)
    for name, tensor in from_hf.tensors.items():
        assert from_gguf.tensors[name].dtype == torch.float32, name
        assert torch.equal(from_gguf.tensors[name], tensor), name
    assert from_gguf.num_layers == from_hf.num_layers == 2


def test_gguf_is_read_from_its_path_not_a_same_named_file_in_the_working_directory(tmp_path, monkeypatch):
    """transformers looks a bare `gguf_file` name up in the working directory first; load_model must not."""
    hf_a, hf_b = save_tiny_llama(tmp_path / "hf_a", seed=1), save_tiny_llama(tmp_path / "hf_b", seed=2)
    write_llama_gguf(hf_a, tmp_path / "a" / "model.gguf")
    gguf_b = write_llama_gguf(hf_b, tmp_path / "b" / "model.gguf")
    monkeypatch.chdir(tmp_path / "a")

    loaded = load_model(str(gguf_b))
    target = dict(MergeEngine(None, [loaded]).new_target().named_parameters())
    for name, tensor in load_model(str(hf_b)).tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name
        assert torch.equal(target[name], tensor), name
