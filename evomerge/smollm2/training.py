"""Fine-tuning one expert from the base on its skill's train split: full fine-tuning, AdamW, seeded.

The loss is the cross-entropy of the answer and its end-of-turn token only. The model's pad token is its
end-of-turn token, so labels are built here from each row's prompt length (a collator that masks pad tokens
would mask the answer's end too), and the attention mask from each row's length. Only the answer positions
go through the 49k-vocabulary output head (the decoder's hidden states are selected first), which is most of
what a full head would cost on a short answer.

Every step is seeded and runs with deterministic kernels, so the same settings on the same machine give the
same weights.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.families import batch_order, learning_rate
from evomerge.smollm2.settings import FamilySettings

Encoded = tuple[list[int], int]  # token ids of chat prompt + answer + end of turn, prompt length


def encoded_rows(tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, str]]) -> list[Encoded]:
    """Each row as ``chat_prompt answer EOS`` token ids and the number of prompt tokens."""
    encoded = []
    for row in rows:
        prompt = tokenizer(row["chat_prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        encoded.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    return encoded


def padded_batch(rows: list[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, their attention mask, and labels (-100 but on answer and EOS)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
    return input_ids, attention_mask, labels


def answer_loss(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens, the output head applied to their positions only."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][scored])
    return F.cross_entropy(logits.float(), targets[scored])


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, str]],
    settings: FamilySettings,
    seed: int,
    bar: tqdm,
) -> dict:
    """Train every weight of `model` in place on `rows` for `settings.expert_steps` steps; the record of the
    run (the loss every tenth of it, seconds)."""
    started = time.perf_counter()
    data = encoded_rows(tokenizer, rows)
    steps = settings.expert_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses: dict[int, float] = {}
    model.train()
    for step, batch in enumerate(batch_order(len(data), settings.batch_size, steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, settings.lr, settings.warmup_fraction)
        loss = answer_loss(model, *padded_batch([data[i] for i in batch], tokenizer.pad_token_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            losses[step] = round(loss.item(), 4)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
    optimizer.zero_grad(set_to_none=True)  # the gradients' memory back before the next model loads
    model.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "loss": losses}
