"""The lm-eval adapter, offline with local task YAMLs over the zoo's data: parity with the built-in scorer,
and a search whose objective is an lm-eval task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from pydantic import TypeAdapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.config import config_from_dict
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Evaluator, load_task
from evomerge.search.loop import Search
from evomerge.zoo import read_split

SPLITS = ("search", "held_out")


def near_miss(answer: str) -> str:
    return str((int(answer[0]) + 1) % 10) + answer[1:]


@pytest.fixture(scope="module")
def task_files(zoo_dir, tmp_path_factory) -> Path:
    """Zoo addition data as a generate task and a choice task, with lm-eval YAMLs for both splits."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for split in SPLITS:
        rows = read_split(zoo_dir, "add", split)[:60]
        (root / "gen").mkdir(exist_ok=True)
        (root / "gen" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "choice").mkdir(exist_ok=True)
        choice = [{"prompt": r["prompt"], "options": [near_miss(r["answer"]), r["answer"]], "label": 1} for r in rows]
        (root / "choice" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice))
        common = {
            "dataset_path": "json", "test_split": "test", "doc_to_text": "{{prompt}}",
        }
        (root / "yaml").mkdir(exist_ok=True)
        (root / "yaml" / f"zoo_add_{split}.yaml").write_text(yaml.safe_dump({
            "task": f"zoo_add_{split}", **common,
            "dataset_kwargs": {"data_files": {"test": str(root / "gen" / f"{split}.jsonl")}},
            "output_type": "generate_until", "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": 8},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }))
        (root / "yaml" / f"zoo_choice_{split}.yaml").write_text(yaml.safe_dump({
            "task": f"zoo_choice_{split}", **common,
            "dataset_kwargs": {"data_files": {"test": str(root / "choice" / f"{split}.jsonl")}},
            "output_type": "multiple_choice", "doc_to_choice": "options", "doc_to_target": "label",
            "target_delimiter": "", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }))
    return root


def spec(**fields) -> TaskSpec:
    return TypeAdapter(TaskSpec).validate_python(fields)


@pytest.mark.parametrize("model_name", ["base", "expert_add"])
def test_built_in_scorer_and_lm_eval_agree_on_the_same_task_and_model(model_name, zoo_dir, task_files):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / model_name)
    include = task_files / "yaml"
    evaluator = Evaluator([
        load_task("gen", spec(data=str(task_files / "gen"))),
        load_task("choice", spec(kind="choice", data=str(task_files / "choice"), choices="options", target="label", delimiter="")),
        load_task("lm_gen", spec(kind="lm_eval", task="zoo_add_search", held_out_task="zoo_add_held_out", include_path=str(include))),
        load_task("lm_choice", spec(kind="lm_eval", task="zoo_choice_search", held_out_task="zoo_choice_held_out", include_path=str(include))),
    ], tokenizer)
    for split in SPLITS:
        scores = evaluator.score(model, split)
        assert scores["lm_gen"]["exact_match"] == scores["gen"]["exact_match"]
        assert scores["lm_choice"]["acc"] == scores["choice"]["acc"]
        assert scores["lm_choice"]["acc_norm"] == scores["choice"]["acc_norm"]
    # the scores are not trivially equal: the expert adds, the base mostly does not
    assert 0.0 < scores["gen"]["exact_match"] and (model_name == "base") == (scores["gen"]["exact_match"] < 0.5)


def test_a_search_on_the_zoo_with_an_lm_eval_objective(zoo_dir, task_files, tmp_path):
    config = config_from_dict({
        "recipe": {"method": "task_arithmetic", "base": "zoo:base", "sources": [{"model": "zoo:expert_add"}]},
        "genome": [{"param": "weight", "low": 0.0, "high": 1.2}],
        "tasks": {"add": {"kind": "lm_eval", "task": "zoo_add_search", "held_out_task": "zoo_add_held_out",
                          "include_path": str(task_files / "yaml"), "limit": 30}},
        "objectives": [{"task": "add", "metric": "exact_match"}],
        "optimizer": {"name": "random"},
        "budget": {"evaluations": 3},
        "run_dir": str(tmp_path / "run"),
    })
    study = Search(config, progress=False).run()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].values[0] >= 0.9  # the template: the expert's full task vector
    assert len({t.values[0] for t in trials}) > 1
