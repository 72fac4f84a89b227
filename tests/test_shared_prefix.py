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


@pytest.mark.slow
def test_requests_with_the_same_model_input_are_run_once(zoo):
    """Two options that differ only in their last token read the same input: one row of one batch."""
    tokenizer, model, _, prompts = zoo
    requests = [(p, [t]) for p in prompts[:4] for t in tokenizer("37", add_special_tokens=False)["input_ids"]]
    rows = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        values = continuation_logprobs(model, requests, batch_size=64)
    finally:
        hook.remove()
    assert rows == [1, 4]  # the shared prefix, then the 4 distinct inputs of the 8 requests
    assert len(set(values)) == len(values)
