"""Training the zoo's models: the base on the skills' easy data, then one expert per skill from the base.

Every step is seeded and runs with deterministic kernels, so the same settings with the same torch on the
same kind of CPU give bit-identical weights. Another kind of CPU runs torch's kernels for its own instruction
set, whose float32 sums round differently, and may give other weights: the default zoo is shipped as built
(`evomerge.zoo.shipped`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from evomerge.families import batch_order, deterministic_torch, learning_rate
from evomerge.zoo.settings import ZooSettings
from evomerge.zoo.skills import BASE_MODEL, expert_name
from evomerge.zoo.tokenizer import build_tokenizer


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
    for step, batch in enumerate(batch_order(len(input_ids), settings.batch_size, steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, settings.warmup_fraction)
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


def _base_mixture(base_train: dict[str, list[dict[str, str]]], settings: ZooSettings) -> list[dict[str, str]]:
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


def _save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, model_dir: Path) -> None:
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)


def train_models(
    settings: ZooSettings,
    splits: dict[str, dict[str, list[dict[str, str]]]],
    base_train: dict[str, list[dict[str, str]]],
    out_dir: Path,
    progress: bool,
) -> None:
    """Train the base on every skill's easy data, then each expert from the base on its own skill (its full
    `train` split, with replay), saving each model directory under out_dir."""
    tokenizer = build_tokenizer()
    total_steps = settings.base_steps + settings.expert_steps * len(splits)
    with deterministic_torch(), tqdm(total=total_steps, desc="zoo: base", disable=not progress) as bar:
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(_model_config(settings, tokenizer))
        model.generation_config = _generation_config(tokenizer)
        mixture = _base_mixture(base_train, settings)
        data = _training_tensors(tokenizer, mixture)
        _train(model, data, settings.base_steps, settings.base_lr, settings, settings.seed, bar)
        _save_model(model, tokenizer, out_dir / BASE_MODEL)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}

        for index, (name, skill_data) in enumerate(splits.items(), start=1):
            bar.set_description(f"zoo: {expert_name(name)}")
            model.load_state_dict(base_state)
            data = _training_tensors(tokenizer, _expert_rows(name, skill_data["train"], base_train, settings))
            seed = settings.seed + index
            steps, lr, anchor = settings.expert_steps, settings.expert_lr, settings.expert_anchor
            _train(model, data, steps, lr, settings, seed, bar, anchor)
            _save_model(model, tokenizer, out_dir / expert_name(name))
