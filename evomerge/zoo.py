"""The deterministic tiny model zoo: a base Llama and three single-skill experts to merge.

The zoo is what the demo and the tests search over. It is built from nothing in about two minutes on two
CPU cores: a character-level `LlamaForCausalLM` is first trained on a mixture of three skills restricted to
an *easy* part of their inputs (the *base*: it has every skill's algorithm, but only for easy inputs), then
fine-tuned once per skill on that skill's *full* distribution, with a replay of the other skills' easy data
and an L2-SP pull toward the base (the *experts*: each extends its own skill and keeps the others at the
base's level). Each task vector is then a small extension of one skill, and plain task arithmetic of the
three experts does better over all skills than any single model; docs/zoo.md has the numbers.

Skills (see `SKILLS`; every answer is followed by EOS; the base's easy sub-distribution in brackets):

- ``add``: ``"add 12+05="`` -> ``"710"``. Two two-digit operands, zero-padded; the sum zero-padded to
  three digits and written least-significant digit first (12 + 05 = 017, reversed). [both operands < 50]
- ``reverse``: ``"rev abcde="`` -> ``"edcba"``. Three to six lowercase letters, reversed. [3-4 letters]
- ``shift``: ``"shift abcde="`` -> ``"bcdef"``. Three to six lowercase letters, each replaced by the next
  letter of the alphabet (``z`` -> ``a``). [letters a-m only]

Layout of a zoo directory::

    base/  expert_add/  expert_reverse/  expert_shift/     HF model dirs (safetensors, float32, tokenizer)
    data/<skill>/{train,search,held_out}.jsonl             fields "prompt", "answer"; disjoint prompts
    data/<skill>/base_train.jsonl                          the base's easy examples (no scored prompt)
    zoo.json                                               the manifest (accuracy, merge check), written last

Same settings on the same machine give bit-identical safetensors; the directory name carries the hash of
the settings, so a changed setting builds a new zoo instead of reusing an old one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, processors
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from evomerge.errors import UsageError
from evomerge.files import staging_directory
from evomerge.evaluate.generate import greedy_exact_match
from evomerge.recipe import Recipe, recipe_from_dict

ZOO_FORMAT_VERSION = 2
SPLITS = ("train", "search", "held_out")
BASE_MODEL = "base"

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Every printable ASCII character but tabs and newlines, so that any one-line ASCII text round-trips.
ALPHABET = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]


class ZooSettings(BaseModel):
    """Every setting that shapes the zoo; its hash names the zoo's directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=8)
    intermediate: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)
    base_steps: int = Field(1200, ge=1)
    base_lr: float = Field(1e-3, gt=0)
    base_mixture: dict[str, float] = Field(
        default_factory=lambda: {"add": 4.0, "reverse": 1.0, "shift": 1.0},
        description="relative share of each skill in the base's training batches",
    )
    expert_steps: int = Field(300, ge=1)
    expert_lr: float = Field(5e-4, gt=0)
    expert_anchor: float = Field(
        20.0, ge=0, description="L2-SP: per step, pull each expert weight toward the base's by lr * anchor"
    )
    expert_replay: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="share of an expert's training rows replayed from the base's easy data of other skills",
    )
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    train_examples: int = Field(5000, ge=1, description="per skill")
    search_examples: int = Field(200, ge=1, description="per skill")
    held_out_examples: int = Field(200, ge=1, description="per skill")


def settings_hash(settings: ZooSettings) -> str:
    """First 12 hex digits of the sha256 of the settings' canonical JSON and the zoo format version."""
    payload = {"format_version": ZOO_FORMAT_VERSION, "settings": settings.model_dump(mode="json")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- skills


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
    with open(Path(zoo_dir) / "data" / skill / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """JSON lines, the format `datasets.load_dataset("json", data_files=...)` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ---------------------------------------------------------------- tokenizer and model


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable ASCII character, BOS prepended on encode.

    A BPE model without merges splits text into its characters; the Fuse decoder joins them back, so
    ``decode(encode(s), skip_special_tokens=True) == s`` for any string over `ALPHABET`.
    """
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *ALPHABET])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=64,
    )


def _model_config(settings: ZooSettings, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def _generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------- training


def _training_tensors(
    tokenizer: PreTrainedTokenizerFast, examples: list[dict[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows ``BOS prompt answer EOS`` and their labels, -100 everywhere but the answer + EOS."""
    rows, label_rows = [], []
    for example in examples:
        prompt = tokenizer(example["prompt"])["input_ids"]
        answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"]
        answer.append(tokenizer.eos_token_id)
        rows.append(prompt + answer)
        label_rows.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(label_row)
    return input_ids, labels


def _batch_order(
    n_examples: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches of example indices: fresh seeded permutations, epoch after epoch."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_examples, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def _learning_rate(step: int, steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warmup to `peak`, then cosine decay to a tenth of it."""
    warmup = max(1, round(steps * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(
    model: LlamaForCausalLM,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    settings: ZooSettings,
    seed: int,
    bar: tqdm,
    anchor: float = 0.0,
) -> None:
    """AdamW on the answer tokens only, in a fixed seeded data order.

    With `anchor` > 0, every step also pulls each weight toward its starting value by ``lr * anchor`` of
    the distance (decoupled like AdamW's weight decay, but toward the start instead of toward zero: L2-SP).
    """
    input_ids, labels = data
    start = [p.detach().clone() for p in model.parameters()] if anchor > 0 else []
    attention_mask = (input_ids != model.config.pad_token_id).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step, batch in enumerate(_batch_order(len(input_ids), settings.batch_size, steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, settings.warmup_fraction)
        output = model(input_ids=input_ids[batch], attention_mask=attention_mask[batch], labels=labels[batch])
        loss = output.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if anchor > 0:
            with torch.no_grad():
                shrink = optimizer.param_groups[0]["lr"] * anchor
                for p, p0 in zip(model.parameters(), start):
                    p.lerp_(p0, shrink)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def _base_mixture(
    base_train: dict[str, list[dict[str, str]]], settings: ZooSettings
) -> list[dict[str, str]]:
    """The base's training rows: each skill's easy examples, cycled or cut to its share of the mixture."""
    total_weight = sum(settings.base_mixture[name] for name in base_train)
    size = settings.train_examples * len(base_train)
    rows = []
    for name, train in base_train.items():
        count = round(size * settings.base_mixture[name] / total_weight)
        rows.extend(train[i % len(train)] for i in range(count))
    return rows


def _expert_rows(
    skill: str,
    train: list[dict[str, str]],
    base_train: dict[str, list[dict[str, str]]],
    settings: ZooSettings,
) -> list[dict[str, str]]:
    """An expert's training rows: its skill's full train split plus a replay of the base's easy data of the
    other skills (`expert_replay` of all rows, shared equally), so that its task vector extends its own skill
    without unlearning the others."""
    others = [name for name in base_train if name != skill]
    replay = round(len(train) * settings.expert_replay / (1 - settings.expert_replay)) if others else 0
    rows = list(train)
    for k, name in enumerate(others):
        count = replay // len(others) + (k < replay % len(others))
        rows.extend(base_train[name][i % len(base_train[name])] for i in range(count))
    return rows


@contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Deterministic kernels and a private RNG while building; the caller's settings come back after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, model_dir: Path) -> None:
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)


def _train_models(settings: ZooSettings, tmp_dir: Path, progress: bool) -> None:
    """Train the base on every skill, then each expert from the base on its own skill, saving each."""
    tokenizer = build_tokenizer()
    splits = {name: skill_splits(skill, settings) for name, skill in SKILLS.items()}
    base_train = {name: base_train_split(SKILLS[name], settings, splits[name]) for name in SKILLS}
    for name, skill_data in splits.items():
        for split, rows in skill_data.items():
            _write_jsonl(tmp_dir / "data" / name / f"{split}.jsonl", rows)
        _write_jsonl(tmp_dir / "data" / name / "base_train.jsonl", base_train[name])

    total_steps = settings.base_steps + settings.expert_steps * len(SKILLS)
    with _deterministic_torch(), tqdm(total=total_steps, desc="zoo: base", disable=not progress) as bar:
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(_model_config(settings, tokenizer))
        model.generation_config = _generation_config(tokenizer)
        mixture = _base_mixture(base_train, settings)
        data = _training_tensors(tokenizer, mixture)
        _train(model, data, settings.base_steps, settings.base_lr, settings, settings.seed, bar)
        _save_model(model, tokenizer, tmp_dir / BASE_MODEL)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}

        for index, (name, skill_data) in enumerate(splits.items(), start=1):
            bar.set_description(f"zoo: {expert_name(name)}")
            model.load_state_dict(base_state)
            data = _training_tensors(tokenizer, _expert_rows(name, skill_data["train"], base_train, settings))
            seed = settings.seed + index
            steps, lr, anchor = settings.expert_steps, settings.expert_lr, settings.expert_anchor
            _train(model, data, steps, lr, settings, seed, bar, anchor)
            _save_model(model, tokenizer, tmp_dir / expert_name(name))


# ---------------------------------------------------------------- scoring


def model_accuracy(
    model_or_dir: PreTrainedModel | str | Path,
    zoo_dir: Path,
    split: str = "held_out",
    limit: int | None = None,
) -> dict[str, float]:
    """Greedy exact-match accuracy of one model on every skill's split: ``{skill: accuracy}``.

    `model_or_dir` is a loaded causal LM or a model directory; the tokenizer is the zoo base's (every zoo
    model and every merge of them shares it). `limit` scores only the first examples of each split.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    zoo_dir = Path(zoo_dir)
    if isinstance(model_or_dir, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir, dtype=torch.float32)
    else:
        model = model_or_dir
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / BASE_MODEL)
    accuracy = {}
    for skill in SKILLS:
        rows = read_split(zoo_dir, skill, split)[:limit]
        accuracy[skill] = greedy_exact_match(
            model, tokenizer, [e["prompt"] for e in rows], [e["answer"] for e in rows]
        )
    return accuracy


def accuracy_matrix(
    zoo_dir: Path, split: str = "held_out", limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Greedy exact-match accuracy of every zoo model on every skill: ``{model: {skill: accuracy}}``."""
    zoo_dir = Path(zoo_dir)
    return {name: model_accuracy(zoo_dir / name, zoo_dir, split, limit) for name in model_names()}


MERGE_CHECK_SCALE = 1.0


def merge_check_recipes(zoo_dir: Path) -> dict[str, Recipe]:
    """The simple merges the manifest reports: the uniform average of the experts and task arithmetic."""
    zoo_dir = Path(zoo_dir)
    sources = [{"model": str(zoo_dir / expert_name(s))} for s in SKILLS]
    return {
        "uniform average": recipe_from_dict({"method": "linear", "sources": sources}),
        f"task arithmetic scale={MERGE_CHECK_SCALE}": recipe_from_dict(
            {
                "method": "task_arithmetic",
                "base": str(zoo_dir / BASE_MODEL),
                "sources": sources,
                "parameters": {"scale": MERGE_CHECK_SCALE},
            }
        ),
    }


def merge_check(
    zoo_dir: Path, split: str = "held_out", limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Accuracy of each merge of `merge_check_recipes`, materialized with the MergeEngine: ``{merge: {skill:
    accuracy}}``."""
    return {
        label: recipe_accuracy(recipe, zoo_dir, split, limit) for label, recipe in merge_check_recipes(zoo_dir).items()
    }


def recipe_accuracy(recipe: Recipe, zoo_dir: Path, split: str = "held_out", limit: int | None = None) -> dict[str, float]:
    """`model_accuracy` of the merge a recipe describes, materialized in memory with the MergeEngine."""
    from evomerge.engine import MergeEngine

    engine = MergeEngine.from_recipe(recipe)
    model = engine.new_target(dtype=torch.float32)
    engine.materialize(recipe, model)
    return model_accuracy(model, zoo_dir, split, limit)


def format_matrix(matrix: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, one column per skill."""
    skills = list(next(iter(matrix.values()), {}))
    lines = [
        "| model | " + " | ".join(skills) + " |",
        "| --- | " + " | ".join("---:" for _ in skills) + " |",
    ]
    for name, row in matrix.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in skills) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- building and caching


def read_manifest(zoo_dir: Path) -> dict | None:
    """The zoo's manifest, or None when the directory holds no (complete) zoo."""
    path = Path(zoo_dir) / "zoo.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _manifest(
    settings: ZooSettings,
    matrix: dict[str, dict[str, float]],
    merges: dict[str, dict[str, float]],
    seconds: float,
) -> dict:
    return {
        "format_version": ZOO_FORMAT_VERSION,
        "hash": settings_hash(settings),
        "settings": settings.model_dump(mode="json"),
        "skills": {
            name: {
                "prompt_format": skill.prompt_format,
                "base_trained_on": skill.easy_format,
                "data": {s: f"data/{name}/{s}.jsonl" for s in SPLITS},
            }
            for name, skill in SKILLS.items()
        },
        "base": BASE_MODEL,
        "experts": {name: expert_name(name) for name in SKILLS},
        "models": model_names(),
        "accuracy": {"held_out": matrix},
        "merge_check": {"held_out": merges},
        "build_seconds": round(seconds, 1),
    }


def _cached_manifest(out_dir: Path, settings: ZooSettings) -> dict | None:
    """The existing zoo's manifest if out_dir holds this zoo; None if out_dir is absent or empty.

    Raises UsageError when out_dir holds anything else, so a build never overwrites a user's files.
    """
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return None
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None:
        raise UsageError(f"{out_dir} exists and is not a model zoo; choose another directory or delete it")
    if manifest.get("hash") != settings_hash(settings):
        raise UsageError(
            f"{out_dir} holds a zoo built with other settings (hash {manifest.get('hash')}, wanted "
            f"{settings_hash(settings)}); choose another directory or delete it"
        )
    return manifest


def build_zoo(out_dir: Path, settings: ZooSettings = ZooSettings(), progress: bool = True) -> dict:
    """Build the zoo into out_dir (or return the manifest of the same zoo already there).

    The build happens in a hidden sibling directory that is renamed into place at the end, so out_dir is
    either absent or complete, even if the build is killed.
    """
    out_dir = Path(out_dir)
    cached = _cached_manifest(out_dir, settings)
    if cached is not None:
        return cached
    started = time.perf_counter()
    with staging_directory(out_dir) as tmp_dir:
        _train_models(settings, tmp_dir, progress)
        matrix = accuracy_matrix(tmp_dir)
        merges = merge_check(tmp_dir)
        manifest = _manifest(settings, matrix, merges, time.perf_counter() - started)
        (tmp_dir / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return _move_into_place(tmp_dir, out_dir, settings, manifest)


def _move_into_place(tmp_dir: Path, out_dir: Path, settings: ZooSettings, manifest: dict) -> dict:
    """Rename the finished build to out_dir; if a concurrent build got there first, keep its zoo."""
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        existing = _cached_manifest(out_dir, settings)
        if existing is None:
            raise
        return existing
    return manifest


def default_zoo_dir(settings: ZooSettings = ZooSettings()) -> Path:
    """Where `ensure_zoo` keeps the zoo: ``$EVOMERGE_CACHE/zoo-<hash>`` (default ``~/.cache/evomerge``)."""
    cache = Path(os.environ.get("EVOMERGE_CACHE", "~/.cache/evomerge")).expanduser()
    return cache / f"zoo-{settings_hash(settings)}"


def ensure_zoo(settings: ZooSettings = ZooSettings(), progress: bool = True) -> Path:
    """The zoo's directory in the cache, built first if it is not there yet."""
    zoo_dir = default_zoo_dir(settings)
    build_zoo(zoo_dir, settings, progress)
    return zoo_dir
