"""The search loop on tiny random models: the ledger, exact resume, failures as data, bad configs."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from runs import config_data, ledger_rows, run_search, write_config

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.errors import SearchFailed
from evomerge.merge.recipe import recipe_from_dict
from evomerge.search.results import best_trial, held_out_scores, pareto_front
from evomerge.search.scoring import CandidateScorer
from evomerge.search.status import status_text


def test_cmaes_run_records_every_candidate_with_its_recipe_and_times(tiny_models, task_dir, tmp_path):
    study = run_search(config_data(tiny_models, task_dir, tmp_path / "run"))
    trials = study.get_trials()
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["seed_index"] == 0
    assert [t.user_attrs.get("index") for t in trials[1:5]] == [0, 1, 2, 3]
    first = yaml.safe_load(trials[0].user_attrs["recipe"])
    assert first["sources"][0]["weight"] == [1.0, 1.0] and first["sources"][0]["density"] == 1.0
    assert all(t.user_attrs["merge_seconds"] > 0 and t.user_attrs["eval_seconds"] > 0 for t in trials)
    assert (tmp_path / "run" / "ledger.db").is_file()
    assert "trial 8" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe", "nsga2", "nsga3", "optuna-cmaes", "gp", "random"])
def test_a_stopped_and_resumed_run_proposes_exactly_what_an_uninterrupted_run_does(
    optimizer, tiny_models, task_dir, tmp_path
):
    whole = run_search(config_data(tiny_models, task_dir, tmp_path / "whole", optimizer))
    run_search(config_data(tiny_models, task_dir, tmp_path / "parts", optimizer, evaluations=3))
    resumed = run_search(config_data(tiny_models, task_dir, tmp_path / "parts", optimizer, evaluations=6))
    assert len(resumed.get_trials()) == 6
    resumed = run_search(config_data(tiny_models, task_dir, tmp_path / "parts", optimizer))
    assert ledger_rows(resumed) == ledger_rows(whole)
    assert len({json.dumps(t.params, sort_keys=True) for t in whole.get_trials()}) > 1


def test_the_candidate_in_flight_is_evaluated_first_on_resume(tiny_models, task_dir, tmp_path):
    data = config_data(tiny_models, task_dir, tmp_path / "run", "tpe", evaluations=4)
    study = run_search(data)
    in_flight = study.ask()
    in_flight.suggest_float("sources.0.weight@layer0", 0.0, 1.5)  # killed after asking, before finishing
    study = run_search(config_data(tiny_models, task_dir, tmp_path / "run", "tpe", evaluations=6))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert trials[4].params["sources.0.weight@layer0"] == in_flight.params["sources.0.weight@layer0"]


def test_a_failing_candidate_is_a_failed_trial_and_the_search_goes_on(
    tiny_models, task_dir, tmp_path, monkeypatch
):
    from evomerge.evaluate.tasks import Evaluator

    calls = {"n": 0}
    original = Evaluator.score

    def sometimes_out_of_memory(self, model, split="search"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, model, split)

    monkeypatch.setattr(Evaluator, "score", sometimes_out_of_memory)
    study = run_search(config_data(tiny_models, task_dir, tmp_path / "run"))
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and len(states) == 9
    failed = next(t for t in study.get_trials() if t.state == TrialState.FAIL)
    assert failed.user_attrs["failure_reason"] == "RuntimeError: CUDA out of memory (simulated)"


def test_many_failures_in_a_row_stop_the_run_with_the_reason(tiny_models, task_dir, tmp_path, monkeypatch):
    from evomerge.errors import MergeFailure
    from evomerge.merge.engine import MergeEngine

    def always_nan(self, recipe, model, progress=False):
        raise MergeFailure("the merge produced NaN or Inf in tensor 'x'")

    monkeypatch.setattr(MergeEngine, "materialize", always_nan)
    budget = {"evaluations": 20, "max_consecutive_failures": 3}
    data = config_data(tiny_models, task_dir, tmp_path / "run", budget=budget)
    last = "the last: MergeFailure: the merge produced NaN"
    with pytest.raises(SearchFailed, match=f"stopped after 3 failed candidates in a row; {last}"):
        run_search(data)


def test_status_shows_progress_best_and_speed(tiny_models, task_dir, tmp_path):
    data = config_data(tiny_models, task_dir, tmp_path / "run")
    run_search(data)
    text = status_text(config_from_dict(data))
    assert "progress: 9/9 evaluated (9 complete, 0 failed, 0 running)" in text
    assert "evaluations/hour" in text and "best: trial" in text


#: Run in a fresh interpreter: `evomerge status RUN_DIR`, then the heavy libraries it imported, on stderr.
STATUS_IMPORTS = (
    "import sys; from evomerge.cli import main; assert main(['status', sys.argv[1]]) == 0; "
    "print(sorted(set(sys.argv[2:]) & set(sys.modules)), file=sys.stderr)"
)


def test_status_of_a_finished_run_imports_no_model_or_search_code(tiny_models, task_dir, tmp_path):
    """What keeps `evomerge status` answering at once: reading a ledger imports neither torch, transformers,
    datasets nor the optimizer and plotting libraries (importing them took seconds)."""
    data = config_data(tiny_models, task_dir, tmp_path / "run", evaluations=3)
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 0
    heavy = ["torch", "transformers", "datasets", "safetensors", "cma", "matplotlib"]
    result = subprocess.run(
        [sys.executable, "-c", STATUS_IMPORTS, str(tmp_path / "run"), *heavy],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "progress: 3/3 evaluated" in result.stdout
    assert result.stderr.splitlines()[-1] == "[]", result.stderr


def test_two_objectives_with_nsga2_give_a_pareto_front(tiny_models, task_dir, tmp_path):
    data = config_data(
        tiny_models,
        task_dir,
        tmp_path / "run",
        "nsga2",
        tasks={"t": {"data": str(task_dir), "limit": 4}, "u": {"data": str(task_dir), "limit": 2}},
        objectives=[{"task": "t"}, {"task": "u", "direction": "minimize"}],
    )
    study = run_search(data)
    config = config_from_dict(data)
    assert "Pareto front (" in status_text(config)
    front = pareto_front(study)
    assert set(held_out_scores(study)) == {t.number for t in front} | {best_trial(config, front).number}


def test_the_best_candidate_is_scored_on_the_held_out_split_after_the_search(tiny_models, task_dir, tmp_path):
    data = config_data(tiny_models, task_dir, tmp_path / "run")
    study = run_search(data)
    config = config_from_dict(data)
    best = best_trial(config, study.get_trials(states=(TrialState.COMPLETE,)))
    recorded = held_out_scores(study)
    assert list(recorded) == [best.number] and 0.0 <= recorded[best.number]["t"]["exact_match"] <= 1.0
    scorer = CandidateScorer(config)
    recipe = recipe_from_dict(yaml.safe_load(best.user_attrs["recipe"]))
    assert recorded[best.number] == scorer.score(recipe, "held_out")
    assert scorer.score(recipe, "search")["t"]["exact_match"] == best.values[0]
    assert all(not key.startswith("held_out") for t in study.get_trials() for key in t.user_attrs)


def test_status_held_out_scores_the_best_of_a_run_in_progress(
    tiny_models, task_dir, tmp_path, monkeypatch, capsys
):
    data = config_data(tiny_models, task_dir, tmp_path / "run")
    monkeypatch.setattr("evomerge.search.loop.record_held_out", lambda *args: {})
    study = run_search(data)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(data))
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "held-out scores: not computed yet" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "run"), "--held-out"]) == 0
    best = best_trial(config_from_dict(data), study.get_trials(states=(TrialState.COMPLETE,)))
    held_out = optuna.load_study(study_name="evomerge", storage=config_from_dict(data).storage_url).user_attrs
    expected = held_out[f"held_out.{best.number}"]["t"]["exact_match"]
    best_line = f"best: trial {best.number}: t={best.values[0]:.4f} (held-out {expected:.4f})"
    assert best_line in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"optimizer": "cma-es"},
            "optimizer.name: unknown optimizer 'cma-es' (did you mean 'cmaes'?); available: tpe,",
        ),
        (
            {"genome": [{"param": "weight", "low": 1.0, "high": 0.5}]},
            "genome.0: bounds of 'weight': low 1.0 > high 0.5",
        ),
        ({"objectives": [{"task": "missing"}]}, "objective names task 'missing', which is not under 'tasks'"),
        (
            {"objectives": [{"task": "t"}, {"task": "t"}], "optimizer": "optuna-cmaes"},
            "optimizes one objective but 2 are listed",
        ),
        ({"budget": {"evaluations": 0}}, "budget.evaluations: Input should be greater than or equal to 1"),
        (
            {"storage": "postgresql://nobody@127.0.0.1:1/none"},
            "cannot open the storage 'postgresql://nobody@127.0.0.1:1/none'",
        ),
        ({"tasks": {"t": {"data": "/nowhere"}}}, "task 't': data directory '/nowhere' does not exist"),
    ],
)
def test_bad_configs_get_one_line_and_exit_2_before_anything_is_written(
    change, message, tiny_models, task_dir, tmp_path, capsys
):
    data = config_data(tiny_models, task_dir, tmp_path / "run", **change)
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "run").exists()


def test_a_run_directory_of_another_config_is_refused_and_left_intact(
    tiny_models, task_dir, tmp_path, capsys
):
    data = config_data(tiny_models, task_dir, tmp_path / "run", evaluations=3)
    config = write_config(tmp_path / "c.yaml", data)
    assert main(["run", str(config)]) == 0
    other = config_data(tiny_models, task_dir, tmp_path / "run", evaluations=3, seed=5, optimizer="tpe")
    capsys.readouterr()
    assert main(["run", str(write_config(tmp_path / "other.yaml", other))]) == 2
    assert "changed: optimizer.name, seed" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "progress: 3/3" in capsys.readouterr().out


def test_resume_extends_the_budget_from_the_run_directory_alone(tiny_models, task_dir, tmp_path, capsys):
    data = config_data(tiny_models, task_dir, tmp_path / "run", evaluations=3)
    config = write_config(tmp_path / "c.yaml", data)
    assert main(["run", str(config), "--budget", "2"]) == 0
    assert main(["resume", str(tmp_path / "run"), "--budget", "5"]) == 0
    assert "progress: 5/5" in capsys.readouterr().out
    assert main(["resume", str(tmp_path / "nowhere")]) == 2


def test_user_seed_recipes_are_evaluated_right_after_the_uniform_start(tiny_models, task_dir, tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        yaml.safe_dump(
            {
                "method": "ties",
                "base": str(tiny_models["base"]),
                "sources": [
                    {"model": str(tiny_models["a"]), "weight": [0.5, 0.25], "density": 0.4},
                    {"model": str(tiny_models["b"]), "weight": 1.25, "density": 0.6},
                ],
            }
        )
    )
    study = run_search(config_data(tiny_models, task_dir, tmp_path / "run", seed_recipes=[str(seed)]))
    second = study.get_trials()[1]
    assert second.user_attrs["seed_index"] == 1
    assert second.params["sources.0.weight@layer1"] == 0.25
    assert second.params["sources.1.density@global"] == 0.6


class CandidateClock:
    """The search loop's clock, moved only by scoring a candidate, which takes 10 s: a wall-clock budget
    tested without waiting for real time, and without a result that depends on the machine's speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic


def test_a_wall_clock_budget_stops_the_run_and_a_resume_counts_the_time_already_spent(
    tiny_models, task_dir, tmp_path, monkeypatch
):
    from evomerge.evaluate.tasks import Evaluator
    from evomerge.search import loop

    clock, score = CandidateClock(), Evaluator.score

    def ten_seconds(self, model, split="search"):
        clock.now += 10.0
        return score(self, model, split)

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(Evaluator, "score", ten_seconds)
    for limit, candidates in ((35, 4), (65, 7)):  # started before 30 s (60 s) have passed: 4 (7) candidates
        data = config_data(tiny_models, task_dir, tmp_path / "run", budget={"wall_clock_seconds": limit})
        assert [t.state for t in run_search(data).get_trials()] == [TrialState.COMPLETE] * candidates


def test_scalarizations_by_hand():
    from evomerge.config import Objective
    from evomerge.search.optimizers.scalarization import scalarize

    objectives = [
        Objective(task="a", direction="maximize", weight=2.0),
        Objective(task="b", direction="minimize"),
    ]
    # losses: -0.5 (maximized) and 0.25 (minimized)
    assert scalarize([0.5, 0.25], objectives, "weighted_sum", ideal=[]) == 2.0 * -0.5 + 0.25
    # chebyshev around the ideal losses (-0.75, 0.0): max(2 * 0.25, 1 * 0.25)
    assert scalarize([0.5, 0.25], objectives, "chebyshev", ideal=[-0.75, 0.0]) == 0.5
