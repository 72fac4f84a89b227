"""Shared fixtures: tiny random Llama models saved as HF directories, and the zoo (the shipped one)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from evomerge.zoo.build import ensure_zoo  # noqa: E402
from evomerge.zoo.tokenizer import build_tokenizer  # noqa: E402


def save_tiny_llama(path: Path, seed: int, **overrides) -> Path:
    """A random 2-layer Llama with the zoo's tokenizer, saved as an HF directory at `path`."""
    tokenizer = build_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A base and three sources: tiny random Llamas of one architecture."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: save_tiny_llama(root / name, seed) for seed, name in enumerate(["base", "a", "b", "c"])}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A generate task on numbers (n3= -> 3): 12 search and 8 held-out rows."""
    data = tmp_path_factory.mktemp("task")
    for split, numbers in (("search", range(12)), ("held_out", range(12, 20))):
        rows = "".join(json.dumps({"prompt": f"n{i}=", "answer": str(i)}) + "\n" for i in numbers)
        (data / f"{split}.jsonl").write_text(rows)
    return data


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    return ensure_zoo(progress=False)
