"""PEFT adapters as sources (evomerge/adapters.py): `BASE+ADAPTER` and an adapter directory alone give the
base with W + (alpha / r) B A on each target module, merged once into the cache; bad adapters are one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from conftest import save_tiny_llama
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.errors import UsageError
from evomerge.sources import load_model

peft = pytest.importorskip("peft")

RANK, ALPHA = 2, 8
TARGETS = ("q_proj", "v_proj")


def save_adapter(base, out, seed: int = 0):
    """A LoRA adapter of rank 2 on q_proj and v_proj of `base`, with random (not zero) B matrices."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture
def adapter(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    return save_adapter(tiny_models["base"], tmp_path / "lora")


def by_hand(base, adapter) -> dict[str, torch.Tensor]:
    """The base's tensors with W + (alpha / r) B A added on every adapted module."""
    tensors = load_file(base / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    for name in [n for n in lora if "lora_A" in n]:
        module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        delta = lora[name.replace("lora_A", "lora_B")] @ lora[name]
        tensors[f"{module}.weight"] = tensors[f"{module}.weight"] + ALPHA / RANK * delta
    return tensors


def test_a_model_plus_an_adapter_is_the_base_with_the_low_rank_update(tiny_models, adapter, tmp_path):
    expected = by_hand(tiny_models["base"], adapter)
    loaded = load_model(f"{tiny_models['base']}+{adapter}")
    assert loaded.tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(loaded.tensors[name], tensor, atol=1e-6), name
    changed = [
        n
        for n in expected
        if not torch.equal(expected[n], load_file(tiny_models["base"] / "model.safetensors")[n])
    ]
    assert len(changed) == 2 * len(TARGETS)  # two layers, two modules each
    # the adapter directory alone: applied to the base its config names, into the same cached copy
    alone = load_model(str(adapter))
    assert alone.directory == loaded.directory
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [loaded.directory.name]


def test_a_recipe_merges_a_source_with_an_adapter_through_the_cli(tiny_models, adapter, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "method": "task_arithmetic",
                "base": str(tiny_models["base"]),
                "sources": [{"model": f"{tiny_models['base']}+{adapter}", "weight": 0.5}],
            }
        )
    )
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 0
    assert main(["merge", str(recipe), "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().err.count("applying the adapter") == 1  # merged once, then cached
    merged, base = load_file(tmp_path / "out" / "model.safetensors"), by_hand(tiny_models["base"], adapter)
    plain = load_file(tiny_models["base"] / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(merged[name], plain[name] + 0.5 * (base[name] - plain[name]), atol=1e-6)


def test_an_adapter_that_does_not_fit_its_base_is_one_line_and_nothing_is_cached(
    tiny_models, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    wider = save_tiny_llama(tmp_path / "wider", seed=5, hidden_size=32, intermediate_size=64)
    lora = save_adapter(wider, tmp_path / "lora")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"method": "linear", "sources": [{"model": f"{tiny_models['base']}+{lora}"}]})
    )
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"evomerge: error: the adapter '{lora}' does not fit the model '{tiny_models['base']}' (size mismatch"
    )
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists() and not any((tmp_path / "cache").glob("peft-*"))


def test_bad_adapter_references_are_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UsageError, match="is not a PEFT adapter directory"):
        load_model(f"{tiny_models['base']}+{tiny_models['a']}")  # a whole model after the +
    with pytest.raises(UsageError, match="written BASE\\+ADAPTER_DIRECTORY"):
        load_model(f"{tiny_models['base']}+")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(UsageError, match="names no base model"):
        load_model(str(orphan))


def test_an_adapter_without_peft_names_the_extra(tiny_models, adapter, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UsageError, match=r"pip install 'evomerge\[peft\]'"):
        load_model(f"{tiny_models['base']}+{adapter}")


def test_a_mergekit_config_with_model_plus_lora_is_read_as_it_is(tiny_models, adapter, tmp_path):
    config = tmp_path / "mergekit.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [{"model": f"{tiny_models['base']}+{adapter}", "parameters": {"weight": 1.0}}],
                "dtype": "float32",
            }
        )
    )
    assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 0
    merged, expected = (
        load_file(tmp_path / "out" / "model.safetensors"),
        by_hand(tiny_models["base"], adapter),
    )
    assert all(torch.allclose(merged[name], expected[name], atol=1e-6) for name in expected)
