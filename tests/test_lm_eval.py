"""The lm-eval adapter, offline with local task YAMLs over the zoo's data: parity with the built-in scorer,
and a search whose objective is an lm-eval task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from pydantic import TypeAdapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.config import config_from_dict
from evomerge.errors import UsageError
from evomerge.evaluate.lm_eval_task import lm_eval_task_config
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Evaluator, load_task
from evomerge.search.loop import Search
from evomerge.zoo.skills import read_split

pytestmark = pytest.mark.slow  # every test reads the zoo
SPLITS = ("search", "held_out")


def near_miss(answer: str) -> str:
    return str((int(answer[0]) + 1) % 10) + answer[1:]


GENERATE = {"data": "gen", "max_new_tokens": 8}
CHOICE = {"kind": "choice", "data": "choice", "choices": "options", "target": "label", "delimiter": ""}


@pytest.fixture(scope="module")
def task_files(zoo_dir, tmp_path_factory) -> Path:
    """Zoo addition data as a generate task and a choice task, with lm-eval YAMLs for both splits."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for directory in ("gen", "choice", "yaml"):
        (root / directory).mkdir()
    for split in SPLITS:
        rows = read_split(zoo_dir, "add", split)[:60]
        choice = [
            {"prompt": r["prompt"], "options": [near_miss(r["answer"]), r["answer"]], "label": 1}
            for r in rows
        ]
        for directory, examples, fields in (("gen", rows, GENERATE), ("choice", choice, CHOICE)):
            data_file = root / directory / f"{split}.jsonl"
            data_file.write_text("".join(json.dumps(r) + "\n" for r in examples))
            task = f"zoo_{directory}_{split}"
            config = lm_eval_task_config(task, data_file, spec(**{**fields, "data": str(root / directory)}))
            (root / "yaml" / f"{task}.yaml").write_text(yaml.safe_dump(config))
    return root


def spec(**fields) -> TaskSpec:
    return TypeAdapter(TaskSpec).validate_python(fields)


@pytest.mark.parametrize("model_name", ["base", "expert_add"])
def test_built_in_scorer_and_lm_eval_agree_on_the_same_task_and_model(model_name, zoo_dir, task_files):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / model_name)
    include = task_files / "yaml"
    evaluator = Evaluator(
        [
            load_task("gen", spec(**{**GENERATE, "data": str(task_files / "gen")})),
            load_task("choice", spec(**{**CHOICE, "data": str(task_files / "choice")})),
            *(
                load_task(
                    f"lm_{kind}",
                    spec(
                        kind="lm_eval",
                        task=f"zoo_{kind}_search",
                        held_out_task=f"zoo_{kind}_held_out",
                        include_path=str(include),
                    ),
                )
                for kind in ("gen", "choice")
            ),
        ],
        tokenizer,
    )
    for split in SPLITS:
        scores = evaluator.score(model, split)
        assert scores["lm_gen"]["exact_match"] == scores["gen"]["exact_match"]
        assert scores["lm_choice"]["acc"] == scores["choice"]["acc"]
        assert scores["lm_choice"]["acc_norm"] == scores["choice"]["acc_norm"]
    # the scores are not trivially equal: the expert adds, the base mostly does not
    accuracy = scores["gen"]["exact_match"]
    assert 0.0 < accuracy and (model_name == "base") == (accuracy < 0.5)


def test_a_search_on_the_zoo_with_an_lm_eval_objective(zoo_dir, task_files, tmp_path):
    config = config_from_dict(
        {
            "recipe": {
                "method": "task_arithmetic",
                "base": "zoo:base",
                "sources": [{"model": "zoo:expert_add"}],
            },
            "genome": [{"param": "weight", "low": 0.0, "high": 1.2}],
            "tasks": {
                "add": {
                    "kind": "lm_eval",
                    "task": "zoo_gen_search",
                    "held_out_task": "zoo_gen_held_out",
                    "include_path": str(task_files / "yaml"),
                    "limit": 30,
                }
            },
            "objectives": [{"task": "add", "metric": "exact_match"}],
            "optimizer": {"name": "random"},
            "budget": {"evaluations": 3},
            "run_dir": str(tmp_path / "run"),
        }
    )
    study = Search(config, progress=False).run()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].values[0] >= 0.9  # the template: the expert's full task vector
    assert len({t.values[0] for t in trials}) > 1


#: Roles as one letter in brackets (the zoo tokenizer has no chat template and no newline).
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'][0] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[a]{% endif %}"
)
INSTRUCT = {"chat_template": True, "system_prompt": "add", "num_fewshot": 1}


def test_lm_eval_prompts_with_the_chat_template_system_prompt_and_shots_as_the_built_in_scorer(
    zoo_dir, task_files, tmp_path
):
    """A fewshot split of one example makes lm-eval's shot (drawn per document) the built-in one, so both
    scorers show the model the same tokens only if lm-eval got all three settings; a tokenizer without a
    chat template is refused."""
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    tokenizer.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "expert_add")
    data = tmp_path / "choice"
    shutil.copytree(task_files / "choice", data)
    shot = read_split(zoo_dir, "add", "train")[0]
    shot = {"prompt": shot["prompt"], "options": [near_miss(shot["answer"]), shot["answer"]], "label": 1}
    (data / "train.jsonl").write_text(json.dumps(shot) + "\n")
    choice = {**CHOICE, "data": str(data)}
    for split in SPLITS:
        config = lm_eval_task_config(f"chat_{split}", data / f"{split}.jsonl", spec(**choice))
        config["dataset_kwargs"]["data_files"]["train"] = str(data / "train.jsonl")
        (tmp_path / f"chat_{split}.yaml").write_text(yaml.safe_dump({**config, "training_split": "train"}))
    lm_eval = {"kind": "lm_eval", "task": "chat_search", "held_out_task": "chat_held_out"}
    evaluator = Evaluator(
        [
            load_task("plain", spec(**choice)),
            load_task("chat", spec(**choice, **INSTRUCT)),
            load_task("lm_chat", spec(**lm_eval, include_path=str(tmp_path), **INSTRUCT)),
        ],
        tokenizer,
    )
    for split in SPLITS:
        scores = evaluator.score(model, split)
        assert scores["lm_chat"] == scores["chat"] != scores["plain"]
    message = "task 'lm_chat': chat_template is true but the tokenizer of '.*' has no chat template"
    with pytest.raises(UsageError, match=message):
        Evaluator(evaluator.tasks[2:], AutoTokenizer.from_pretrained(zoo_dir / "base"))


def test_one_lm_eval_task_is_split_into_search_and_held_out_by_a_seeded_hash(zoo_dir, task_files, tmp_path):
    rows = [
        json.loads(line)
        for split in SPLITS
        for line in (task_files / "gen" / f"{split}.jsonl").read_text().splitlines()
    ]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    generate = spec(**{**GENERATE, "data": str(task_files / "gen")})
    config = lm_eval_task_config("zoo_gen_all", tmp_path / "all.jsonl", generate)
    (tmp_path / "zoo_gen_all.yaml").write_text(yaml.safe_dump(config))

    def split_task(**fields):
        return load_task(
            "add", spec(kind="lm_eval", task="zoo_gen_all", include_path=str(tmp_path), **fields)
        )

    task = split_task(held_out_fraction=0.3)
    sizes = {split: task.size(split) for split in SPLITS}
    assert sum(sizes.values()) == len(rows) == 120 and 20 <= sizes["held_out"] <= 52
    texts = {split: {json.dumps(doc, sort_keys=True) for doc in task.docs[split]} for split in SPLITS}
    assert not texts["search"] & texts["held_out"]
    assert split_task(held_out_fraction=0.3).indices == task.indices  # the same split every time
    assert split_task(held_out_fraction=0.3, split_seed=1).indices != task.indices
    assert split_task(held_out_fraction=0.3, limit=10).size("held_out") == 10

    # what each split scores is its own documents: the built-in scorer on the same rows agrees
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    for split in SPLITS:
        (builtin / f"{split}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in task.docs[split]))
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    evaluator = Evaluator([task, load_task("b", spec(**{**GENERATE, "data": str(builtin)}))], tokenizer)
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "expert_add")
    for split in SPLITS:
        scores = evaluator.score(model, split)
        assert scores["add"]["exact_match"] == scores["b"]["exact_match"] > 0.5

    (tmp_path / "one.jsonl").write_text(json.dumps(rows[0]) + "\n")
    config = lm_eval_task_config("zoo_gen_one", tmp_path / "one.jsonl", generate)
    (tmp_path / "zoo_gen_one.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match="lm-eval task 'zoo_gen_one' has 1 documents, too few to split"):
        load_task("add", spec(kind="lm_eval", task="zoo_gen_one", include_path=str(tmp_path)))
