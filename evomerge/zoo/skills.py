"""The zoo's three skills, their examples (train / search / held_out, and the base's easy data), and the
names of the zoo's models (the base and one expert per skill)."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evomerge.families import read_jsonl, write_jsonl
from evomerge.zoo.settings import ZooSettings

SPLITS = ("train", "search", "held_out")
BASE_MODEL = "base"


@dataclass(frozen=True)
class Skill:
    """A prompt -> answer task.

    `make_example` draws one example of the full distribution (the experts' training data and every
    scored split); `make_easy_example` draws one from the easy sub-distribution that the base learns.
    """

    name: str
    prompt_format: str
    easy_format: str
    make_example: Callable[[random.Random], dict[str, str]]
    make_easy_example: Callable[[random.Random], dict[str, str]]


def _add(a: int, b: int) -> dict[str, str]:
    return {"prompt": f"add {a:02d}+{b:02d}=", "answer": f"{a + b:03d}"[::-1]}


def _add_example(rng: random.Random) -> dict[str, str]:
    return _add(rng.randrange(100), rng.randrange(100))


def _add_easy_example(rng: random.Random) -> dict[str, str]:
    return _add(rng.randrange(EASY_ADD_BELOW), rng.randrange(EASY_ADD_BELOW))


def _letters(
    rng: random.Random, lengths: tuple[int, int] = (3, 6), letters: str = string.ascii_lowercase
) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(*lengths)))


def _reverse(word: str) -> dict[str, str]:
    return {"prompt": f"rev {word}=", "answer": word[::-1]}


def _shift(word: str) -> dict[str, str]:
    shifted = "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in word)
    return {"prompt": f"shift {word}=", "answer": shifted}


def _reverse_example(rng: random.Random) -> dict[str, str]:
    return _reverse(_letters(rng))


def _reverse_easy_example(rng: random.Random) -> dict[str, str]:
    return _reverse(_letters(rng, lengths=EASY_REVERSE_LENGTHS))


def _shift_example(rng: random.Random) -> dict[str, str]:
    return _shift(_letters(rng))


def _shift_easy_example(rng: random.Random) -> dict[str, str]:
    return _shift(_letters(rng, letters=EASY_SHIFT_LETTERS))


# The easy sub-distributions the base is trained on (the experts and every scored split use the full ones).
# They are not settings: changing one changes the zoo, so bump ZOO_FORMAT_VERSION with it.
EASY_ADD_BELOW = 50
EASY_REVERSE_LENGTHS = (3, 4)
EASY_SHIFT_LETTERS = string.ascii_lowercase[:13]

SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill(
            "add",
            "add AA+BB= -> (A+B) as 3 digits, least significant first",
            f"operands below {EASY_ADD_BELOW}",
            _add_example,
            _add_easy_example,
        ),
        Skill(
            "reverse",
            "rev WORD= -> WORD reversed (3-6 lowercase letters)",
            f"{EASY_REVERSE_LENGTHS[0]}-{EASY_REVERSE_LENGTHS[1]} letters",
            _reverse_example,
            _reverse_easy_example,
        ),
        Skill(
            "shift",
            "shift WORD= -> each letter of WORD +1, z -> a (3-6 lowercase letters)",
            f"letters {EASY_SHIFT_LETTERS[0]}-{EASY_SHIFT_LETTERS[-1]} only",
            _shift_example,
            _shift_easy_example,
        ),
    )
}


def expert_name(skill: str) -> str:
    return f"expert_{skill}"


def model_names() -> list[str]:
    """The zoo's model directories: the base first, then one expert per skill."""
    return [BASE_MODEL, *(expert_name(s) for s in SKILLS)]


def skill_splits(skill: Skill, settings: ZooSettings) -> dict[str, list[dict[str, str]]]:
    """The skill's examples, split into train / search / held_out with no prompt in two splits."""
    sizes = {
        "train": settings.train_examples,
        "search": settings.search_examples,
        "held_out": settings.held_out_examples,
    }
    rng = random.Random(f"{settings.seed}/{skill.name}")
    seen: set[str] = set()
    examples: list[dict[str, str]] = []
    while len(examples) < sum(sizes.values()):
        example = skill.make_example(rng)
        if example["prompt"] not in seen:
            seen.add(example["prompt"])
            examples.append(example)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = examples[start : start + sizes[split]]
        start += sizes[split]
    return splits


def base_train_split(
    skill: Skill, settings: ZooSettings, splits: dict[str, list[dict[str, str]]]
) -> list[dict[str, str]]:
    """The base's training examples of one skill: `train_examples` draws from the easy sub-distribution.

    No prompt of the search or held-out split is drawn, so the base never trains on a scored prompt. A draw
    may repeat (the easy ``add`` has only 2500 prompts).
    """
    scored = {row["prompt"] for split in ("search", "held_out") for row in splits[split]}
    rng = random.Random(f"{settings.seed}/{skill.name}/easy")
    rows: list[dict[str, str]] = []
    while len(rows) < settings.train_examples:
        example = skill.make_easy_example(rng)
        if example["prompt"] not in scored:
            rows.append(example)
    return rows


def read_split(zoo_dir: Path, skill: str, split: str) -> list[dict[str, str]]:
    """The examples of one skill's split, as written by `build_zoo`."""
    return read_jsonl(Path(zoo_dir) / "data" / skill / f"{split}.jsonl")


def write_skill_data(
    out_dir: Path,
    splits: dict[str, dict[str, list[dict[str, str]]]],
    base_train: dict[str, list[dict[str, str]]],
) -> None:
    """Every skill's splits and the base's easy examples, as `data/<skill>/<split>.jsonl` under out_dir."""
    for name, skill_data in splits.items():
        for split, rows in skill_data.items():
            write_jsonl(out_dir / "data" / name / f"{split}.jsonl", rows)
        write_jsonl(out_dir / "data" / name / "base_train.jsonl", base_train[name])
