"""Prompted tasks as an instruct model needs them: the chat template, a system prompt and k-shot examples.

The tiny models' tokenizer is character-level, so the token sequence a prompt should become is written here
character by character; a copy of it gets a small chat template (the zoo's own has none).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter
from runs import config_data, evomerge_result, write_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main
from evomerge.errors import UsageError
from evomerge.evaluate.specs import TaskSpec
from evomerge.evaluate.tasks import Evaluator, load_task

#: Roles as one letter in brackets: "[s]be brief[u]n3=[a]3[u]n4=[a]".
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'][0] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[a]{% endif %}"
)
SPLITS = {"search": "n", "held_out": "m", "train": "t"}


def spec(**fields) -> TaskSpec:
    return TypeAdapter(TaskSpec).validate_python(fields)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Ten examples per split, each prompt one letter, a digit and '=' (n3= -> 3), with two options."""
    directory = tmp_path_factory.mktemp("instruct")
    for split, letter in SPLITS.items():
        rows = [
            {"prompt": f"{letter}{i}=", "answer": str(i), "options": [str(i), str((i + 1) % 10)], "label": 0}
            for i in range(10)
        ]
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


@pytest.fixture(scope="module")
def chat_model(tiny_models, tmp_path_factory) -> Path:
    """A tiny model whose tokenizer has a chat template."""
    directory = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_models["a"], directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(chat_model):
    return AutoTokenizer.from_pretrained(chat_model)


def ids(tokenizer, text: str, bos: bool = True) -> list[int]:
    """The character tokenizer's ids of `text`, one per character, after one BOS."""
    return [tokenizer.bos_token_id] * bos + tokenizer.convert_tokens_to_ids(list(text))


def prepared(tokenizer, name: str = "t", **fields):
    task = load_task(name, spec(**fields))
    Evaluator([task], tokenizer)
    return task


def shot_text(task, delimiter: str, between: str) -> str:
    """A task's shots as plain text (each example's answer is also its right option)."""
    return "".join(f"{row['prompt']}{delimiter}{row['answer']}{between}" for row in task.shots)


def chat_shots(task) -> str:
    return "".join(f"[u]{row['prompt']}[a]{row['answer']}" for row in task.shots)


def by_prompt(task, split: str = "search") -> dict:
    """What the task prepared for each example (token ids, or a choice's requests), by its prompt."""
    prepared = task.prompts if hasattr(task, "prompts") else task.requests
    return {row["prompt"]: value for row, value in zip(task.rows[split], prepared[split])}


def test_generate_prompts_with_and_without_the_chat_template(tokenizer, data):
    base = {"data": str(data), "delimiter": "", "fewshot_delimiter": " | "}
    assert by_prompt(prepared(tokenizer, **base))["n3="] == ids(tokenizer, "n3=")
    system = prepared(tokenizer, **base, system_prompt="be brief")
    assert by_prompt(system)["n3="] == ids(tokenizer, "be brief | n3=")
    shots = prepared(tokenizer, **base, system_prompt="be brief", num_fewshot=2)
    head = "be brief | " + shot_text(shots, "", " | ")
    assert len(shots.shots) == 2 and head.count("=") == 2
    assert by_prompt(shots) == {f"n{i}=": ids(tokenizer, head + f"n{i}=") for i in range(10)}
    chat = prepared(tokenizer, **base, chat_template=True)
    assert by_prompt(chat)["n3="] == ids(tokenizer, "[u]n3=[a]")
    chat_all = prepared(tokenizer, **base, chat_template=True, system_prompt="be brief", num_fewshot=2)
    head = "[s]be brief" + chat_shots(chat_all)
    assert by_prompt(chat_all)["n3="] == ids(tokenizer, head + "[u]n3=[a]")
    assert by_prompt(chat_all, "held_out")["m3="] == ids(tokenizer, head + "[u]m3=[a]")


def test_a_chat_template_that_writes_the_bos_token_gets_no_second_one(tokenizer, data):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    task = prepared(tokenizer, data=str(data), chat_template=True)
    assert by_prompt(task)["n3="] == ids(tokenizer, "[u]n3=[a]")


def test_choice_requests_continue_the_whole_prompt(tokenizer, data):
    base = {"kind": "choice", "data": str(data), "choices": "options", "target": "label"}
    plain = prepared(tokenizer, **base, system_prompt="be brief", num_fewshot=2, fewshot_delimiter=" | ")
    context = ids(tokenizer, "be brief | " + shot_text(plain, " ", " | ") + "n3=")
    assert by_prompt(plain)["n3="] == [
        (context, ids(tokenizer, " 3", bos=False)),
        (context, ids(tokenizer, " 4", bos=False)),
    ]
    # with the chat template an option follows the assistant turn's head, with no delimiter
    chat = prepared(tokenizer, **base, chat_template=True, system_prompt="be brief", num_fewshot=2)
    context = ids(tokenizer, "[s]be brief" + chat_shots(chat) + "[u]n3=[a]")
    assert by_prompt(chat)["n3="] == [
        (context, ids(tokenizer, "3", bos=False)),
        (context, ids(tokenizer, "4", bos=False)),
    ]


def test_shots_come_from_the_fewshot_split_the_same_for_a_seed(tokenizer, data, tmp_path):
    def shots(seed: int, directory: Path = data) -> list[str]:
        task = load_task("t", spec(data=str(directory), num_fewshot=3, sample_seed=seed))
        return [row["prompt"] for row in task.shots]

    train = {f"t{i}=" for i in range(10)}
    assert shots(0) == shots(0) and set(shots(0)) <= train and set(shots(1)) <= train
    assert shots(0) != shots(1)
    # a fewshot split holding the search examples: whatever is drawn is one of them, and is refused
    leaky = tmp_path / "leaky"
    shutil.copytree(data, leaky)
    shutil.copy(data / "search.jsonl", leaky / "train.jsonl")
    with pytest.raises(UsageError, match="a k-shot example of the train split is also a search example"):
        shots(0, leaky)


def by_hand_logprob(model, context: list[int], continuation: list[int]) -> float:
    logits = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
    return sum(logits[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))


def test_choice_scores_equal_a_by_hand_scoring_of_the_formatted_strings(tokenizer, chat_model, data):
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    fields = {"kind": "choice", "data": str(data), "choices": "options", "target": "label"}
    task = load_task("c", spec(**fields, chat_template=True, system_prompt="be brief", num_fewshot=2))
    scores = Evaluator([task], tokenizer).score(model)["c"]
    acc, acc_norm = [], []
    for i in range(10):
        row = next(r for r in task.rows["search"] if r["prompt"] == f"n{i}=")
        context = ids(tokenizer, "[s]be brief" + chat_shots(task) + f"[u]n{i}=[a]")
        values = [by_hand_logprob(model, context, ids(tokenizer, o, bos=False)) for o in row["options"]]
        acc.append(values[0] > values[1])
        acc_norm.append(values[0] / len(row["options"][0]) > values[1] / len(row["options"][1]))
    assert scores == {"acc": sum(acc) / 10, "acc_norm": sum(acc_norm) / 10}


def test_generate_scores_equal_a_by_hand_greedy_decoding_of_the_formatted_strings(
    tokenizer, chat_model, data, tmp_path
):
    """The gold answer of every other example is what the model says to the prompt formatted by hand, so
    the task scores 0.5 only if it shows the model exactly that prompt."""
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    fields = {"chat_template": True, "system_prompt": "be brief", "num_fewshot": 2, "max_new_tokens": 3}
    shots = chat_shots(load_task("g", spec(data=str(data), **fields)))
    rows = []
    for i in range(10):
        prompt = torch.tensor([ids(tokenizer, f"[s]be brief{shots}[u]n{i}=[a]")])
        output = model.generate(
            prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        said = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
        rows.append({"prompt": f"n{i}=", "answer": said if i % 2 == 0 else "no such answer"})
    directory = tmp_path / "said"
    shutil.copytree(data, directory)
    (directory / "search.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = load_task("g", spec(data=str(directory), **fields))
    assert chat_shots(task) == shots  # the same shots: drawn from the same split with the same seed
    assert Evaluator([task], tokenizer).score(model)["g"] == {"exact_match": 0.5}


BAD_TASKS = [
    ({"num_fewshot": 11}, "the train split has 10 examples, fewer than num_fewshot 11"),
    ({"num_fewshot": 2, "fewshot_split": "dev"}, "no file for split 'dev'"),
    (
        {"num_fewshot": 2, "fewshot_split": "held_out"},
        "fewshot_split 'held_out' is the task's held_out_split",
    ),
]


def bad_config(tiny_models, data: Path, tmp_path: Path, change: dict) -> Path:
    tasks = {"t": {"data": str(data), "limit": 4, **change}}
    return write_config(
        tmp_path / "config.yaml", config_data(tiny_models, data, tmp_path / "run", tasks=tasks)
    )


def test_a_chat_template_for_a_tokenizer_without_one_is_one_line_and_exit_2(tiny_models, data, tmp_path):
    """Through an `evomerge run` process: the tiny models' character tokenizer has no chat template."""
    config = bad_config(tiny_models, data, tmp_path, {"chat_template": True})
    code, errors = evomerge_result("run", config)
    message = "task 't': chat_template is true but the tokenizer of"
    assert code == 2 and len(errors.strip().splitlines()) == 1 and message in errors, errors
    assert "has no chat template; set chat_template: false" in errors
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("change", "message"), BAD_TASKS)
def test_bad_k_shot_settings_are_one_line_and_exit_2(change, message, tiny_models, data, tmp_path, capsys):
    """`evomerge run` in this process (the process itself is tested above)."""
    config = bad_config(tiny_models, data, tmp_path, change)
    assert main(["run", str(config)]) == 2
    errors = capsys.readouterr().err
    assert len(errors.strip().splitlines()) == 1 and message in errors, errors
    assert not (tmp_path / "run").exists()


def test_a_chat_template_that_refuses_a_system_prompt_is_one_line(tokenizer, data):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    refusal = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    tokenizer.chat_template = refusal + CHAT_TEMPLATE
    assert by_prompt(prepared(tokenizer, data=str(data), chat_template=True))["n3="] == ids(
        tokenizer, "[u]n3=[a]"
    )
    with pytest.raises(UsageError, match="task 't': the tokenizer's chat template refuses .*no system role"):
        prepared(tokenizer, data=str(data), chat_template=True, system_prompt="be brief")
