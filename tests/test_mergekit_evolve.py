"""mergekit-evolve configs as input: the example of mergekit-evolve's documentation converted to a run config
(`evomerge convert`), read by `evomerge run` as it is and searched over tiny models with a local lm-eval task,
and what evomerge cannot search refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_llama
from optuna.trial import TrialState
from pydantic import TypeAdapter

from evomerge.cli import main
from evomerge.config import config_from_dict, load_config
from evomerge.errors import UsageError
from evomerge.evaluate.lm_eval_task import lm_eval_task_config
from evomerge.evaluate.specs import TaskSpec
from evomerge.mergekit_evolve import EvolveOptions, evolve_run_config
from evomerge.search.ledger import load_run_study
from evomerge.search.runs import run_search

#: The configuration example of mergekit-evolve's documentation (docs/evolve.md), its placeholders filled
#: in below: the models, the base and the task.
DOCUMENTED = """\
genome:
    models:
       - model_1
       - model_2
    merge_method: dare_ties
    base_model: base_model_if_needed
    tokenizer_source: null # optional
    layer_granularity: 8

    # optional:
    normalize: false
    allow_negative_weights: false
    smooth: false
tasks:
  - name: lm_eval_task_name
    weight: 1.0 # optional
    metric: "acc,none" # defaults to acc,none
"""
TASK = "tiny_choice"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny Llamas of 8 layers (the example's layer_granularity)."""
    root = tmp_path_factory.mktemp("evolve_models")
    return {
        name: save_tiny_llama(root / name, seed, num_hidden_layers=8)
        for seed, name in enumerate(["base", "model_1", "model_2"])
    }


@pytest.fixture(scope="module")
def task_path(tmp_path_factory) -> Path:
    """A local lm-eval task: pick the number after `nI=` of two options (lm-eval's default metric: acc)."""
    root = tmp_path_factory.mktemp("evolve_task")
    rows = [{"prompt": f"n{i}=", "options": [str(i), str(i + 1)], "label": 0} for i in range(6)]
    (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = TypeAdapter(TaskSpec).validate_python(
        {"kind": "choice", "data": str(root), "choices": "options", "target": "label", "delimiter": ""}
    )
    (root / f"{TASK}.yaml").write_text(yaml.safe_dump(lm_eval_task_config(TASK, root / "data.jsonl", spec)))
    return root


def documented(models: dict[str, Path], **genome) -> dict:
    text = DOCUMENTED.replace("base_model_if_needed", str(models["base"])).replace("lm_eval_task_name", TASK)
    for name in ("model_1", "model_2"):
        text = text.replace(f"- {name}", f"- {models[name]}")
    data = yaml.safe_load(text)
    data["genome"].update(genome)
    return data


def test_the_documented_example_converts_to_a_run_config(models):
    config, warnings = evolve_run_config(documented(models), "evolve.yml")
    assert config["recipe"] == {
        "method": "dare_ties",
        "base": str(models["base"]),
        "sources": [{"model": str(models[m]), "weight": 0.5, "drop": 0.0} for m in ("model_1", "model_2")],
        "parameters": {"normalize": False},
        "dtype": "bfloat16",
    }
    group = {"granularity": "group", "group_size": 8}
    assert config["genome"] == [
        {"param": "weight", **group, "low": 0.0, "high": 1.0},
        {"param": "drop", **group, "low": 0.0, "high": 0.95},
    ]
    assert config["tasks"] == {TASK: {"kind": "lm_eval", "task": TASK}}  # its documents split in two
    assert config["objectives"] == [{"task": TASK, "metric": "acc", "direction": "maximize", "weight": 1.0}]
    assert config["optimizer"] == {"name": "cmaes", "sigma": 1 / 6}
    assert (config["budget"], config["seed"]) == ({"evaluations": 100}, 0)
    assert any("split in two by a seeded hash" in warning for warning in warnings)
    assert any("has no chat template" in warning for warning in warnings)  # the tiny models' has none
    assert config_from_dict(config).recipe.method == "dare_ties"


@pytest.mark.parametrize(
    ("genome", "searched"),
    [
        ({"layer_granularity": 0}, {"granularity": "global"}),
        ({"layer_granularity": 1}, {"granularity": "layer"}),
        ({"layer_granularity": 4}, {"granularity": "group", "group_size": 4}),
        ({"layer_granularity": 0, "filters": ["self_attn", "mlp"]}, {"granularity": "kind"}),
        ({"merge_method": "slerp", "base_model": None}, {"granularity": "group", "group_size": 8}),
    ],
)
def test_layer_granularity_and_filters_become_the_genes_granularity(models, genome, searched):
    config, _ = evolve_run_config(documented(models, **genome), "evolve.yml")
    assert {k: v for k, v in config["genome"][0].items() if k not in ("param", "low", "high")} == searched


def test_the_command_line_options_and_negative_weights(models, tmp_path, capsys):
    path = tmp_path / "evolve.yml"
    path.write_text(
        yaml.safe_dump(documented(models, merge_method="ties", allow_negative_weights=True, normalize=None))
    )
    assert (
        main(
            [
                "convert",
                str(path),
                *("--max-fevals", "7", "--sigma0", "0.3", "--random-seed", "3"),
                *("--storage-path", str(tmp_path / "run"), "--task-search-path", str(tmp_path)),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.startswith("# evomerge run config converted from the mergekit-evolve config")
    assert "# warning: task 'tiny_choice': its documents are split in two" in out.out
    assert "evomerge: warning: task 'tiny_choice'" in out.err
    config = config_from_dict(yaml.safe_load(out.out))
    assert (config.budget.evaluations, config.optimizer.sigma, config.seed) == (
        7,
        0.15,
        3,
    )  # weight in [-1, 1]
    assert config.run_dir == tmp_path / "run" and config.tasks[TASK].include_path == tmp_path
    assert [(g.param, g.low) for g in config.genome] == [("weight", -1.0), ("density", 0.05)]
    assert config.recipe.parameters == {"normalize": True}  # normalize left out: mergekit-evolve's for ties


def test_evomerge_run_reads_it_and_scores_candidates(models, task_path, tmp_path):
    path = tmp_path / "evolve.yml"
    path.write_text(yaml.safe_dump(documented(models)))
    overrides = {
        f"tasks.{TASK}.include_path": str(task_path),
        "budget.evaluations": 2,
        "run_dir": str(tmp_path / "run"),
    }
    config = load_config(path, overrides)
    run_search(config)
    trials = load_run_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(0.0 <= t.values[0] <= 1.0 for t in trials)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["recipe"]["method"] == "dare_ties"  # the run keeps evomerge's own config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"genome": {"layer_granularity": 3}},
            "genome.layer_granularity 3 does not divide the models' 8 layers",
        ),
        ({"genome": {"smooth": True}}, "genome.smooth: evomerge's genome holds one value per layer group"),
        ({"genome": {"filters": ["mlp"]}}, "genome.filters with layer_granularity 8"),
        ({"genome": {"merge_method": "della"}}, "genome.merge_method 'della'"),
        ({"tasks": [{"name": TASK, "weight": 0}]}, "tasks[0].weight 0 scores nothing"),
    ],
)
def test_what_evomerge_cannot_search_is_one_line(models, change, message):
    data = documented(models, **change.get("genome", {}))
    data.update({key: value for key, value in change.items() if key != "genome"})
    with pytest.raises(UsageError) as error:
        evolve_run_config(data, "evolve.yml", EvolveOptions())
    assert message in str(error.value) and "\n" not in str(error.value)
