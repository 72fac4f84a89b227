"""Batched log-likelihood: the scorer of `choice` and `perplexity` tasks.

A request is a (context, continuation) pair of token-id lists; its value is sum log p(continuation | context)
under the model, the log-probability of each continuation token given the context and the tokens before it
(lm-eval's definition). What keeps it fast on a model with a large vocabulary (measured in
experiments/bench_eval.py):

- the prefix every context shares (chat template, system prompt, k-shot examples) is run once, and each batch
  starts from its KV cache (evaluate/prefix.py);
- each context is run once for all its continuations (a choice's options): a batch first runs its distinct
  contexts, then each continuation from a copy of its context's KV cache (so options that differ only in
  their last token, which lm-eval groups, cost nothing more);
- the output head is applied at the scored positions only (`logits_to_keep` as a boolean mask), not at every
  position of every row: on SmolLM2 the head is a 49152 x 576 matrix, a fifth of the model's work per token,
  and a batch's full logits would be hundreds of megabytes;
- contexts are sorted by length and right-padded; a continuation's positions follow its own context's
  length (explicit `position_ids`), so the padding between them takes none.

A batch holds at most `batch_size` requests. The same code runs on CPU and GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from evomerge.evaluate.prefix import PrefixCache, shared_prefix_length

Request = tuple[list[int], list[int]]
Tokens = tuple[int, ...]


def continuation_logprobs(
    model: PreTrainedModel, requests: Sequence[Request], batch_size: int = 64, pad_token_id: int = 0
) -> list[float]:
    """sum_t log p(continuation_t | context, continuation_<t) of each request, in the order of `requests`."""
    if not requests:
        return []
    options: dict[Tokens, list[Tokens]] = {}
    for context, continuation in requests:
        known = options.setdefault(tuple(context), [])
        if tuple(continuation) not in known:
            known.append(tuple(continuation))
    contexts = sorted(options, key=len, reverse=True)
    shared = shared_prefix_length(contexts)  # each context keeps a token of its own: its last is scored
    scorer = _BatchScorer(model, shared, pad_token_id)
    values: dict[tuple[Tokens, Tokens], float] = {}
    with torch.inference_mode():
        prefix = PrefixCache(model, contexts[0][:shared]) if shared else None
        for batch in _batches(contexts, options, batch_size):
            values.update(scorer.logprobs(batch, prefix))
    return [values[tuple(context), tuple(continuation)] for context, continuation in requests]


def _batches(
    contexts: list[Tokens], options: dict[Tokens, list[Tokens]], batch_size: int
) -> Iterator[list[tuple[Tokens, Tokens]]]:
    """Requests in batches of at most `batch_size`, longest contexts first, each context's continuations
    together (longest first) so that a batch runs few distinct contexts."""
    batch: list[tuple[Tokens, Tokens]] = []
    for context in contexts:
        for continuation in sorted(options[context], key=len, reverse=True):
            batch.append((context, continuation))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


class _BatchScorer:
    """Scores one batch: its distinct contexts in one forward pass (from the shared prefix's cache), then
    every continuation's tokens but the last in a second one, from its context's cache."""

    def __init__(self, model: PreTrainedModel, shared: int, pad_token_id: int) -> None:
        self.model = model
        self.shared = shared
        self.pad = pad_token_id
        self.device = next(model.parameters()).device
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def logprobs(
        self, batch: list[tuple[Tokens, Tokens]], prefix: PrefixCache | None
    ) -> dict[tuple[Tokens, Tokens], float]:
        contexts = list(dict.fromkeys(context for context, _ in batch))
        row_of = {context: r for r, context in enumerate(contexts)}
        own = [context[self.shared :] for context in contexts]
        ids, mask = self._right_padded(own)
        last = torch.zeros_like(mask, dtype=torch.bool)
        for r, tokens in enumerate(own):
            last[r, len(tokens) - 1] = True
        extra = {}
        if prefix is not None:
            extra["past_key_values"] = prefix.for_rows(len(contexts))
            mask = torch.cat([prefix.mask(len(contexts), self.device), mask], dim=1)
        output = self._forward(ids, mask, last, use_cache=True, **extra)
        first = output.logits.float().log_softmax(-1)  # row r: the token after context r
        first_tokens = first[
            torch.tensor([row_of[context] for context, _ in batch], device=self.device),
            torch.tensor([continuation[0] for _, continuation in batch], device=self.device),
        ]
        values = dict(zip(batch, first_tokens.tolist()))
        longer = [(context, continuation) for context, continuation in batch if len(continuation) > 1]
        if not longer:
            return values
        rows = torch.tensor([row_of[context] for context, _ in longer], device=self.device)
        cache = output.past_key_values
        cache.batch_select_indices(rows)
        tails, tail_mask = self._right_padded([continuation[:-1] for _, continuation in longer])
        starts = torch.tensor([len(context) for context, _ in longer])  # its first token follows its context
        positions = (starts[:, None] + torch.arange(tails.shape[1])[None, :]).to(self.device)
        mask = torch.cat([mask[rows], tail_mask], dim=1)
        output = self._forward(tails, mask, tail_mask.bool(), past_key_values=cache, position_ids=positions)
        logprobs = output.logits.float().log_softmax(-1)  # the kept positions, row by row
        targets = [token for _, continuation in longer for token in continuation[1:]]
        picked = logprobs[
            torch.arange(len(targets), device=self.device), torch.tensor(targets, device=self.device)
        ].tolist()
        offset = 0
        for request in longer:
            count = len(request[1]) - 1
            values[request] += sum(picked[offset : offset + count])
            offset += count
        return values

    def _right_padded(self, rows: list[Tokens]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, **extra):
        """The model's output with logits at the `keep` positions only, flattened row by row."""
        if self.keeps_logits:
            return self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra)
        output = self.model(input_ids=ids, attention_mask=mask, **extra)
        output.logits = output.logits[keep]
        return output
