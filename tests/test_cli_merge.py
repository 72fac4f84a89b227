"""`evomerge merge` as a user runs it: the output directory, the re-merge from its recipe, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_llama
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main


def evomerge(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evomerge.cli", *map(str, args)], capture_output=True, text=True
    )


def write_recipe(path: Path, tiny_models, **overrides) -> Path:
    data = {
        "method": "ties",
        "base": str(tiny_models["base"]),
        "sources": [
            {
                "model": str(tiny_models["a"]),
                "weight": [0.5, 1.0],
                "density": {"attention": 0.5, "default": 0.8},
            },
            {"model": str(tiny_models["b"]), "density": {"gradient": [0.3, 0.9]}},
        ],
        "parameters": {"scale": 1.0},
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def test_merge_writes_a_loadable_model_that_remerges_bit_for_bit(tiny_models, tmp_path):
    out = tmp_path / "merged"
    result = evomerge("merge", write_recipe(tmp_path / "r.yaml", tiny_models), "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "recipe.yaml").is_file() and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("add 1+2=", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    again = tmp_path / "again"
    assert evomerge("merge", out / "recipe.yaml", "--out", again).returncode == 0
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_help_texts_explain_every_command():
    for args in (["--help"], ["merge", "--help"], ["zoo", "build", "--help"], ["demo", "--help"]):
        result = evomerge(*args)
        assert result.returncode == 0 and "usage: evomerge" in result.stdout, args
    assert "recipe YAML" in evomerge("merge", "--help").stdout


def test_the_process_exits_2_on_bad_input_without_a_traceback(tmp_path):
    result = evomerge("merge", tmp_path / "missing.yaml", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"evomerge: error: recipe file '{tmp_path}/missing.yaml' does not exist"
    ]


def corrupt_model(tmp_path: Path) -> Path:
    path = save_tiny_llama(tmp_path / "corrupt", seed=5)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:100])
    return path


def infinite_model(tmp_path: Path) -> Path:
    path = save_tiny_llama(tmp_path / "inf", seed=6)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing recipe", "recipe file '.*' does not exist"),
        ("missing model", "model '.*nowhere' not found"),
        ("unknown method", "unknown merge method 'tyes' \\(did you mean 'ties'\\?\\)"),
        ("density out of range", "sources.0.density: 'density' = 1.5 is outside \\(0, 1\\]"),
        ("negative drop", "'drop' = -0.2 is outside \\[0, 1\\)"),
        ("incompatible models", "incompatible models: tensor 'model.layers.0.mlp"),
        ("existing output", "output directory '.*' already exists; choose another --out or delete it"),
        ("unwritable output", "cannot write '.*': '.*' is not a writable directory"),
        ("corrupt safetensors", "corrupt or truncated safetensors file"),
        ("nan merge", "the merge produced NaN or Inf in tensor 'model.layers.0.mlp.up_proj.weight'"),
    ],
)
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(case, message, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    good = write_recipe(tmp_path / "good.yaml", tiny_models)
    one_source = {"model": str(tiny_models["a"])}
    cases = {
        "missing recipe": lambda: tmp_path / "missing.yaml",
        "missing model": lambda: write_recipe(
            tmp_path / "r.yaml", tiny_models, base=str(tmp_path / "nowhere")
        ),
        "unknown method": lambda: write_recipe(tmp_path / "r.yaml", tiny_models, method="tyes"),
        "density out of range": lambda: write_recipe(
            tmp_path / "r.yaml", tiny_models, sources=[{**one_source, "density": 1.5}]
        ),
        "negative drop": lambda: write_recipe(
            tmp_path / "r.yaml", tiny_models, method="dare_ties", sources=[{**one_source, "drop": -0.2}]
        ),
        "incompatible models": lambda: write_recipe(
            tmp_path / "r.yaml",
            tiny_models,
            sources=[{"model": str(save_tiny_llama(tmp_path / "wide", seed=9, intermediate_size=40))}],
        ),
        "existing output": lambda: good,
        "unwritable output": lambda: good,
        "corrupt safetensors": lambda: write_recipe(
            tmp_path / "r.yaml", tiny_models, sources=[{"model": str(corrupt_model(tmp_path))}]
        ),
        "nan merge": lambda: write_recipe(
            tmp_path / "r.yaml", tiny_models, sources=[{"model": str(infinite_model(tmp_path))}]
        ),
    }
    recipe = cases[case]()
    if case == "existing output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "unwritable output":
        (tmp_path / "a-file").write_text("")
        out = tmp_path / "a-file" / "out"
    before = sorted(p.name for p in tmp_path.iterdir())

    assert main(["merge", str(recipe), "--out", str(out)]) == 2

    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomerge: error: "), stderr
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "existing output":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
