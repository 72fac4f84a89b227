"""The evaluator on the zoo's real models: the three task kinds, batching, splits, and bad task specs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main
from evomerge.errors import UsageError
from evomerge.evaluate.bounds import optimistic_scores
from evomerge.evaluate.generate import greedy_completions
from evomerge.evaluate.loglik import continuation_logprobs
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Evaluator, Partial, load_task
from evomerge.zoo.skills import read_split


def spec(**fields) -> TaskSpec:
    return TypeAdapter(TaskSpec).validate_python(fields)


@pytest.fixture(scope="module")
def zoo(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    models = {name: AutoModelForCausalLM.from_pretrained(zoo_dir / name) for name in ("base", "expert_add")}
    return zoo_dir, tokenizer, models


SPLIT_NAMES = ("search", "held_out")


def write_task(directory: Path, rows: dict[str, list[dict]], suffix: str = ".jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, examples in rows.items():
        (directory / f"{split}{suffix}").write_text("".join(json.dumps(row) + "\n" for row in examples))
    return directory


def add_rows(zoo_dir: Path, split: str, n: int) -> list[dict]:
    return read_split(zoo_dir, "add", split)[:n]


@pytest.mark.slow
def test_batched_greedy_generation_equals_one_prompt_at_a_time(zoo):
    zoo_dir, tokenizer, models = zoo
    prompts = [tokenizer(row["prompt"])["input_ids"] for row in add_rows(zoo_dir, "search", 12)]
    prompts[3] = tokenizer("add 1+2=")["input_ids"]  # a shorter prompt: left padding must not change it
    batched = greedy_completions(models["expert_add"], tokenizer, prompts, 6, batch_size=12)
    single = [greedy_completions(models["expert_add"], tokenizer, [p], 6, batch_size=1)[0] for p in prompts]
    assert batched == single and sum(c != "" for c in batched) == 12


@pytest.mark.slow
def test_stop_strings_cut_each_completion_before_the_stop(zoo):
    zoo_dir, tokenizer, models = zoo
    prompts = [tokenizer(row["prompt"])["input_ids"] for row in add_rows(zoo_dir, "search", 16)]
    whole = greedy_completions(models["expert_add"], tokenizer, prompts, 6)
    cut = greedy_completions(models["expert_add"], tokenizer, prompts, 6, stop=["0"])
    assert cut == [text.split("0")[0] for text in whole] and any("0" in text for text in whole)


@pytest.mark.slow
def test_generate_task_exact_and_numeric_match_with_extraction(zoo, tmp_path):
    zoo_dir, tokenizer, models = zoo
    rows = {split: add_rows(zoo_dir, split, 40) for split in SPLIT_NAMES}
    plain = write_task(tmp_path / "plain", rows)
    # the gold answer now sits in a sentence; the regex takes the number back out of it
    wrapped = write_task(
        tmp_path / "wrapped",
        {
            split: [{"question": r["prompt"], "solution": f"the answer is {r['answer']}."} for r in examples]
            for split, examples in rows.items()
        },
    )
    exact = Evaluator([load_task("a", spec(data=str(plain)))], tokenizer)
    numeric = Evaluator(
        [
            load_task(
                "a",
                spec(
                    data=str(wrapped),
                    template="{question}",
                    target="solution",
                    extract=r"(\d+)",
                    match="numeric",
                    max_new_tokens=5,
                ),
            )
        ],
        tokenizer,
    )
    for model in models.values():
        by_hand = (
            sum(
                greedy_completions(model, tokenizer, [tokenizer(r["prompt"])["input_ids"]], 5)[0]
                == r["answer"]
                for r in rows["search"]
            )
            / 40
        )
        assert exact.score(model)["a"]["exact_match"] == by_hand
        assert numeric.score(model)["a"]["exact_match"] == pytest.approx(by_hand, abs=0.051)
    expert, base = (exact.score(models[name])["a"]["exact_match"] for name in ("expert_add", "base"))
    assert expert > base + 0.5


@pytest.mark.slow
def test_batched_log_likelihood_equals_a_plain_forward_per_request(zoo):
    _, tokenizer, models = zoo
    texts = [("add 41+54=", "590"), ("add 1+2=", "30"), ("reverse abcd=", "dcba")]
    requests = [
        (tokenizer(c)["input_ids"], tokenizer(a, add_special_tokens=False)["input_ids"]) for c, a in texts
    ]
    batched = continuation_logprobs(models["expert_add"], requests, batch_size=3)
    for (context, continuation), value in zip(requests, batched):
        ids = torch.tensor([context + continuation])
        logits = models["expert_add"](ids).logits[0].log_softmax(-1)
        by_hand = sum(logits[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))
        assert value == pytest.approx(by_hand, abs=1e-4)


def near_miss(answer: str) -> str:
    """The answer with its first digit off by one: a distractor only a model that adds well rejects."""
    return str((int(answer[0]) + 1) % 10) + answer[1:]


@pytest.mark.slow
def test_choice_task_accuracy_and_length_normalized_accuracy(zoo, tmp_path):
    zoo_dir, tokenizer, models = zoo
    rows = {
        split: [
            {"prompt": r["prompt"], "options": [near_miss(r["answer"]), r["answer"]], "label": 1}
            for r in add_rows(zoo_dir, split, 30)
        ]
        for split in SPLIT_NAMES
    }
    directory = write_task(tmp_path / "choice", rows)
    task = load_task(
        "c", spec(kind="choice", data=str(directory), choices="options", target="label", delimiter="")
    )
    evaluator = Evaluator([task], tokenizer)
    expert, base = evaluator.score(models["expert_add"])["c"], evaluator.score(models["base"])["c"]
    assert expert["acc"] >= 0.9 and expert["acc"] > base["acc"]
    # by hand for the first example: the likelier option (per character for acc_norm)
    first = rows["search"][0]
    ll = continuation_logprobs(models["base"], task.requests["search"][0])
    partial = evaluator.score_progressively(
        models["base"], "search", chunk_size=1, keep_going=lambda p: False
    )
    assert partial.values["c"]["acc"] == [float(ll.index(max(ll)) == first["label"])]
    normalized = [v / len(o) for v, o in zip(ll, first["options"])]
    assert partial.values["c"]["acc_norm"] == [float(normalized.index(max(normalized)) == first["label"])]


@pytest.mark.slow
def test_perplexity_task_is_the_mean_per_token_nll_and_favours_the_expert_on_its_skill(zoo, tmp_path):
    zoo_dir, tokenizer, models = zoo
    rows = {
        split: [{"text": r["prompt"] + r["answer"]} for r in add_rows(zoo_dir, split, 20)]
        for split in SPLIT_NAMES
    }
    task = load_task("p", spec(kind="perplexity", data=str(write_task(tmp_path / "p", rows))))
    evaluator = Evaluator([task], tokenizer)
    expert, base = (evaluator.score(models[name])["p"]["nll"] for name in ("expert_add", "base"))
    assert 0 < expert < base
    by_hand = []
    for row in rows["search"]:
        ids = torch.tensor([tokenizer(row["text"])["input_ids"]])
        logits = models["expert_add"](ids).logits[0, :-1]
        by_hand.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    assert expert == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4)


@pytest.mark.slow
def test_other_file_formats_and_the_seeded_subsample(zoo, tmp_path):
    zoo_dir, tokenizer, _ = zoo
    rows = {split: add_rows(zoo_dir, split, 50) for split in SPLIT_NAMES}
    csv = tmp_path / "csv"
    csv.mkdir()
    for split, examples in rows.items():
        lines = "".join(f"{r['prompt']},{r['answer']}\n" for r in examples)
        (csv / f"{split}.csv").write_text("prompt,answer\n" + lines)
    first = load_task("a", spec(data=str(csv), limit=10, sample_seed=3))
    again = load_task("a", spec(data=str(write_task(tmp_path / "j", rows)), limit=10, sample_seed=3))
    other = load_task("a", spec(data=str(csv), limit=10, sample_seed=4))
    assert [r["prompt"] for r in first.rows["search"]] == [r["prompt"] for r in again.rows["search"]]
    assert [r["prompt"] for r in first.rows["search"]] != [r["prompt"] for r in other.rows["search"]]
    assert {r["prompt"] for r in first.rows["search"]} <= {r["prompt"] for r in rows["search"]}
    assert all(isinstance(r["answer"], (str, int)) for r in first.rows["held_out"])


def test_optimistic_bounds_by_hand():
    partial = Partial({"a": 10, "b": 4}, values={"a": {"exact_match": [0.0] * 5}})
    z = 1.6448536269514722  # one-sided 95%
    wilson = (z * z / 10 + z * math.sqrt(z * z / 100)) / (1 + z * z / 5)  # Wilson upper bound of 0 out of 5
    bounds = optimistic_scores(partial, {"a": {"exact_match": True}, "b": {"nll": False}}, 0.95)
    assert bounds["a"]["exact_match"] == pytest.approx(5 * wilson / 10)
    assert bounds["b"]["nll"] == 0.0  # not scored yet: the best a negative log-likelihood can be


BAD_TASKS = [
    ({"template": "{question}"}, "the search examples have no field 'question' (they have: prompt, answer)"),
    ({"target": "solution"}, "have no field 'solution'"),
    ({"limit": 500}, "the search split has 40 examples, fewer than limit 500"),
    (
        {"extract": r"answer: (\d+)"},
        "the extraction regex 'answer: (\\\\d+)' matches none of the gold answers",
    ),
    ({"extract": "("}, "is not a valid regex"),
    (
        {"kind": "choice", "options": ["a", "b"], "target": "answer"},
        "target '590' is neither an option nor an option's index",
    ),
    (
        {"kind": "lm_eval", "task": "zoo_ad", "held_out_task": "zoo_add", "data": None},
        "lm-eval has no task 'zoo_ad'",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), BAD_TASKS)
def test_bad_task_specs_get_one_line_and_exit_2_before_any_candidate(change, message, zoo, tmp_path, capsys):
    zoo_dir = zoo[0]
    data = write_task(tmp_path / "t", {split: add_rows(zoo_dir, split, 40) for split in SPLIT_NAMES})
    task = {"data": str(data), **change}
    task = {key: value for key, value in task.items() if value is not None}
    _expect_run_error(zoo_dir, tmp_path, {"t": task}, message, capsys)


@pytest.mark.slow
def test_overlapping_empty_and_missing_splits_are_refused(zoo, tmp_path, capsys):
    zoo_dir = zoo[0]
    rows = add_rows(zoo_dir, "search", 40)
    held_out = rows[30:] + add_rows(zoo_dir, "held_out", 5)
    overlap = write_task(tmp_path / "o", {"search": rows, "held_out": held_out})
    message = "10 held-out examples are also in the search split"
    _expect_run_error(zoo_dir, tmp_path, {"t": {"data": str(overlap)}}, message, capsys)
    empty = write_task(tmp_path / "e", {"search": rows, "held_out": []})
    _expect_run_error(zoo_dir, tmp_path, {"t": {"data": str(empty)}}, "the held_out split is empty", capsys)
    missing = write_task(tmp_path / "m", {"search": rows})
    message = "no file for split 'held_out'"
    _expect_run_error(zoo_dir, tmp_path, {"t": {"data": str(missing)}}, message, capsys)


def _expect_run_error(zoo_dir: Path, tmp_path: Path, tasks: dict, message: str, capsys) -> None:
    import yaml

    config = {
        "recipe": {
            "method": "task_arithmetic",
            "base": str(zoo_dir / "base"),
            "sources": [{"model": str(zoo_dir / "expert_add")}],
        },
        "genome": [{"param": "weight", "low": 0.0, "high": 1.0}],
        "tasks": tasks,
        "objectives": [
            {"task": "t", "metric": "acc"}
            if tasks["t"].get("kind") == "choice"
            else {"task": "t", "metric": "exact_match"}
        ],
        "budget": {"evaluations": 2},
        "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "run").exists()


def test_an_unknown_metric_of_a_task_kind_is_refused():
    from evomerge.config import config_from_dict

    with pytest.raises(UsageError, match="a generate task has no metric 'acc' \\(it has: exact_match\\)"):
        config_from_dict(
            {
                "recipe": {"method": "linear", "sources": [{"model": "a"}, {"model": "b"}]},
                "genome": [{"param": "weight", "low": 0.0, "high": 1.0}],
                "tasks": {"t": {"data": "zoo:add"}},
                "objectives": [{"task": "t", "metric": "acc"}],
                "budget": {"evaluations": 2},
            }
        )
