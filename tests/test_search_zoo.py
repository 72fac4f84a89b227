"""The search on the real zoo: the demo search paying off, a Pareto front, Ctrl-C, early stopping (kill -9 and
resume: tests/test_hybrid.py, in both phases of a hybrid run)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from runs import CONFIGS, evomerge_result, run_study, small_demo_config

from evomerge.cli import main
from evomerge.config import load_config
from evomerge.merge.recipe import recipe_from_dict
from evomerge.search.results import best_trial
from evomerge.zoo.check import recipe_accuracy

pytestmark = pytest.mark.slow


def test_the_demo_search_beats_its_start_and_the_uniform_average_on_the_search_split(
    zoo_dir, tmp_path, capsys
):
    run_dir = tmp_path / "demo"
    assert main(["run", str(CONFIGS / "demo.yaml"), "--run-dir", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    config = load_config(CONFIGS / "demo.yaml", {"run_dir": str(run_dir)})
    study = optuna.load_study(study_name="evomerge", storage=config.storage_url)
    completed = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    start, best = completed[0], best_trial(config, completed)
    assert start.user_attrs["seed_index"] == 0
    assert sum(best.values) > sum(start.values), (best.values, start.values)
    uniform_average = recipe_from_dict({"method": "linear", "sources": config.recipe.model_dump()["sources"]})
    uniform = recipe_accuracy(uniform_average, zoo_dir, split="search", limit=100)
    assert sum(best.values) > sum(uniform.values()) + 0.5, (best.values, uniform)
    assert f"best: trial {best.number}" in printed


def test_nsga2_on_two_skills_prints_a_pareto_front(zoo_dir, tmp_path, capsys):
    run_dir = tmp_path / "pareto"
    assert main(["run", str(CONFIGS / "pareto.yaml"), "--run-dir", str(run_dir), "--budget", "24"]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front (" in printed
    front = printed.split("Pareto front (")[1]
    assert front.count("trial ") >= 1


def test_ctrl_c_stops_cleanly_and_the_run_resumes(zoo_dir, tmp_path):
    # the run interrupts itself (SIGINT, as Ctrl-C sends) once trial 3 is recorded
    config = small_demo_config(tmp_path / "c.yaml", tmp_path / "run", evaluations=12)
    returncode, stderr = evomerge_result("run", config, fault="sigint@3")
    assert returncode == 130
    assert f"nothing is lost: evomerge resume {tmp_path / 'run'}" in stderr and "Traceback" not in stderr
    assert [t.state for t in run_study(tmp_path / "run").get_trials()] == [TrialState.COMPLETE] * 4
    returncode, stderr = evomerge_result("resume", tmp_path / "run")
    assert returncode == 0, stderr
    assert [t.state for t in run_study(tmp_path / "run").get_trials()] == [TrialState.COMPLETE] * 12


def early_stopping_config(run_dir: Path, optimizer: str, evaluations: int) -> dict:
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data["tasks"] = {name: {**task, "limit": 30} for name, task in data["tasks"].items()}
    data["optimizer"] = {"name": optimizer, "population_size": 4, "sigma": 0.4}
    data["budget"] = {"evaluations": evaluations}
    data["early_stopping"] = {"enabled": True, "chunk_size": 10, "top_k": 2}
    data["run_dir"] = str(run_dir)
    return data


@pytest.mark.parametrize("optimizer", ["cmaes", "nsga2"])
def test_early_stopping_prunes_hopeless_candidates_and_resumes_exactly(optimizer, zoo_dir, tmp_path):
    from evomerge.config import config_from_dict
    from evomerge.search.loop import Search
    from evomerge.search.optimizers.scalarization import scalarize

    def run(run_dir: Path, evaluations: int) -> optuna.Study:
        config = config_from_dict(early_stopping_config(run_dir, optimizer, evaluations))
        return Search(config, progress=False).run()

    whole = run(tmp_path / "whole", 14)
    trials = whole.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(trials) == 14 and all(t.state != TrialState.FAIL for t in trials)
    config = config_from_dict(early_stopping_config(tmp_path / "whole", optimizer, 14))
    for trial in pruned:
        assert trial.user_attrs["examples_scored"] < 3 * 30
        before = [t for t in trials if t.state == TrialState.COMPLETE and t.number < trial.number]
        if optimizer == "cmaes":  # what pycma is told ranks below the 2nd best completed before it
            fitness = sorted(scalarize(t.values, config.objectives, "weighted_sum", []) for t in before)
            assert scalarize(trial.user_attrs["estimate"], config.objectives, "weighted_sum", []) > fitness[1]
    # Optuna's exact resume is the same with pruning; pycma's replay is the delicate one
    if optimizer != "cmaes":
        return
    run(tmp_path / "parts", 6)
    resumed = run(tmp_path / "parts", 14)
    assert [(t.state, t.values, t.params, t.user_attrs.get("estimate")) for t in resumed.get_trials()] == [
        (t.state, t.values, t.params, t.user_attrs.get("estimate")) for t in trials
    ]
