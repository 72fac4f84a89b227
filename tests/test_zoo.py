"""The tiny model zoo: tokenizer, skills and splits, settings hash, the zoo shipped with the package (tied to
the settings, pinned by checksums, the figures docs/zoo.md shows), and (slow) the zoo itself and its build."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import UsageError
from evomerge.families import format_matrix
from evomerge.merge.engine import MergeEngine
from evomerge.merge.recipe import recipe_from_dict
from evomerge.zoo import zoo_data, zoo_model
from evomerge.zoo.build import build_zoo, ensure_zoo, read_manifest
from evomerge.zoo.check import merge_check_recipes, model_accuracy
from evomerge.zoo.settings import ZooSettings, settings_hash
from evomerge.zoo.ship import ship
from evomerge.zoo.shipped import SHIP_COMMAND, SHIPPED_ZOO, checksums, recorded_checksums
from evomerge.zoo.skills import SKILLS, SPLITS, base_train_split, expert_name, model_names, skill_splits
from evomerge.zoo.tokenizer import ALPHABET, build_tokenizer

# Thresholds sit well inside what the default zoo shows (docs/zoo.md), so that they do not flake.
EXPERT_MIN_ACCURACY = 0.9
EXPERT_MIN_MARGIN = 0.3
# Off-skill, an expert stays near the base (replay); it must sit this far below its own-skill accuracy.
EXPERT_MAX_OFF_SKILL = 0.7
# The best of task arithmetic at these scales must beat both the base's and the best expert's mean held-out
# accuracy over the skills by this much (docs/zoo.md, "Merge check").
MERGE_SCALES = (0.3, 0.5, 0.7, 1.0)
MERGE_MIN_GAIN = 0.15
DOCS = Path(__file__).resolve().parent.parent / "docs"
# The manifest's merge check rows as docs/zoo.md names them.
DOCS_MERGE_LABELS = {
    "uniform average": "uniform average",
    "task arithmetic scale=1.0": "task arithmetic λ=1.0",
}
# The files a zoo's checksums cover: each model's weights, each skill's splits and the base's easy data.
ZOO_FILES = len(model_names()) + len(SKILLS) * (len(SPLITS) + 1)
TINY = ZooSettings(
    layers=1,
    hidden=16,
    intermediate=32,
    heads=2,
    batch_size=8,
    base_steps=3,
    expert_steps=2,
    train_examples=40,
    search_examples=10,
    held_out_examples=10,
)


def test_tokenizer_round_trips_and_loads_from_a_saved_dir(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    text = "add 12+45= rev abc= " + "".join(ALPHABET)
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<bos>", "<eos>", "<pad>")


@pytest.mark.parametrize("name", list(SKILLS))
def test_skill_examples_are_well_formed(name: str) -> None:
    skill = SKILLS[name]
    rng = random.Random(0)
    prefixes = set()
    for _ in range(200):
        example = skill.make_example(rng)
        assert example["prompt"].endswith("=")
        assert 1 <= len(example["answer"]) <= 8
        assert set(example["prompt"] + example["answer"]) <= set(ALPHABET)
        prefixes.add(example["prompt"].split(" ")[0])
    assert len(prefixes) == 1


@pytest.mark.parametrize("name", list(SKILLS))
def test_easy_examples_are_a_strict_sub_distribution(name: str) -> None:
    skill = SKILLS[name]
    rng = random.Random(0)
    easy = {skill.make_easy_example(rng)["prompt"] for _ in range(2000)}
    full = {skill.make_example(rng)["prompt"] for _ in range(2000)}
    assert len(easy) > 100
    # Easy prompts look like full ones, but most full prompts are not easy ones.
    assert {p.split(" ")[0] for p in easy} == {p.split(" ")[0] for p in full}
    assert len(full - easy) > len(full) / 2


@pytest.mark.parametrize("name", list(SKILLS))
def test_base_training_data_avoids_scored_prompts(name: str) -> None:
    settings = ZooSettings(train_examples=500)
    splits = skill_splits(SKILLS[name], settings)
    rows = base_train_split(SKILLS[name], settings, splits)
    assert len(rows) == settings.train_examples
    scored = {row["prompt"] for split in ("search", "held_out") for row in splits[split]}
    assert not scored & {row["prompt"] for row in rows}
    assert base_train_split(SKILLS[name], settings, splits) == rows


def test_skills_have_distinct_prompt_formats() -> None:
    rng = random.Random(0)
    prefixes = {skill.make_example(rng)["prompt"].split(" ")[0] for skill in SKILLS.values()}
    assert len(prefixes) == len(SKILLS) == 3


def test_add_answers_are_reversed_zero_padded_sums() -> None:
    rng = random.Random(1)
    for _ in range(100):
        example = SKILLS["add"].make_example(rng)
        a, b = example["prompt"].removeprefix("add ").removesuffix("=").split("+")
        assert int(example["answer"][::-1]) == int(a) + int(b)
        assert len(example["answer"]) == len(a) + 1


@pytest.mark.parametrize("name", list(SKILLS))
def test_splits_are_disjoint_sized_and_deterministic(name: str) -> None:
    settings = ZooSettings()
    splits = skill_splits(SKILLS[name], settings)
    assert {s: len(rows) for s, rows in splits.items()} == {
        "train": settings.train_examples,
        "search": settings.search_examples,
        "held_out": settings.held_out_examples,
    }
    prompts = [{row["prompt"] for row in splits[s]} for s in SPLITS]
    assert sum(map(len, prompts)) == len(set.union(*prompts))
    assert skill_splits(SKILLS[name], settings) == splits


def test_settings_hash_follows_the_settings() -> None:
    assert settings_hash(ZooSettings()) == settings_hash(ZooSettings())
    assert settings_hash(ZooSettings(seed=0)) == settings_hash(ZooSettings())
    assert len(settings_hash(ZooSettings())) == 12
    changed = [ZooSettings(seed=1), ZooSettings(expert_lr=1e-4), ZooSettings(base_steps=7)]
    hashes = {settings_hash(s) for s in changed} | {settings_hash(ZooSettings())}
    assert len(hashes) == len(changed) + 1


def test_build_refuses_a_directory_that_is_not_this_zoo(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="choose another directory or delete it"):
        build_zoo(tmp_path, TINY, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_format_matrix_is_a_markdown_table() -> None:
    table = format_matrix({"base": {"add": 0.5, "reverse": 0.25}, "expert_add": {"add": 1.0, "reverse": 0.0}})
    lines = table.splitlines()
    assert lines[0] == "| model | add | reverse |"
    assert lines[2] == "| base | 0.500 | 0.250 |"


@pytest.mark.slow
def test_tiny_builds_are_bit_identical_and_other_settings_are_refused(tmp_path: Path) -> None:
    first = build_zoo(tmp_path / "a", TINY, progress=False)
    build_zoo(tmp_path / "b", TINY, progress=False)
    for name in model_names():
        a = (tmp_path / "a" / name / "model.safetensors").read_bytes()
        b = (tmp_path / "b" / name / "model.safetensors").read_bytes()
        assert a == b, name
    assert first["hash"] == settings_hash(TINY)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(UsageError, match="other settings"):
        build_zoo(tmp_path / "a", TINY.model_copy(update={"seed": 1}), progress=False)


@pytest.mark.slow
def test_every_model_loads_and_generates(zoo_dir: Path) -> None:
    for name in model_names():
        model = AutoModelForCausalLM.from_pretrained(zoo_dir / name)
        tokenizer = AutoTokenizer.from_pretrained(zoo_dir / name)
        assert model.config.model_type == "llama"
        encoded = tokenizer(["rev abc="], return_tensors="pt")
        output = model.generate(**encoded, max_new_tokens=4, do_sample=False)
        assert output.shape[1] > encoded["input_ids"].shape[1]
    for skill in SKILLS:
        for split in SPLITS:
            assert (zoo_dir / "data" / skill / f"{split}.jsonl").is_file()


@pytest.mark.slow
def test_split_files_load_with_datasets(zoo_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = {split: str(zoo_dir / "data" / "add" / f"{split}.jsonl") for split in SPLITS}
    loaded = datasets.load_dataset("json", data_files=files)
    assert set(loaded) == set(SPLITS)
    assert loaded["held_out"].column_names == ["prompt", "answer"]


@pytest.mark.slow
def test_each_expert_is_clearly_best_on_its_own_skill(zoo_dir: Path) -> None:
    matrix = read_manifest(zoo_dir)["accuracy"]["held_out"]
    for skill in SKILLS:
        own = matrix[expert_name(skill)][skill]
        assert own >= EXPERT_MIN_ACCURACY, (skill, format_matrix(matrix))
        for other in model_names():
            if other != expert_name(skill):
                assert own >= matrix[other][skill] + EXPERT_MIN_MARGIN, (skill, other, format_matrix(matrix))


@pytest.mark.slow
def test_each_expert_is_weak_off_its_own_skill(zoo_dir: Path) -> None:
    matrix = read_manifest(zoo_dir)["accuracy"]["held_out"]
    for skill in SKILLS:
        own = matrix[expert_name(skill)][skill]
        for other in SKILLS:
            if other != skill:
                assert matrix[expert_name(skill)][other] <= own - (1 - EXPERT_MAX_OFF_SKILL), (
                    skill,
                    other,
                    format_matrix(matrix),
                )


@pytest.mark.slow
def test_model_accuracy_matches_the_manifest(zoo_dir: Path) -> None:
    matrix = read_manifest(zoo_dir)["accuracy"]["held_out"]
    assert model_accuracy(zoo_dir / "base", zoo_dir) == matrix["base"]
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / expert_name("add"))
    limited = model_accuracy(model, zoo_dir, split="search", limit=20)
    assert set(limited) == set(SKILLS)
    assert all(0 <= v <= 1 for v in limited.values())
    with pytest.raises(UsageError, match="unknown split"):
        model_accuracy(model, zoo_dir, split="train2")


@pytest.mark.slow
def test_the_manifest_merge_check_is_reproducible(zoo_dir: Path) -> None:
    reported = read_manifest(zoo_dir)["merge_check"]["held_out"]
    assert set(reported) == set(merge_check_recipes(zoo_dir))
    label, recipe = next(iter(merge_check_recipes(zoo_dir).items()))
    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target()
    engine.materialize(recipe, model)
    assert model_accuracy(model, zoo_dir) == reported[label]


@pytest.mark.slow
def test_task_arithmetic_of_the_experts_beats_the_base_and_every_expert(zoo_dir: Path) -> None:
    """The zoo's point: a simple merge of the three experts is better over all skills than any one model."""
    matrix = read_manifest(zoo_dir)["accuracy"]["held_out"]
    mean = {name: sum(row.values()) / len(row) for name, row in matrix.items()}
    best_single = max(mean.values())
    recipe = recipe_from_dict(
        {
            "method": "task_arithmetic",
            "base": str(zoo_dir / "base"),
            "sources": [{"model": str(zoo_dir / expert_name(s))} for s in SKILLS],
            "parameters": {"scale": 1.0},
        }
    )
    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target()
    merged = {}
    for scale in MERGE_SCALES:
        recipe = recipe.model_copy(update={"parameters": {"scale": scale}})
        engine.materialize(recipe, model)
        merged[scale] = model_accuracy(model, zoo_dir)
    best_scale = max(merged, key=lambda k: sum(merged[k].values()))
    best = merged[best_scale]
    table = format_matrix({**matrix, **{f"task arithmetic {k}": v for k, v in merged.items()}})
    assert sum(best.values()) / len(best) >= best_single + MERGE_MIN_GAIN, table
    for skill in SKILLS:
        assert best[skill] > matrix["base"][skill], (skill, table)


@pytest.mark.slow
def test_a_second_build_returns_from_the_cache(zoo_dir: Path) -> None:
    manifest = read_manifest(zoo_dir)
    before = {p: p.stat().st_mtime_ns for p in zoo_dir.rglob("*")}
    again = build_zoo(zoo_dir, ZooSettings(**manifest["settings"]), progress=False)
    assert again == manifest  # and nothing was trained or written again: every file as it was
    assert {p: p.stat().st_mtime_ns for p in zoo_dir.rglob("*")} == before


def test_the_shipped_zoo_is_the_zoo_of_the_default_settings() -> None:
    shipped, wanted = read_manifest(SHIPPED_ZOO)["hash"], settings_hash(ZooSettings())
    assert shipped == wanted, (
        f"the zoo's default settings (hash {wanted}) are not those of the zoo shipped in {SHIPPED_ZOO} "
        f"(hash {shipped}): ship it again with `{SHIP_COMMAND}`, then bring docs/zoo.md and the README's "
        "demo table up to date"
    )


def _docs_row(text: str, label: str) -> list[float]:
    """The numbers of the markdown table row of docs/zoo.md whose first cell is `label` (bold or not)."""
    for line in text.splitlines():
        cells = [cell.strip(" *") for cell in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return [float(cell) for cell in cells[1:]]
    raise AssertionError(f"docs/zoo.md has no table row '{label}'")


def test_docs_show_the_shipped_zoo_s_accuracy_matrix_and_merge_check() -> None:
    manifest = read_manifest(SHIPPED_ZOO)
    text = (DOCS / "zoo.md").read_text(encoding="utf-8")
    rows = dict(manifest["accuracy"]["held_out"])
    rows.update({DOCS_MERGE_LABELS[label]: row for label, row in manifest["merge_check"]["held_out"].items()})
    for label, row in rows.items():
        values = [row[skill] for skill in SKILLS]
        expected = [round(v, 3) for v in [*values, sum(values) / len(values)]]
        assert _docs_row(text, label) == expected, label


@pytest.mark.slow
def test_the_default_zoo_is_the_shipped_one_read_in_place_with_its_recorded_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    assert ensure_zoo(progress=False) == SHIPPED_ZOO
    assert zoo_model("expert_add") == SHIPPED_ZOO / "expert_add"
    assert zoo_data("shift") == SHIPPED_ZOO / "data" / "shift"
    recorded = recorded_checksums()
    assert len(recorded) == ZOO_FILES
    assert checksums(SHIPPED_ZOO) == recorded, f"the shipped zoo is not what it records; `{SHIP_COMMAND}`"
    assert not (tmp_path / "cache").exists()  # nothing built, nothing copied


@pytest.mark.slow
def test_ship_puts_a_built_zoo_and_its_checksums_in_place_of_the_previous_one(tmp_path: Path) -> None:
    out = tmp_path / "shipped"
    first = ship(out, TINY, progress=False)
    assert read_manifest(out) == first and first["hash"] == settings_hash(TINY)
    first_sums = recorded_checksums(out)
    assert first_sums == checksums(out) and len(first_sums) == ZOO_FILES
    other = TINY.model_copy(update={"seed": 1})
    second = ship(out, other, progress=False)
    assert read_manifest(out) == second and second["hash"] == settings_hash(other)
    assert recorded_checksums(out) == checksums(out) != first_sums
    assert [p.name for p in tmp_path.iterdir()] == ["shipped"]  # no staging directory left behind
