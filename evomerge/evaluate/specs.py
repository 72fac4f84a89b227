"""Task specs: what a run scores its candidates on, as it is written in the run config.

```yaml
tasks:
  add:                            # greedy generation, exact match (the default kind)
    data: zoo:add                 # zoo:SKILL, a directory with SPLIT.jsonl/.json/.csv/.parquet, or a hub name
    limit: 100                    # a seeded random subsample of this many examples per split
  boolq:                          # log-likelihood of each option
    kind: choice
    data: super_glue
    subset: boolq
    search_split: validation
    held_out_split: test
    template: "{passage}\\nQuestion: {question}?\\nAnswer:"
    options: ["no", "yes"]        # or `choices: FIELD` naming a list field of each example
    target: label                 # the index or the text of the right option
  gsm8k:                          # an instruct model's prompt
    data: data/gsm8k              # search.jsonl, held_out.jsonl and train.jsonl
    template: "{question}"
    chat_template: true           # a user turn in the tokenizer's chat template
    system_prompt: "Solve the problem. End with '#### N'."
    num_fewshot: 5                # worked examples drawn (sample_seed) from fewshot_split, as prior turns
    fewshot_split: train
    extract: "#### (-?[\\\\d,]+)"
    match: numeric
  wiki:                           # mean negative log-likelihood of a text
    kind: perplexity
    data: data/wiki
    template: "{text}"
  gsm:                            # an lm-eval task on the candidate in memory
    kind: lm_eval
    task: my_gsm_search           # lm-eval task name (registry, or a YAML under include_path)
    held_out_task: my_gsm_held_out
    include_path: tasks/
```

Each kind declares its metrics (first: the default) and whether higher is better, which objectives are
checked against; how it scores, in words; and the class that scores it (`task_class`, imported only when a run
loads its tasks, since scoring needs torch or lm-eval). Adding a kind: a module with its spec (a `_DataSpec`
or `_Spec` subclass with a `kind` literal) and its task class (a `BuiltinTask` subclass), and one line in
`TASK_SPECS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from evomerge.evaluate.data import checked_template

#: A `{field}` template, checked when the config is read (data.checked_template).
Template = Annotated[str, AfterValidator(checked_template)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int | None = Field(
        None, ge=1, description="a seeded random subsample of this many examples per split"
    )
    sample_seed: int = Field(0, description="seed of that subsample")
    batch_size: int = Field(64, ge=1, description="examples (or options) per forward pass")

    #: metric -> higher is better (the first is the default metric of an objective); empty when the task
    #: declares its metrics itself when loaded
    metrics: ClassVar[dict[str, bool]] = {}
    #: how the kind scores a model, in words (model cards and reports)
    scored: ClassVar[str] = ""
    #: "module:Class" of the task that scores this kind
    task_class: ClassVar[str] = ""

    def describe(self) -> str:
        """How this task is scored and on what data, in a few words."""
        sample = (
            f"a seeded random subsample of {self.limit} examples per split" if self.limit else "every example"
        )
        return f"{getattr(self, 'data', '')}, {sample}; {self.scored}"


class _DataSpec(_Spec):
    """A task whose examples come from a data set read with `datasets`."""

    data: str = Field(description="zoo:SKILL, a directory with one file per split, or a hub data set name")
    subset: str | None = Field(None, description="the hub data set's configuration name")
    search_split: str = Field("search", description="the split candidates are scored on during the search")
    held_out_split: str = Field(
        "held_out",
        description="the split reported candidates are scored on, never shown to the optimizer "
        "(checked to share no example with search_split)",
    )
    template: Template = Field("{prompt}", description="the prompt, with {field} placeholders")


class _InstructSpec(_Spec):
    """How an instruct model is prompted: the tokenizer's chat template, a system prompt, k-shot examples."""

    chat_template: bool = Field(
        False,
        description="wrap the prompt as a user turn in the tokenizer's chat template "
        "(add_generation_prompt); refused for a tokenizer without one",
    )
    system_prompt: str | None = Field(
        None,
        description="a system turn before the prompt (without chat_template: a text block before it)",
    )
    num_fewshot: int = Field(
        0,
        ge=0,
        description="worked examples before the prompt, drawn with sample_seed (built-in kinds: the same k "
        "from fewshot_split for every example; lm_eval: the task's own draw, 0 leaves its YAML's count); "
        "with chat_template they are prior user and assistant turns",
    )


class _PromptSpec(_InstructSpec, _DataSpec):
    """A task that prompts the model with a formatted example (evomerge/evaluate/prompts.py: the layout)."""

    delimiter: str = Field(
        " ", description="between a prompt and its answer (a k-shot example's answer, a choice's option)"
    )
    fewshot_split: str = Field(
        "train",
        description="the split k-shot examples are drawn from, neither search_split nor held_out_split "
        "(read only when num_fewshot > 0)",
    )
    fewshot_delimiter: str = Field(
        "\n\n",
        description="without chat_template: between the system prompt, the k-shot examples and the prompt",
    )

    @model_validator(mode="after")
    def _fewshot_split_apart(self) -> _PromptSpec:
        scored = {self.search_split: "search_split", self.held_out_split: "held_out_split"}
        if self.num_fewshot and self.fewshot_split in scored:
            raise ValueError(
                f"fewshot_split '{self.fewshot_split}' is the task's {scored[self.fewshot_split]}; draw the "
                "k-shot examples from another split (e.g. train)"
            )
        return self

    def describe(self) -> str:
        prompting = [
            *([f"{self.num_fewshot}-shot"] if self.num_fewshot else []),
            *(["a system prompt"] if self.system_prompt else []),
            *(["the chat template"] if self.chat_template else []),
        ]
        return super().describe() + (f" ({', '.join(prompting)})" if prompting else "")


class GenerateSpec(_PromptSpec):
    """Greedy generation from the prompt, scored by matching the answer to the gold one (metric: exact_match).
    The default kind."""

    kind: Literal["generate"] = Field("generate", description="the task kind (generate when left out)")
    target: str = Field("answer", description="the field holding the gold answer")
    max_new_tokens: int | None = Field(None, ge=1, description="default: the longest gold answer + 1 token")
    stop: list[str] = Field(default_factory=list, description="a completion ends before the first of these")
    extract: str | None = Field(
        None,
        description="regex applied to completions and gold answers; its first group (or whole match) counts",
    )
    match: Literal["exact", "numeric"] = Field(
        "exact",
        description="exact: equal strings after stripping whitespace; numeric: equal numbers (to 1e-6 "
        "relative)",
    )

    metrics: ClassVar[dict[str, bool]] = {"exact_match": True}
    scored: ClassVar[str] = "greedy generation, exact match of the answer"
    task_class: ClassVar[str] = "evomerge.evaluate.tasks:GenerateTask"

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("a stop string is empty")
        return stop


class ChoiceSpec(_PromptSpec):
    """Log-likelihood of each option after the prompt (metrics: acc, the likeliest option is right; acc_norm,
    the likeliest per character). Give either `choices` or `options`. With chat_template an option follows the
    assistant turn's head directly (no delimiter), as in lm-eval."""

    kind: Literal["choice"] = Field(description="the task kind")
    target: str = Field("answer", description="the field holding the right option's index or text")
    choices: str | None = Field(None, description="the field holding each example's list of options")
    options: list[str] | None = Field(
        None, min_length=2, description="the options, when every example shares them"
    )

    metrics: ClassVar[dict[str, bool]] = {"acc": True, "acc_norm": True}
    scored: ClassVar[str] = "log-likelihood of each option, accuracy of the most likely"
    task_class: ClassVar[str] = "evomerge.evaluate.tasks:ChoiceTask"

    @model_validator(mode="after")
    def _one_source_of_options(self) -> ChoiceSpec:
        if (self.choices is None) == (self.options is None):
            raise ValueError(
                "a choice task names either `choices` (a field with each example's options) or `options`"
            )
        return self


class PerplexitySpec(_DataSpec):
    """Mean negative log-likelihood per token of a text, averaged over examples (metric: nll, lower is
    better)."""

    kind: Literal["perplexity"] = Field(description="the task kind")
    template: Template = Field(
        "{text}", description="the text whose tokens are scored, with {field} placeholders"
    )

    metrics: ClassVar[dict[str, bool]] = {"nll": False}
    scored: ClassVar[str] = "mean negative log-likelihood of the text"
    task_class: ClassVar[str] = "evomerge.evaluate.tasks:PerplexityTask"


class LmEvalSpec(_InstructSpec):
    """An lm-evaluation-harness task, run on the candidate in memory; its metrics are those its task declares,
    and an objective on it names one. chat_template, system_prompt and num_fewshot are passed to lm-eval
    (its k-shot examples come from the task's own fewshot split)."""

    kind: Literal["lm_eval"] = Field(description="the task kind")
    task: str = Field(
        description="the lm-eval task (a registry name, or a YAML's under include_path) of the search "
        "split, or of both splits when there is no held_out_task"
    )
    held_out_task: str | None = Field(
        None,
        description="the lm-eval task of the held-out split (disjoint documents); without it, `task`'s "
        "evaluation documents are split into search and held-out by a seeded hash of each document",
    )
    held_out_fraction: float = Field(
        0.5, gt=0, lt=1, description="without held_out_task: the share of `task`'s documents held out"
    )
    split_seed: int = Field(0, description="without held_out_task: the seed of the hash that splits them")
    include_path: Path | None = Field(None, description="a directory of local lm-eval task YAMLs")

    # lm-eval tasks declare their own metrics (in their YAML); they are checked when the task is loaded
    task_class: ClassVar[str] = "evomerge.evaluate.lm_eval_task:LmEvalTask"

    def describe(self) -> str:
        if self.held_out_task is None:
            return (
                f"the lm-eval task `{self.task}`, its documents split by a hash (seed {self.split_seed}): "
                f"{self.held_out_fraction:g} held out"
            )
        return f"the lm-eval task `{self.task}` (held-out: `{self.held_out_task}`)"


#: The registered task kinds: one line per kind.
TASK_SPECS: tuple[type[_Spec], ...] = (GenerateSpec, ChoiceSpec, PerplexitySpec, LmEvalSpec)
DEFAULT_KIND = "generate"


def kind_of(spec: type[_Spec]) -> str:
    """The `kind` a spec class declares (its field's literal)."""
    return get_args(spec.model_fields["kind"].annotation)[0]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", DEFAULT_KIND)
    return getattr(value, "kind", DEFAULT_KIND)


#: A task of the run config: the spec of its `kind` (default: generate).
TaskSpec = Annotated[
    Union[tuple(Annotated[spec, Tag(kind_of(spec))] for spec in TASK_SPECS)],  # noqa: UP007 (no `|` form)
    Discriminator(_kind),
]
