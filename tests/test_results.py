"""What a run leaves behind, on tiny random models: baselines, the report, the exported model and its card."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml
from runs import PNG_MAGIC, config_data
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.errors import UsageError
from evomerge.merge.recipe import recipe_from_dict
from evomerge.output.mergekit import mergekit_config
from evomerge.output.model_card import front_matter
from evomerge.search.baselines import BASELINES_STUDY, baseline_grid
from evomerge.search.results import HELD_OUT_PREFIX
from evomerge.zoo.tokenizer import build_tokenizer


def run_config(path: Path, models: dict[str, Path], task_dir: Path, run_dir: Path, **changes) -> Path:
    """A two-objective NSGA-II run of 6 candidates over tiny models (test_search's config with changes)."""
    data = config_data(
        models,
        task_dir,
        run_dir,
        "nsga2",
        6,
        tasks={"t": {"data": str(task_dir), "limit": 4}, "u": {"data": str(task_dir), "limit": 2}},
        objectives=[{"task": "t"}, {"task": "u"}],
    )
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def study(run_dir: Path, name: str = "evomerge") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'ledger.db'}")


@pytest.fixture(scope="module")
def finished_run(tiny_models, task_dir, tmp_path_factory) -> Path:
    """A finished two-objective run with its baselines."""
    root = tmp_path_factory.mktemp("finished")
    config = run_config(root / "c.yaml", tiny_models, task_dir, root / "run")
    assert main(["run", str(config)]) == 0
    assert main(["baselines", str(root / "run")]) == 0
    return root / "run"


def test_baselines_are_their_own_study_and_never_change_the_search(
    finished_run, tiny_models, task_dir, tmp_path, monkeypatch
):
    config = config_from_dict(yaml.safe_load((finished_run / "config.yaml").read_text()))
    grid = baseline_grid(config.recipe)
    recorded = study(finished_run, BASELINES_STUDY)
    assert sorted(t.user_attrs["label"] for t in recorded.get_trials()) == sorted(b.label for b in grid)
    families = {b.family for b in grid}
    assert {"a alone", "b alone", "uniform average", "task arithmetic", "TIES", "DARE-TIES"} == families
    assert len([k for k in recorded.user_attrs if k.startswith(HELD_OUT_PREFIX)]) == len(families)
    assert len(study(finished_run).get_trials()) == 6

    # baselines first, then a search resumed in the same ledger: exactly the candidates of a run without them
    for grid in ("TASK_ARITHMETIC_GRID", "TIES_GRID", "DARE_TIES_GRID"):  # one setting each is enough here
        monkeypatch.setattr(f"evomerge.search.baselines.{grid}", {"scale": (1.0,)})
    cmaes = {"name": "cmaes", "population_size": 4}
    whole = run_config(tmp_path / "whole.yaml", tiny_models, task_dir, tmp_path / "whole", optimizer=cmaes)
    parts = run_config(tmp_path / "parts.yaml", tiny_models, task_dir, tmp_path / "parts", optimizer=cmaes)
    assert main(["run", str(whole)]) == 0
    assert main(["run", str(parts), "--budget", "3"]) == 0
    assert main(["baselines", str(parts)]) == 0
    assert main(["resume", str(tmp_path / "parts"), "--budget", "6"]) == 0
    params = [[t.params for t in study(tmp_path / d).get_trials()] for d in ("whole", "parts")]
    assert params[0] == params[1]


def test_report_has_the_tables_and_plots(finished_run, capsys):
    assert main(["report", str(finished_run)]) == 0
    text = (finished_run / "report.md").read_text()
    for expected in (
        "## Results on the held-out split",
        "| uniform average |",
        "task arithmetic scale=",
        "best",
        "pareto:1",
        "found at evaluation",
        "optuna-dashboard sqlite:///",
        "```yaml",
    ):
        assert expected in text, expected
    for plot in ("progress.png", "pareto.png", "best_recipe.png"):
        assert (finished_run / plot).read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot})" in text


def test_export_loads_in_transformers_and_its_recipe_remerges_bit_for_bit(
    tiny_models, task_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr("evomerge.search.loop.record_held_out", lambda *args: {})
    config = run_config(
        tmp_path / "c.yaml",
        tiny_models,
        task_dir,
        tmp_path / "run",
        objectives=[{"task": "t"}],
        optimizer={"name": "cmaes"},
        budget={"evaluations": 2},
    )
    assert main(["run", str(config)]) == 0
    assert not study(tmp_path / "run").user_attrs.get(f"{HELD_OUT_PREFIX}0")
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert f"{HELD_OUT_PREFIX}0" not in study(tmp_path / "run").user_attrs  # export scores nothing
    assert f"evomerge score {tmp_path / 'run'} --trial 0" in (out / "README.md").read_text()

    files = (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "recipe.yaml",
        "README.md",
    )
    for name in files:
        assert (out / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = AutoTokenizer.from_pretrained(out)("n7=", return_tensors="pt")
    assert model.generate(**prompt, max_new_tokens=2, do_sample=False).shape[1] > prompt["input_ids"].shape[1]
    card = (out / "README.md").read_text()
    assert "Trial 0 of the evomerge run" in card and "| t | exact_match |" in card and "cmaes" in card
    header = yaml.safe_load(card.split("---")[1])
    assert header == {
        "library_name": "transformers",
        "tags": ["merge", "evomerge"],
    }  # local models: no hub ids

    again = tmp_path / "again"
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(again)]) == 0
    exported, rebuilt = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert exported.keys() == rebuilt.keys()
    assert all(torch.equal(exported[name], rebuilt[name]) for name in exported)

    assert (
        main(["score", str(tmp_path / "run"), "--trial", "7"]) == 2
    )  # no such trial: one line, nothing scored
    assert f"{HELD_OUT_PREFIX}1" not in study(tmp_path / "run").user_attrs
    assert main(["score", str(tmp_path / "run"), "--trial", "1"]) == 0
    assert set(study(tmp_path / "run").user_attrs) >= {f"{HELD_OUT_PREFIX}1"}
    (out / "model.safetensors").write_bytes(b"stale")
    assert main(["export", str(tmp_path / "run"), "--trial", "1", "--out", str(out), "--force"]) == 0
    held_out = study(tmp_path / "run").user_attrs[f"{HELD_OUT_PREFIX}1"]["t"]["exact_match"]
    assert (
        f"| t | exact_match | {study(tmp_path / 'run').trials[1].values[0]:.4f} | {held_out:.4f} |"
        in (out / "README.md").read_text()
    )
    assert (
        yaml.safe_load((out / "recipe.yaml").read_text())["sources"]
        == yaml.safe_load(study(tmp_path / "run").trials[1].user_attrs["recipe"])["sources"]
    )
    assert load_file(out / "model.safetensors").keys() == exported.keys()


def test_export_as_mergekit_translates_per_layer_values_and_drop(finished_run, tiny_models, tmp_path):
    out = tmp_path / "mk"
    assert main(["export", str(finished_run), "--out", str(out), "--format", "mergekit"]) == 0
    written = yaml.safe_load((out / "mergekit.yaml").read_text())
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["merge_method"] == "ties" and written["base_model"] == str(Path(recipe["base"]).resolve())
    for model, source in zip(
        written["models"], recipe["sources"]
    ):  # final norm and head: the last layer's value
        assert model["parameters"]["weight"] == [
            {"filter": "lm_head.weight", "value": source["weight"][-1]},
            {"filter": "model.norm.weight", "value": source["weight"][-1]},
            {"value": source["weight"]},
        ]

    dare = recipe_from_dict(
        {
            "method": "dare_ties",
            "base": str(tiny_models["base"]),
            "parameters": {"scale": 0.9},
            "sources": [{"model": str(tiny_models["a"]), "drop": {"attention": [0.1, 0.2], "default": 0.3}}],
        }
    )
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    config = mergekit_config(dare, names)
    assert config["parameters"] == {"normalize": True, "lambda": 0.9}
    density = config["models"][0]["parameters"]["density"]
    assert density == [
        {"filter": "model.norm.weight", "value": 0.7},
        {"filter": "lm_head.weight", "value": 0.7},
        {"filter": "self_attn", "value": [0.9, 0.8]},
        {"value": 0.7},
    ]


def save_tiny_gpt2(path: Path, seed: int) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bad_exports_get_one_line_and_exit_2_and_write_nothing(
    finished_run, tiny_models, task_dir, tmp_path, capsys
):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    storage = f"sqlite:///{empty_run / 'ledger.db'}"
    optuna.create_study(study_name="evomerge", storage=storage, directions=["maximize"] * 2)

    gpt2 = {name: save_tiny_gpt2(tmp_path / name, seed) for seed, name in enumerate(("base", "a", "b"))}
    by_kind = run_config(
        tmp_path / "kind.yaml",
        gpt2,
        task_dir,
        tmp_path / "kind",
        budget={"evaluations": 2},
        genome=[{"param": "density", "granularity": "kind", "low": 0.2, "high": 1.0}],
    )
    assert main(["run", str(by_kind)]) == 0
    capsys.readouterr()

    cases = [
        ([str(empty_run)], "has no completed candidate yet"),
        ([str(finished_run), "--trial", "99"], "has no trial 99 (its trials are 0 to 5)"),
        ([str(finished_run), "--pick", "pareto:99"], "pareto:K with K from 1 to"),
        ([str(finished_run), "--out", str(existing)], "already exists; choose another --out or delete it"),
        ([str(finished_run), "--out", str(existing), "--force"], "is not a previous export"),
        ([str(tmp_path / "kind"), "--format", "mergekit"], "mergekit cannot express the per-kind 'density'"),
    ]
    for args, message in cases:
        out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
        assert main(["export", *args, *out]) == 2, args
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
        assert not (tmp_path / "out").exists()
    assert (existing / "mine.txt").read_text() == "keep"


def test_mergekit_refuses_gguf_sources(tiny_models):
    recipe = recipe_from_dict({"method": "linear", "sources": [{"model": "/models/x.gguf"}]})
    with pytest.raises(UsageError, match="mergekit cannot read the GGUF model"):
        mergekit_config(recipe, [])


@pytest.mark.parametrize(
    ("command", "phrase"),
    [
        ("report", "report.md"),
        ("export", "--pick"),
        ("baselines", "DARE-TIES"),
    ],
)
def test_help_of_report_export_and_baselines(command, phrase, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0 and f"usage: evomerge {command}" in printed and phrase in printed


def test_the_heat_map_resolves_lists_gradients_and_kind_maps_per_layer(tiny_models):
    from evomerge.merge.space import recipe_grid

    recipe = recipe_from_dict(
        {
            "method": "ties",
            "base": str(tiny_models["base"]),
            "parameters": {"scale": {"gradient": [1.0, 0.5]}},
            "sources": [
                {
                    "model": str(tiny_models["a"]),
                    "weight": [0.25, 0.75],
                    "density": {"attention": 0.5, "default": 0.9},
                }
            ],
        }
    )
    rows, columns, values = recipe_grid(recipe)
    assert columns == ["layer 0", "layer 1"]
    assert dict(zip(rows, values)) == {
        "a weight": [0.25, 0.75],
        "a density [attention]": [0.5, 0.5],
        "a density [default]": [0.9, 0.9],
        "scale": [1.0, 0.5],
    }


def test_the_model_card_lists_the_hub_models_it_is_made_of_as_the_hub_reads_a_merge():
    header = front_matter(["org/base", "org/a@v2", "hf:org/b", "zoo:base", "/no/such/dir", "org/base"])
    assert yaml.safe_load(header.split("---")[1]) == {
        "base_model": ["org/base", "org/a", "org/b"],
        "library_name": "transformers",
        "tags": ["merge", "evomerge"],
    }
