"""Batched greedy generation, answer extraction and matching: the scorer of `generate` tasks.

Prompts arrive tokenized (once per run, `evaluate/tasks.py`). The prefix they all share is run once; a batch
is prompts of similar length, left-padded after that prefix so that every row continues from its last prompt
token; `model.generate` decodes greedily with its KV cache and stops each row at EOS or at its first stop
string. The same code runs on CPU and GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.evaluate.prefix import PrefixCache, shared_prefix_length


def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 64,
) -> list[str]:
    """The greedy continuation of each tokenized prompt, decoded without special tokens and cut before the
    first stop string, in the order of `prompts`.

    The prefix all prompts share is run once (evaluate/prefix.py); each row is then laid out as
    [shared prefix][left padding][its own tokens], and `generate` derives every position from the attention
    mask, so the padding takes none."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    completions: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shared = shared_prefix_length(prompts)
    with torch.inference_mode():
        prefix = PrefixCache(model, prompts[0][:shared]) if shared else None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in rows) - shared
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                own = prompts[i][shared:]
                ids[r, width - len(own) :] = torch.tensor(own)
                mask[r, width - len(own) :] = 1
            ids, mask = ids.to(device), mask.to(device)
            extra = {}
            if prefix is not None:
                ids = torch.cat(
                    [torch.tensor([prompts[0][:shared]], device=device).expand(len(rows), -1), ids], 1
                )
                mask = torch.cat([prefix.mask(len(rows), device), mask], dim=1)
                extra["past_key_values"] = prefix.for_rows(len(rows))
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                max_length=None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
                stop_strings=list(stop) or None,
                tokenizer=tokenizer if stop else None,
                **extra,
            )
            texts = tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True)
            for i, text in zip(rows, texts):
                completions[i] = cut_at_stop(text, stop)
    return completions


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


def extracted(text: str, pattern: re.Pattern[str] | None) -> str | None:
    """The answer in `text`: the regex's first group (or whole match), None when it does not match; the
    whole text when there is no regex."""
    if pattern is None:
        return text
    found = pattern.search(text)
    if found is None:
        return None
    return found.group(1) if pattern.groups else found.group(0)


def answers_match(predicted: str | None, gold: str, numeric: bool) -> bool:
    """Exact string equality (after stripping whitespace), or numeric equality to 1e-6 relative."""
    if predicted is None:
        return False
    if not numeric:
        return predicted.strip() == gold.strip()
    number, expected = _number(predicted), _number(gold)
    return (
        number is not None
        and expected is not None
        and math.isclose(number, expected, rel_tol=1e-6, abs_tol=1e-9)
    )


def _number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", "").replace("$", "").rstrip("."))
    except ValueError:
        return None


def greedy_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    batch_size: int = 256,
) -> float:
    """Fraction of prompts whose greedy continuation, up to the first EOS, is exactly the answer.

    Prompts are encoded as the tokenizer encodes them (with its special tokens, e.g. BOS); generation runs for
    the longest answer's token count plus one (for the EOS).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return 0.0
    max_new_tokens = 1 + max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    completions = greedy_completions(model, tokenizer, encoded, max_new_tokens, batch_size=batch_size)
    return sum(c == a for c, a in zip(completions, answers)) / len(prompts)
