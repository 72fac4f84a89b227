"""Batched log-likelihood: the scorer of `choice` and `perplexity` tasks.

A request is a (context, continuation) pair of token-id lists; its value is sum log p(continuation | context)
under the model and the number of continuation tokens. Requests are sorted by length and right-padded into
batches: one forward pass per batch, log-softmax only at the continuation positions. The same code runs on
CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

Request = tuple[list[int], list[int]]


def continuation_logprobs(
    model: PreTrainedModel, requests: Sequence[Request], batch_size: int = 64, pad_token_id: int = 0
) -> list[float]:
    """sum_t log p(continuation_t | context, continuation_<t) of each request, in the order of `requests`.

    As in lm-eval, the model reads (context + continuation)[:-1] and the logits at the last
    len(continuation) positions score the continuation.
    """
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    scores = [0.0] * len(requests)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs = [(requests[i][0] + requests[i][1])[:-1] for i in rows]
            width = max(len(x) for x in inputs)
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, x in enumerate(inputs):
                ids[r, : len(x)] = torch.tensor(x)
                mask[r, : len(x)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(rows):
                context, continuation = requests[i]
                end = len(inputs[r])
                positions = logits[r, end - len(continuation) : end].float().log_softmax(-1)
                targets = torch.tensor(continuation, device=positions.device)
                scores[i] = positions.gather(1, targets[:, None]).sum().item()
    return scores
