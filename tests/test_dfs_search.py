"""Layer-stacking runs through the search loop: the ledger, exact resume, held-out scores, export, bad input."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import save_tiny_llama
from optuna.trial import TrialState
from test_search import ledger, run, write_config
from transformers import AutoModelForCausalLM

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.dfs import load_stack
from evomerge.search.results import held_out_scores


def stack_config(tiny_models, task_dir, run_dir, optimizer="cmaes", evaluations=8, **stack):
    return {
        "stack": {
            "sources": [str(tiny_models["a"]), str(tiny_models["b"])],
            "repeats": 2,
            "max_depth": 5,
            "scale_low": 0.5,
            "scale_high": 1.5,
            **stack,
        },
        "tasks": {"t": {"data": str(task_dir), "limit": 4}},
        "objectives": [{"task": "t", "metric": "exact_match"}],
        "optimizer": {"name": optimizer, "population_size": 4},
        "budget": {"evaluations": evaluations},
        "run_dir": str(run_dir),
    }


def test_a_stack_run_starts_from_each_source_and_records_stack_recipes(tiny_models, task_dir, tmp_path):
    study = run(stack_config(tiny_models, task_dir, tmp_path / "run"))
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    first, second = (yaml.safe_load(t.user_attrs["recipe"])["layers"] for t in trials[:2])
    assert first == [[0, 0, 1.0], [0, 1, 1.0]] and second == [[1, 0, 1.0], [1, 1, 1.0]]
    depths = {len(yaml.safe_load(t.user_attrs["recipe"])["layers"]) for t in trials}
    assert max(depths) <= 5 and len(depths) > 1
    assert set(trials[2].params) == {f"slot{i}.{gene}" for i in range(8) for gene in ("include", "scale")}


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe"])
def test_a_stopped_and_resumed_stack_run_ends_as_an_uninterrupted_one(
    optimizer, tiny_models, task_dir, tmp_path
):
    whole = run(stack_config(tiny_models, task_dir, tmp_path / "whole", optimizer))
    run(stack_config(tiny_models, task_dir, tmp_path / "parts", optimizer, evaluations=3))
    resumed = run(stack_config(tiny_models, task_dir, tmp_path / "parts", optimizer))
    assert ledger(resumed) == ledger(whole)


def test_the_cli_runs_reports_and_exports_a_stack_run(tiny_models, task_dir, tmp_path, capsys):
    config = write_config(
        tmp_path / "c.yaml", stack_config(tiny_models, task_dir, tmp_path / "run", evaluations=5)
    )
    assert main(["run", str(config)]) == 0
    assert "progress: 5/5" in capsys.readouterr().out
    study = run(stack_config(tiny_models, task_dir, tmp_path / "run", evaluations=5))
    best_number, held_out = next(iter(held_out_scores(study).items()))
    best = study.get_trials()[best_number]
    (tmp_path / "best.yaml").write_text(best.user_attrs["recipe"])
    assert main(["merge", str(tmp_path / "best.yaml"), "--out", str(tmp_path / "best")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    stack = load_stack(tmp_path / "best" / "recipe.yaml")
    assert exported.config.num_hidden_layers == len(stack.layers)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0 and "progress: 5/5" in capsys.readouterr().out
    for command in (["report"], ["export", "--out", str(tmp_path / "e")], ["baselines"]):
        assert main([command[0], str(tmp_path / "run"), *command[1:]]) == 2
        assert "does not handle layer-stacking (stack:) runs yet" in capsys.readouterr().err
    from evomerge.search.scoring import CandidateScorer

    scorer = CandidateScorer(config_from_dict(stack_config(tiny_models, task_dir, tmp_path / "run")))
    assert scorer.evaluator.score(exported.to(torch.float32), "held_out") == held_out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"repeats": 0}, "stack.repeats: Input should be greater than or equal to 1"),
        ({"min_depth": 6, "max_depth": 5}, "max_depth 5 < min_depth 6"),
        ({"min_depth": 9, "max_depth": 9}, "min_depth 9 is more than the 8 slots"),
        ({"sources": ["WIDE"]}, "cannot be stacked"),
    ],
)
def test_bad_stack_configs_get_one_line_and_exit_2_before_anything_is_written(
    change, message, tiny_models, task_dir, tmp_path, capsys
):
    if change.get("sources") == ["WIDE"]:
        change = {
            "sources": [
                str(tiny_models["a"]),
                str(save_tiny_llama(tmp_path / "wide", 3, num_attention_heads=4)),
            ]
        }
    data = stack_config(tiny_models, task_dir, tmp_path / "run", **change)
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "run").exists()
