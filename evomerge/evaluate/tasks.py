"""Tasks and the evaluator the search calls.

The evaluator's contract, which keeps held-out numbers honest: `score(model, "search")` is all the optimizer
ever sees; `score(model, "held_out")` is for reports. Both splits are read once, subsampled with a seed,
checked disjoint by content hash, and tokenized once per run; every task is checked (fields, templates,
extraction, sizes) before any candidate is scored, and a mistake is one UsageError line.

A built-in task scores examples in any slice, so that the evaluator can score in chunks and stop a hopeless
candidate early (`score_progressively`); its metric is the mean of per-example values.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.errors import UsageError
from evomerge.evaluate.data import (
    Row,
    check_disjoint,
    check_fields,
    read_rows,
    render,
    shared_rows,
    subsample,
    template_fields,
)
from evomerge.evaluate.generate import answers_match, extracted, greedy_completions
from evomerge.evaluate.loglik import Request, continuation_logprobs
from evomerge.evaluate.prompts import PromptFormat
from evomerge.evaluate.scores import Scores
from evomerge.evaluate.specs import ChoiceSpec, GenerateSpec, PerplexitySpec, TaskSpec

if TYPE_CHECKING:  # lm-eval is optional and slow to import: loaded only for an lm-eval task
    from evomerge.evaluate.lm_eval_task import LmEvalTask

SPLITS = ("search", "held_out")
#: Metrics whose per-example values lie in [0, 1] (early stopping bounds them with a Wilson interval).
UNIT_METRICS = frozenset({"exact_match", "acc", "acc_norm"})


class BuiltinTask(ABC):
    """A task scored by evomerge's own batched scorers: rows read, checked and subsampled per split."""

    def __init__(self, name: str, spec: GenerateSpec | ChoiceSpec | PerplexitySpec) -> None:
        self.name = name
        self.spec = spec
        self.metrics = dict(spec.metrics)
        split_names = {"search": spec.search_split, "held_out": spec.held_out_split}
        rows = {split: read_rows(name, spec.data, spec.subset, split_names[split]) for split in SPLITS}
        fields = self.fields()
        for split in SPLITS:
            if rows[split]:
                check_fields(name, split_names[split], rows[split], fields)
        check_disjoint(name, rows["search"], rows["held_out"], fields)
        self.rows = {
            split: subsample(rows[split], spec.limit, spec.sample_seed, name, split_names[split])
            for split in SPLITS
        }

    def fields(self) -> list[str]:
        """The example fields this task reads (checked present, hashed for disjointness)."""
        return template_fields(self.spec.template)

    def size(self, split: str) -> int:
        return len(self.rows[split])

    @abstractmethod
    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Tokenize both splits (once per run)."""

    @abstractmethod
    def score_slice(
        self, model: PreTrainedModel, split: str, start: int, stop: int
    ) -> dict[str, list[float]]:
        """Per-example metric values of examples [start, stop) of a split."""


class PromptedTask(BuiltinTask):
    """A task that prompts the model with each example (generate, choice), with the spec's k-shot examples,
    system prompt and chat template around it (evaluate/prompts.py)."""

    spec: GenerateSpec | ChoiceSpec

    def __init__(self, name: str, spec: GenerateSpec | ChoiceSpec) -> None:
        super().__init__(name, spec)
        self.shots = self._drawn_shots() if spec.num_fewshot else []

    def _drawn_shots(self) -> list[Row]:
        """`num_fewshot` examples of the fewshot split, drawn with `sample_seed`, none of them an example the
        task scores."""
        spec, split = self.spec, self.spec.fewshot_split
        rows = read_rows(self.name, spec.data, spec.subset, split)
        if len(rows) < spec.num_fewshot:
            raise UsageError(
                f"task '{self.name}': the {split} split has {len(rows)} examples, fewer than num_fewshot "
                f"{spec.num_fewshot}; lower num_fewshot or name a larger fewshot_split"
            )
        check_fields(self.name, split, rows, self.fields())
        shots = subsample(rows, spec.num_fewshot, spec.sample_seed, self.name, split)
        for scored in SPLITS:
            shared = shared_rows(shots, self.rows[scored], self.fields())
            if shared:
                raise UsageError(
                    f"task '{self.name}': a k-shot example of the {split} split is also a {scored} example "
                    f"({render(spec.template, shared[0])!r}); fewshot_split must share no example with them"
                )
        return shots

    @abstractmethod
    def answer(self, row: Row) -> str:
        """The right answer to an example, as a k-shot example shows it."""

    def prompt_format(self, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
        shots = [(render(self.spec.template, row), self.answer(row)) for row in self.shots]
        return PromptFormat(self.name, self.spec, tokenizer, shots)


class GenerateTask(PromptedTask):
    def __init__(self, name: str, spec: GenerateSpec) -> None:
        super().__init__(name, spec)
        self.pattern = _compiled(name, spec.extract)
        golds = [str(row[spec.target]) for split in SPLITS for row in self.rows[split]]
        if self.pattern is not None and all(self.pattern.search(gold) is None for gold in golds):
            raise UsageError(
                f"task '{name}': the extraction regex {spec.extract!r} matches none of the gold answers "
                f"(e.g. {golds[0]!r}); fix `extract`"
            )

    def fields(self) -> list[str]:
        return [*super().fields(), self.spec.target]

    def answer(self, row: Row) -> str:
        return str(row[self.spec.target])

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        layout = self.prompt_format(tokenizer)
        self.prompts = {
            s: [layout.encode(layout.text(render(self.spec.template, r))) for r in self.rows[s]]
            for s in SPLITS
        }
        self.golds = {s: [self._gold(str(r[self.spec.target])) for r in self.rows[s]] for s in SPLITS}
        longest = max(
            len(tokenizer(str(r[self.spec.target]), add_special_tokens=False)["input_ids"])
            for s in SPLITS
            for r in self.rows[s]
        )
        self.max_new_tokens = self.spec.max_new_tokens or longest + 1

    def _gold(self, answer: str) -> str:
        found = extracted(answer, self.pattern)
        return answer if found is None else found

    def score_slice(
        self, model: PreTrainedModel, split: str, start: int, stop: int
    ) -> dict[str, list[float]]:
        completions = greedy_completions(
            model,
            self.tokenizer,
            self.prompts[split][start:stop],
            self.max_new_tokens,
            self.spec.stop,
            self.spec.batch_size,
        )
        numeric = self.spec.match == "numeric"
        golds = self.golds[split][start:stop]
        return {
            "exact_match": [
                float(answers_match(extracted(c, self.pattern), g, numeric))
                for c, g in zip(completions, golds)
            ]
        }


class ChoiceTask(PromptedTask):
    """Log-likelihood of each option after the prompt; `acc` takes the likeliest option, `acc_norm` the
    likeliest per character of the option (lm-eval's definitions)."""

    def __init__(self, name: str, spec: ChoiceSpec) -> None:
        super().__init__(name, spec)
        for split in SPLITS:
            for row in self.rows[split]:
                self._gold_index(row)

    def fields(self) -> list[str]:
        return [*super().fields(), self.spec.target, *([self.spec.choices] if self.spec.choices else [])]

    def _options(self, row: dict) -> list[str]:
        options = self.spec.options if self.spec.options is not None else row[self.spec.choices]
        if not isinstance(options, list) or len(options) < 2:
            raise UsageError(
                f"task '{self.name}': field '{self.spec.choices}' must hold a list of 2 or more options"
            )
        return [str(option) for option in options]

    def _gold_index(self, row: dict) -> int:
        options, gold = self._options(row), row[self.spec.target]
        if isinstance(gold, int) and 0 <= gold < len(options):
            return gold
        if str(gold) in options:
            return options.index(str(gold))
        raise UsageError(
            f"task '{self.name}': target {gold!r} is neither an option nor an option's index ({options})"
        )

    def answer(self, row: Row) -> str:
        return self._options(row)[self._gold_index(row)]

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = tokenizer.pad_token_id or 0
        layout = self.prompt_format(tokenizer)
        self.requests: dict[str, list[list[Request]]] = {}
        for split in SPLITS:
            self.requests[split] = []
            for row in self.rows[split]:
                context = layout.text(render(self.spec.template, row))
                self.requests[split].append(
                    [
                        _encode_pair(layout, context, layout.answer_delimiter + option)
                        for option in self._options(row)
                    ]
                )

    def score_slice(
        self, model: PreTrainedModel, split: str, start: int, stop: int
    ) -> dict[str, list[float]]:
        examples = self.requests[split][start:stop]
        flat = [request for options in examples for request in options]
        logprobs = iter(continuation_logprobs(model, flat, self.spec.batch_size, self.pad))
        acc, acc_norm = [], []
        for options, row in zip(examples, self.rows[split][start:stop]):
            values = [next(logprobs) for _ in options]
            lengths = [len(o) for o in self._options(row)]
            gold = self._gold_index(row)
            acc.append(float(max(range(len(values)), key=values.__getitem__) == gold))
            acc_norm.append(float(max(range(len(values)), key=lambda i: values[i] / lengths[i]) == gold))
        return {"acc": acc, "acc_norm": acc_norm}


class PerplexityTask(BuiltinTask):
    """`nll`: the mean over examples of the text's mean negative log-likelihood per token, every token after
    the first predicted from those before it (the first is the tokenizer's BOS when it adds one)."""

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = tokenizer.pad_token_id or 0
        self.requests = {}
        for split in SPLITS:
            self.requests[split] = []
            for row in self.rows[split]:
                ids = tokenizer(render(self.spec.template, row))["input_ids"]
                if len(ids) < 2:
                    raise UsageError(f"task '{self.name}': an example's text is too short to score: {row}")
                self.requests[split].append((ids[:1], ids[1:]))

    def score_slice(
        self, model: PreTrainedModel, split: str, start: int, stop: int
    ) -> dict[str, list[float]]:
        requests = self.requests[split][start:stop]
        logprobs = continuation_logprobs(model, requests, self.spec.batch_size, self.pad)
        return {"nll": [-lp / len(continuation) for lp, (_, continuation) in zip(logprobs, requests)]}


def _encode_pair(layout: PromptFormat, context: str, continuation: str) -> Request:
    """Context and continuation token ids as lm-eval makes them: the whole text encoded once and split after
    the context's tokens, trailing spaces of the context moved to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = layout.encode(context + continuation)
    context_ids = layout.encode(context)
    return whole[: len(context_ids)], whole[len(context_ids) :]


def _compiled(task: str, pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UsageError(
            f"task '{task}': the extraction regex {pattern!r} is not a valid regex ({error})"
        ) from None


def load_task(name: str, spec: TaskSpec) -> BuiltinTask | LmEvalTask:
    """A task ready to be tokenized: its data read and checked (one UsageError line for any problem)."""
    module, _, cls = spec.task_class.partition(":")
    return getattr(importlib.import_module(module), cls)(name, spec)


@dataclass
class Partial:
    """The per-example values scored so far, per task and metric, out of each task's full size; tasks
    that cannot be scored in slices (lm-eval) appear with their final values once scored."""

    sizes: dict[str, int]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    finals: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(self.scored(task) == size for task, size in self.sizes.items())

    def scored(self, task: str) -> int:
        if task in self.finals:
            return self.sizes[task]
        return len(next(iter(self.values.get(task, {}).values()), []))

    def means(self) -> Scores:
        """The mean of each metric over the examples scored so far (the final scores when complete)."""
        scores = {task: dict(values) for task, values in self.finals.items()}
        for task, metrics in self.values.items():
            scores[task] = {metric: sum(v) / len(v) for metric, v in metrics.items() if v}
        return scores


class Evaluator:
    """Scores a model on every task of a split: `{task: {metric: value}}`."""

    def __init__(self, tasks: list[BuiltinTask | LmEvalTask], tokenizer: PreTrainedTokenizerBase) -> None:
        self.tasks = tasks
        self.tokenizer = tokenizer
        for task in tasks:
            task.prepare(tokenizer)

    def metrics(self) -> dict[str, dict[str, bool]]:
        """Each task's metrics and whether higher is better."""
        return {task.name: task.metrics for task in self.tasks}

    def score(self, model: PreTrainedModel, split: str = "search") -> Scores:
        return self.score_progressively(model, split).means()

    def score_progressively(
        self,
        model: PreTrainedModel,
        split: str = "search",
        chunk_size: int | None = None,
        keep_going: Callable[[Partial], bool] | None = None,
    ) -> Partial:
        """Score in rounds of `chunk_size` examples per built-in task (all at once without it), asking
        `keep_going` after each round; lm-eval tasks, which score only whole, come after the built-in ones.
        Returns what was scored: complete unless `keep_going` said stop."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        builtin = [t for t in self.tasks if isinstance(t, BuiltinTask)]
        partial = Partial({t.name: t.size(split) for t in self.tasks})
        longest = max((t.size(split) for t in builtin), default=0)
        step = chunk_size or max(longest, 1)
        for start in range(0, longest, step):
            for task in builtin:
                if start < task.size(split):
                    values = task.score_slice(model, split, start, min(start + step, task.size(split)))
                    for metric, scored in values.items():
                        partial.values.setdefault(task.name, {}).setdefault(metric, []).extend(scored)
            if keep_going is not None and not partial.complete and not keep_going(partial):
                return partial
        for task in self.tasks:
            if not isinstance(task, BuiltinTask):
                partial.finals[task.name] = task.score(model, split)
        return partial
