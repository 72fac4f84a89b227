"""Batched log-likelihood: the scorer of `choice` and `perplexity` tasks.

A request is a (context, continuation) pair of token-id lists; its value is sum log p(continuation | context)
under the model. The model reads (context + continuation)[:-1], as in lm-eval, and the logits at the last
len(continuation) positions score the continuation. What keeps it fast on a model with a large vocabulary
(measured in experiments/bench_eval.py):

- requests whose inputs are the same token sequence (options that differ only in their last token) are run
  once, as lm-eval groups one-token continuations;
- the prefix every input shares (chat template, system prompt, k-shot examples) is run once, and each batch
  starts from its KV cache (evaluate/prefix.py);
- the output head is applied at the scored positions only (`logits_to_keep` as a boolean mask), not at every
  position of every row: on SmolLM2 the head is a 49152 x 576 matrix, a fifth of the model's work per token,
  and a batch's full logits would be hundreds of megabytes;
- inputs are sorted by length and right-padded into batches: one forward pass per batch.

The same code runs on CPU and GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from evomerge.evaluate.prefix import PrefixCache, shared_prefix_length

Request = tuple[list[int], list[int]]
#: A model input (a token sequence) and the (position, next token) pairs whose log-probability it gives.
Targets = dict[tuple[int, ...], set[tuple[int, int]]]


def continuation_logprobs(
    model: PreTrainedModel, requests: Sequence[Request], batch_size: int = 64, pad_token_id: int = 0
) -> list[float]:
    """sum_t log p(continuation_t | context, continuation_<t) of each request, in the order of `requests`."""
    if not requests:
        return []
    targets: Targets = {}
    for context, continuation in requests:
        targets.setdefault(_model_input(context, continuation), set()).update(_scored(context, continuation))
    values = _target_logprobs(model, targets, batch_size, pad_token_id)
    return [sum(values[_model_input(c, t)][pair] for pair in _scored(c, t)) for c, t in requests]


def _model_input(context: list[int], continuation: list[int]) -> tuple[int, ...]:
    return tuple(context + continuation)[:-1]


def _scored(context: list[int], continuation: list[int]) -> list[tuple[int, int]]:
    """The (position of the input, token that follows it) pairs that score the continuation."""
    whole = context + continuation
    return [(p, whole[p + 1]) for p in range(len(context) - 1, len(whole) - 1)]


def _target_logprobs(
    model: PreTrainedModel, targets: Targets, batch_size: int, pad_token_id: int
) -> dict[tuple[int, ...], dict[tuple[int, int], float]]:
    """log p(token | input[: position + 1]) of every target pair of every input."""
    inputs = sorted(targets, key=len, reverse=True)
    first_scored = min(p for pairs in targets.values() for p, _ in pairs)
    shared = shared_prefix_length(inputs, at_most=first_scored)
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = next(model.parameters()).device
    values: dict[tuple[int, ...], dict[tuple[int, int], float]] = {}
    with torch.inference_mode():
        prefix = PrefixCache(model, inputs[0][:shared]) if shared else None
        for start in range(0, len(inputs), batch_size):
            rows = inputs[start : start + batch_size]
            width = max(len(x) for x in rows) - shared
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            keep = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, row in enumerate(rows):
                ids[r, : len(row) - shared] = torch.tensor(row[shared:])
                mask[r, : len(row) - shared] = 1
                for position, _ in targets[row]:
                    keep[r, position - shared] = True
            mask = mask.to(device)
            extra = {}
            if prefix is not None:
                extra["past_key_values"] = prefix.for_rows(len(rows))
                mask = torch.cat([prefix.mask(len(rows), device), mask], dim=1)
            if keeps_logits:
                extra["logits_to_keep"] = keep.to(device)
            logits = model(input_ids=ids.to(device), attention_mask=mask, **extra).logits
            kept = logits if keeps_logits else logits[keep.to(device)]  # (kept positions, vocab), row-major
            logprobs = kept.float().log_softmax(-1)
            where = {(r, int(c) + shared): k for k, (r, c) in enumerate(keep.nonzero().tolist())}
            for r, row in enumerate(rows):
                pairs = sorted(targets[row])
                picked = logprobs[
                    torch.tensor([where[r, p] for p, _ in pairs], device=device),
                    torch.tensor([token for _, token in pairs], device=device),
                ].tolist()
                values[row] = dict(zip(pairs, picked))
    return values
