"""Hybrid runs: the merge-parameter search, then a layer-stacking search over its best merge, in one
ledger."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from runs import config_data, evomerge_result, ledger_rows, small_demo_config, write_config
from transformers import AutoModelForCausalLM

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.search.hybrid import HybridSearch, best_merge
from evomerge.search.loop import Search
from evomerge.search.results import held_out_scores


def hybrid_data(tiny_models, task_dir, run_dir, evaluations=5, stack_evaluations=6, **changes):
    data = config_data(tiny_models, task_dir, run_dir, evaluations=evaluations)
    data["stack"] = {
        "sources": ["search:best", str(tiny_models["c"])],
        "repeats": 2,
        "max_depth": 5,
        "scale_low": 0.5,
        "scale_high": 1.5,
    }
    data["stack_budget"] = {"evaluations": stack_evaluations}
    data.update(changes)
    return data


def studies(run_dir) -> dict[str, optuna.Study]:
    storage = f"sqlite:///{run_dir / 'ledger.db'}"
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


def test_a_hybrid_run_stacks_the_layers_of_its_best_merge_in_the_same_ledger(tiny_models, task_dir, tmp_path):
    config = config_from_dict(hybrid_data(tiny_models, task_dir, tmp_path / "run"))
    stacked = HybridSearch(config, progress=False).run()
    found = studies(tmp_path / "run")
    assert set(found) == {"evomerge", "evomerge-stack"} and stacked.study_name == "evomerge-stack"
    merge, stack = found["evomerge"].get_trials(), found["evomerge-stack"].get_trials()
    assert len(merge) == 5 and len(stack) == 6
    assert all(t.state == TrialState.COMPLETE for t in merge + stack)
    best = best_merge(config.merge_phase())
    first_stack = yaml.safe_load(stack[0].user_attrs["recipe"])
    assert first_stack["sources"][0] == yaml.safe_load(best.to_yaml())  # the best merge, inline
    assert first_stack["sources"][1] == str(tiny_models["c"])
    assert first_stack["layers"] == [[0, 0, 1.0], [0, 1, 1.0]]  # the best merge's own layers first
    # the stacking phase starts from the best merge as it is: the same model, so the same search scores
    best_number = next(t.number for t in merge if t.user_attrs["recipe"] == best.to_yaml())
    assert stack[0].values == merge[best_number].values
    assert {"held_out.0"} <= set(found["evomerge-stack"].user_attrs)  # each phase records its held-out scores


def test_a_stopped_and_resumed_hybrid_run_ends_as_an_uninterrupted_one(tiny_models, task_dir, tmp_path):
    whole = config_from_dict(hybrid_data(tiny_models, task_dir, tmp_path / "whole"))
    HybridSearch(whole, progress=False).run()
    stopped_in_merge_phase = hybrid_data(tiny_models, task_dir, tmp_path / "parts", evaluations=3)
    Search(config_from_dict(stopped_in_merge_phase).merge_phase(), progress=False).run()
    assert set(studies(tmp_path / "parts")) == {"evomerge"}
    for stack_evaluations in (1, 3, 6):  # the merge phase finished, then stopped in the stacking phase
        data = hybrid_data(tiny_models, task_dir, tmp_path / "parts", stack_evaluations=stack_evaluations)
        HybridSearch(config_from_dict(data), progress=False).run()
    parts, uninterrupted = studies(tmp_path / "parts"), studies(tmp_path / "whole")
    for name in ("evomerge", "evomerge-stack"):
        assert ledger_rows(parts[name]) == ledger_rows(uninterrupted[name])


def test_the_cli_runs_and_resumes_a_hybrid_and_shows_both_phases(tiny_models, task_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", hybrid_data(tiny_models, task_dir, tmp_path / "run", 3, 2))
    assert main(["run", str(config), "--budget", "2"]) == 0
    out = capsys.readouterr().out
    assert "== merge phase ==" in out and "progress: 2/2" in out and "layer-stacking phase" in out
    assert main(["resume", str(tmp_path / "run"), "--stack-budget", "3"]) == 0
    out = capsys.readouterr().out
    assert "progress: 2/2" in out and "progress: 3/3" in out  # the merge phase's 2, the stacking phase's 3
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "== layer-stacking phase ==\nrun:" in capsys.readouterr().out
    assert main(["resume", str(tmp_path / "run"), "--budget", "4"]) == 2
    assert "the merge phase cannot be extended; raise the stacking phase's budget" in capsys.readouterr().err

    assert main(["report", str(tmp_path / "run")]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Merge phase" in report and "## Layer-stacking phase" in report
    assert all((tmp_path / "run" / f"{phase}_progress.png").is_file() for phase in ("merge", "stack"))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "stacked")]) == 0
    assert main(["export", str(tmp_path / "run"), "--phase", "merge", "--out", str(tmp_path / "merged")]) == 0
    stacked = yaml.safe_load((tmp_path / "stacked" / "recipe.yaml").read_text())
    merged = yaml.safe_load((tmp_path / "merged" / "recipe.yaml").read_text())
    assert stacked["sources"][0] == merged and "layers" in stacked  # the stack over the merge phase's best
    for directory in ("stacked", "merged"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / directory)
        assert model.config.num_hidden_layers == (len(stacked["layers"]) if directory == "stacked" else 2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stack": {"sources": ["A"]}}, "list 'search:best' among the stack sources"),
        (
            {"recipe": None, "genome": [], "stack": {"sources": ["search:best"]}},
            "'search:best' is the best merge of a hybrid run's merge search",
        ),
        ({"stack": None}, "stack_budget: only a hybrid run"),
        ({"seed_recipes": ["x.yaml"]}, "seed_recipes: a hybrid run starts from its template recipe"),
        (
            {
                "recipe": None,
                "genome": [],
                "stack": {"sources": ["A"]},
                "stack_budget": None,
                "sources_dtype": "float16",
            },
            "sources_device, sources_dtype: they apply to merge-parameter runs",
        ),
    ],
)
def test_bad_hybrid_configs_get_one_line_and_exit_2(change, message, tiny_models, task_dir, tmp_path, capsys):
    data = hybrid_data(tiny_models, task_dir, tmp_path / "run", **change)
    if data["stack"] and data["stack"]["sources"] == ["A"]:
        data["stack"]["sources"] = [str(tiny_models["a"])]
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "run").exists()


def test_a_hybrid_run_is_not_shared_by_workers(tiny_models, task_dir, tmp_path, capsys):
    data = hybrid_data(tiny_models, task_dir, tmp_path / "run")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    assert main(["run", str(write_config(tmp_path / "c.yaml", data)), "--storage", storage]) == 2
    assert "a hybrid run (recipe, genome and stack) runs in one process" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hybrid_run_on_the_zoo_killed_9_in_both_phases_resumes_to_the_uninterrupted_ledger(
    zoo_dir, tmp_path
):
    def zoo_config(name: str) -> Path:
        data = yaml.safe_load(small_demo_config(tmp_path / f"{name}.yaml", tmp_path / name, 12).read_text())
        data["tasks"] = {skill: {**task, "limit": 12} for skill, task in data["tasks"].items()}
        data["stack"] = {
            "sources": ["search:best", "zoo:expert_shift"],
            "repeats": 2,
            "max_depth": 8,
            "scale_low": 0.5,
            "scale_high": 1.5,
        }
        data["stack_budget"] = {"evaluations": 8}
        return write_config(tmp_path / f"{name}.yaml", data)

    returncode, errors = evomerge_result("run", zoo_config("whole"))
    assert returncode == 0, errors
    config, killed_dir = zoo_config("killed"), tmp_path / "killed"
    # 12 merge candidates (0-11 of the study evomerge), then 8 stacks (0-7 of evomerge-stack); each run kills
    # itself once a chosen trial is recorded, and the next one resumes from there
    for study, number in (("evomerge", 1), ("evomerge", 6), ("evomerge-stack", 1), ("evomerge-stack", 4)):
        returncode, errors = evomerge_result("run", config, fault=f"sigkill@{study}:{number}")
        assert returncode == -signal.SIGKILL, errors
        assert len(studies(killed_dir)[study].get_trials()) == number + 1
    returncode, errors = evomerge_result("resume", killed_dir)
    assert returncode == 0, errors
    resumed, uninterrupted = studies(killed_dir), studies(tmp_path / "whole")
    for name, count in (("evomerge", 12), ("evomerge-stack", 8)):
        assert [t.state for t in resumed[name].get_trials()] == [TrialState.COMPLETE] * count
        assert ledger_rows(resumed[name]) == ledger_rows(uninterrupted[name])
        assert held_out_scores(resumed[name]) == held_out_scores(uninterrupted[name]) != {}
