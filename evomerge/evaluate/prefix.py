"""The prompt prefix that every request of a task shares, run through the model once per call.

The prompts of a task begin with the same tokens: the chat template's head and its system turn, a system
prompt, the k-shot examples (evaluate/prompts.py). On SmolLM2-135M-Instruct with its chat template that is
about half of every prompt. The scorers (generate.py, loglik.py) run that prefix once, as a batch of one, and
start every batch from a copy of its KV cache, so that only each row's own tokens are computed. The logits are
those of the whole prompt to float rounding (the same tokens at the same positions), not bit for bit: the
matrix products have other shapes.

A row after the prefix is laid out as the scorer wants (left padding for generation, right padding for
log-likelihood); the attention mask covers the prefix, and each model derives its positions from that mask
(generation) or from the cache length (right padding), so pad tokens between the prefix and a row's tokens
are masked and take no position.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import Cache, PreTrainedModel

#: Below this many shared tokens the prefix is not worth a separate forward pass and a cache copy per batch
#: (a BOS token alone, as in plain prompts without a chat template, is the common case below it).
MIN_SHARED_TOKENS = 8


def shared_prefix_length(sequences: Sequence[Sequence[int]], at_most: int | None = None) -> int:
    """The length of the longest token prefix every sequence starts with, at most `at_most` (the first
    position whose logits are wanted) and leaving each sequence at least one token of its own (a row must
    feed the model something); 0 when that is under MIN_SHARED_TOKENS."""
    if not sequences:
        return 0
    first = sequences[0]
    length = min(len(s) for s in sequences) - 1
    if at_most is not None:
        length = min(length, at_most)
    for sequence in sequences[1:]:
        common = 0
        while common < length and sequence[common] == first[common]:
            common += 1
        length = common
        if length < MIN_SHARED_TOKENS:
            return 0
    return length if length >= MIN_SHARED_TOKENS else 0


class PrefixCache:
    """The KV cache of a shared prefix, computed once; `for_rows(n)` gives each batch its own copy."""

    def __init__(self, model: PreTrainedModel, prefix: Sequence[int]) -> None:
        self.length = len(prefix)
        device = next(model.parameters()).device
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
        self.cache: Cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values

    def for_rows(self, rows: int) -> Cache:
        """A copy of the prefix's cache repeated for `rows` rows (generation appends to it in place)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache

    def mask(self, rows: int, device: torch.device) -> torch.Tensor:
        """The attention mask columns of the prefix: ones."""
        return torch.ones((rows, self.length), dtype=torch.long, device=device)
