"""Greedy exact match: the simplest honest scorer for a causal LM on prompt -> answer pairs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def greedy_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    batch_size: int = 256,
    max_new_tokens: int | None = None,
) -> float:
    """Fraction of prompts whose greedy continuation, up to the first EOS, decodes to exactly the answer.

    Prompts are encoded as the tokenizer encodes them (with its special tokens, e.g. BOS) and left-padded, so
    that every row of a batch continues from its last prompt token. Generation stops per row at EOS;
    `max_new_tokens` defaults to the longest answer's token count plus one for the EOS.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return 0.0
    if max_new_tokens is None:
        max_new_tokens = 1 + max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    correct = 0
    with torch.inference_mode(), _left_padding(tokenizer):
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            completions = _greedy_completions(model, tokenizer, batch, max_new_tokens)
            correct += sum(c == a for c, a in zip(completions, answers[start : start + batch_size]))
    return correct / len(prompts)


def _greedy_completions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """The decoded greedy continuations of one left-padded batch, special tokens dropped."""
    device = next(model.parameters()).device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        **encoded,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
    )
    continuations = output[:, encoded["input_ids"].shape[1] :]
    return tokenizer.batch_decode(continuations, skip_special_tokens=True)


@contextmanager
def _left_padding(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Pads on the left while active, then restores the tokenizer's own padding side."""
    saved = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = saved
