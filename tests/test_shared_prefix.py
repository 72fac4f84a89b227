"""The shared prompt prefix run once (evaluate/prefix.py): the scorers give what they give without it, on the
zoo's real models, and the requests a choice task repeats are run once."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate import prefix
from evomerge.evaluate.generate import greedy_completions
from evomerge.evaluate.loglik import continuation_logprobs
from evomerge.evaluate.prefix import shared_prefix_length
from evomerge.zoo.skills import read_split

#: Two solved examples before every prompt: a prefix of 28 tokens that every prompt shares.
SHOTS = "add 1+2=3\nadd 10+20=30\n"


@pytest.fixture(scope="module")
def zoo(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "expert_add").eval()
    rows = read_split(zoo_dir, "add", "search")[:24]
    prompts = [tokenizer(SHOTS + row["prompt"])["input_ids"] for row in rows]
    return tokenizer, model, rows, prompts


def without_prefix(monkeypatch) -> None:
    monkeypatch.setattr(prefix, "MIN_SHARED_TOKENS", 10**9)


def test_the_shared_prefix_leaves_each_row_a_token_and_stops_at_the_first_scored_position():
    long = list(range(20))
    assert shared_prefix_length([long + [1, 2], long + [3]]) == 20
    assert shared_prefix_length([long, long]) == 19  # each row keeps one token of its own
    assert shared_prefix_length([long + [1], long + [2]], at_most=12) == 12
    assert shared_prefix_length([long + [1], long + [2]], at_most=5) == 0  # under MIN_SHARED_TOKENS
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.slow
def test_generation_from_the_shared_prefix_equals_generation_without_it(zoo, monkeypatch):
    tokenizer, model, _, prompts = zoo
    prompts[5] = tokenizer(SHOTS + "add 1+2=")["input_ids"]  # a shorter row: padding after the prefix
    assert shared_prefix_length(prompts) >= prefix.MIN_SHARED_TOKENS
    shared = greedy_completions(model, tokenizer, prompts, 6, batch_size=8)
    without_prefix(monkeypatch)
    plain = greedy_completions(model, tokenizer, prompts, 6, batch_size=8)
    one_by_one = [greedy_completions(model, tokenizer, [p], 6, batch_size=1)[0] for p in prompts]
    assert shared == plain == one_by_one
    assert len(set(shared)) >= 12  # each prompt's own answer, not one text for all


@pytest.mark.slow
def test_log_likelihood_from_the_shared_prefix_equals_a_plain_forward_per_request(zoo):
    tokenizer, model, rows, prompts = zoo
    requests = [
        (p, tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for p, r in zip(prompts, rows)
    ]
    requests += [(p, tokenizer("9", add_special_tokens=False)["input_ids"]) for p in prompts[:6]]
    values = continuation_logprobs(model, requests, batch_size=8)
    for (context, continuation), value in zip(requests, values):
        with torch.inference_mode():
            logits = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
        by_hand = sum(logits[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))
        assert value == pytest.approx(by_hand, abs=1e-4)


def forward_rows(model, requests, batch_size=64) -> tuple[list[float], list[int]]:
    """The values of continuation_logprobs, and the rows of each forward pass it made."""
    rows = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        return continuation_logprobs(model, requests, batch_size=batch_size), rows
    finally:
        hook.remove()


@pytest.mark.slow
def test_each_context_is_run_once_for_all_its_continuations(zoo):
    tokenizer, model, _, prompts = zoo
    digits = tokenizer("37", add_special_tokens=False)["input_ids"]
    one_token = [(p, [t]) for p in prompts[:4] for t in digits]
    values, rows = forward_rows(model, one_token)
    assert rows == [1, 4]  # the shared prefix, then the 4 contexts: each option is read off its context
    assert len(set(values)) == len(values)
    two_tokens = [(p, [t, u]) for p in prompts[:4] for t in digits for u in digits]
    values, rows = forward_rows(model, two_tokens)
    assert rows == [1, 4, 16]  # then each option's first token, from a copy of its context's cache
    for (context, continuation), value in zip(two_tokens, values):
        with torch.inference_mode():
            logits = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
        by_hand = sum(logits[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))
        assert value == pytest.approx(by_hand, abs=1e-4)
    _, rows = forward_rows(model, two_tokens, batch_size=5)
    assert max(rows) <= 5 and sum(rows[1:]) >= len(two_tokens)  # no pass over batch_size requests
