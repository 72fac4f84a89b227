"""The family's two skills and its cross-skill task, their data, and the names of its models.

- ``arith``: a templated arithmetic word problem, answered with the number in digits::

      "Mia has 7 apples and buys 5 more. How many apples does Mia have now?" -> "12"

  Addition (operands 2..max and 1..max) and subtraction (operands 2..max minus 1..itself), so answers lie in
  0..2 max (0..60 by default).
- ``words``: a number 0..words_max, written out in the settings' language (num2words)::

      "Write 47 in French words." -> "quarante-sept"

- ``arith_words``, the cross-skill task: the word problem, answered in the language's words::

      "Mia has 7 apples and buys 5 more. How many apples does Mia have now? Write the answer in French
      words." -> "douze"

Splits are disjoint by construction: each task's rows are drawn from its *underlying problems* (an arithmetic
fact ``a+b`` or ``a-b``; a number for ``words``), and each problem belongs to one split, chosen by a hash of
the seed and the problem (`problem_split`: 70 % train, 15 % search, 15 % held_out). So no arithmetic fact of a
search or held-out row is in any train row, and no held-out number of ``words`` is ever trained on. The
cross-skill task shares the arithmetic facts' split, so its search and held-out problems are in no expert's
training data (its train split exists only for k-shot examples; no model is trained on it). Within a split,
prompts are distinct.

Each row has ``prompt`` (the user's message), ``answer`` and, added by the build (it needs the tokenizer),
``chat_prompt``: the prompt as the instruct model sees it, wrapped in the tokenizer's chat template with the
generation prompt (the template's default system turn included).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import UsageError
from evomerge.extras import require
from evomerge.families import read_jsonl, write_jsonl
from evomerge.smollm2.settings import LANGUAGES, FamilySettings

SPLITS = ("train", "search", "held_out")
#: The skills, each with its expert.
SKILLS = ("arith", "words")
#: The cross-skill task: no model is trained on it.
CROSS_TASK = "arith_words"
TASKS = (*SKILLS, CROSS_TASK)
BASE_MODEL = "base"

#: Of 100 hash buckets, the first 15 are held_out, the next 15 search, the rest train.
SPLIT_BUCKETS = {"held_out": 15, "search": 30, "train": 100}

NAMES = ("Mia", "Tom", "Lea", "Sam", "Noah", "Emma", "Liam", "Zoe", "Ava", "Leo")
ITEMS = (
    "apples",
    "marbles",
    "books",
    "stickers",
    "pencils",
    "cookies",
    "coins",
    "cards",
    "shells",
    "balloons",
)
ARITH_TEMPLATES = {
    "+": (
        "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        "There are {a} {item} in a box. {name} puts in {b} more. How many {item} are in the box now?",
        "{name} had {a} {item}. A friend gave {name} {b} more. How many {item} does {name} have in total?",
    ),
    "-": (
        "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
        "There are {a} {item} in a box. {name} takes out {b}. How many {item} are left in the box?",
        "{name} had {a} {item} and lost {b} of them. How many {item} does {name} have now?",
    ),
}
WORDS_TEMPLATES = (
    "Write {n} in {language} words.",
    "Write the number {n} in {language} words.",
    "How is {n} written in {language} words?",
    "Spell out {n} in {language} words.",
)
CROSS_SUFFIX = " Write the answer in {language} words."

Row = dict[str, str]


@dataclass(frozen=True)
class Fact:
    """An arithmetic fact: ``a op b``."""

    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    def __str__(self) -> str:
        return f"{self.a}{self.op}{self.b}"


def expert_name(skill: str) -> str:
    return f"expert_{skill}"


def model_names() -> list[str]:
    """The family's model directories: the base first, then one expert per skill."""
    return [BASE_MODEL, *(expert_name(s) for s in SKILLS)]


def problem_split(seed: int, kind: str, problem: str) -> str:
    """The split an underlying problem belongs to, from a hash of the seed and the problem."""
    bucket = int(hashlib.sha256(f"{seed}/{kind}/{problem}".encode()).hexdigest()[:8], 16) % 100
    return next(split for split, end in SPLIT_BUCKETS.items() if bucket < end)


def arith_facts(max_operand: int) -> list[Fact]:
    """Every arithmetic fact of the skill: a+b with a in 2..max, b in 1..max; a-b with a in 2..max, b in
    1..a (the smallest left operand is 2, so that no prompt says "1 apples")."""
    operands = range(2, max_operand + 1)
    additions = [Fact(a, "+", b) for a in operands for b in range(1, max_operand + 1)]
    subtractions = [Fact(a, "-", b) for a in operands for b in range(1, a + 1)]
    return additions + subtractions


def number_words(n: int, language: str) -> str:
    """`n` written out in words (num2words), e.g. 47 in French -> "quarante-sept"."""
    return require("num2words", "smollm2", "the SmolLM2 family's words").num2words(n, lang=language)


def _arith_question(fact: Fact, rng: random.Random) -> str:
    template = rng.choice(ARITH_TEMPLATES[fact.op])
    return template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=fact.a, b=fact.b)


def _drawn_rows(
    problems: list,
    size: int,
    make: Callable[[object, random.Random], Row],
    rng: random.Random,
    distinct: bool,
) -> list[Row]:
    """`size` rows made from the problems taken in seeded shuffled passes (a problem repeats only once every
    problem has been used); with `distinct`, no prompt twice."""
    rows: list[Row] = []
    seen: set[str] = set()
    order: list = []
    for _ in range(100 * size):
        if not order:
            order = list(problems)
            rng.shuffle(order)
        row = make(order.pop(), rng) if order else None
        if row is not None and not (distinct and row["prompt"] in seen):
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == size:
            return rows
    raise UsageError(
        f"the settings ask for {size} rows of a split that has only {len(rows)} distinct prompts: lower the "
        "split's size or widen its numbers"
    )


def task_splits(settings: FamilySettings) -> dict[str, dict[str, list[Row]]]:
    """Every task's rows by split (``prompt`` and ``answer``; the build adds ``chat_prompt``)."""
    language, name = settings.language, LANGUAGES[settings.language]
    facts: dict[str, list[Fact]] = {split: [] for split in SPLITS}
    for fact in arith_facts(settings.max_operand):
        facts[problem_split(settings.seed, "arith", str(fact))].append(fact)
    numbers: dict[str, list[int]] = {split: [] for split in SPLITS}
    for n in range(settings.words_max + 1):
        numbers[problem_split(settings.seed, "words", str(n))].append(n)

    def arith(fact: Fact, rng: random.Random) -> Row:
        return {"prompt": _arith_question(fact, rng), "answer": str(fact.answer)}

    def words(n: int, rng: random.Random) -> Row:
        prompt = rng.choice(WORDS_TEMPLATES).format(n=n, language=name)
        return {"prompt": prompt, "answer": number_words(n, language)}

    def arith_words(fact: Fact, rng: random.Random) -> Row:
        prompt = _arith_question(fact, rng) + CROSS_SUFFIX.format(language=name)
        return {"prompt": prompt, "answer": number_words(fact.answer, language)}

    makers = {"arith": (arith, facts), "words": (words, numbers), CROSS_TASK: (arith_words, facts)}
    sizes = {
        "train": settings.train_examples,
        "search": settings.search_examples,
        "held_out": settings.held_out_examples,
    }
    return {
        task: {
            split: _drawn_rows(
                problems[split],
                sizes[split],
                make,
                random.Random(f"{settings.seed}/{task}/{split}"),
                distinct=split != "train",
            )
            for split in SPLITS
        }
        for task, (make, problems) in makers.items()
    }


def with_chat_prompts(rows: list[Row], chat_prompt: Callable[[str], str]) -> list[Row]:
    """The rows with ``chat_prompt``: each prompt as the model sees it (`chat_prompt(prompt)`)."""
    return [{**row, "chat_prompt": chat_prompt(row["prompt"])} for row in rows]


def write_task_data(out_dir: Path, splits: dict[str, dict[str, list[Row]]]) -> None:
    """Every task's splits as `<out_dir>/<task>/<split>.jsonl`."""
    for task, task_data in splits.items():
        for split, rows in task_data.items():
            write_jsonl(out_dir / task / f"{split}.jsonl", rows)


def read_split(family_dir: Path, task: str, split: str) -> list[Row]:
    """The rows of one task's split, as the build wrote them."""
    return read_jsonl(Path(family_dir) / "data" / task / f"{split}.jsonl")
