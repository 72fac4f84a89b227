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
  wiki:                           # mean negative log-likelihood of a text
    kind: perplexity
    data: data/wiki
    text: "{text}"
  gsm:                            # an lm-eval task on the candidate in memory
    kind: lm_eval
    task: my_gsm_search           # lm-eval task name (registry, or a YAML under include_path)
    held_out_task: my_gsm_held_out
    include_path: tasks/
```

Each kind declares its metrics (first: the default) and whether higher is better; objectives are checked
against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int | None = Field(
        None, ge=1, description="a seeded random subsample of this many examples per split"
    )
    sample_seed: int = Field(0, description="seed of that subsample")
    batch_size: int = Field(64, ge=1, description="examples (or options) per forward pass")


class _DataSpec(_Spec):
    """A task whose examples come from a data set read with `datasets`."""

    data: str = Field(description="zoo:SKILL, a directory with one file per split, or a hub data set name")
    subset: str | None = Field(None, description="the hub data set's configuration name")
    search_split: str = Field("search", description="the split candidates are scored on during the search")
    held_out_split: str = Field(
        "held_out", description="the split reported candidates are scored on, never shown to the optimizer "
        "(checked to share no example with search_split)",
    )
    template: str = Field("{prompt}", description="the prompt, with {field} placeholders")


class GenerateSpec(_DataSpec):
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

    #: metric -> higher is better (the first is the default metric of an objective)
    metrics: ClassVar[dict[str, bool]] = {"exact_match": True}

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("a stop string is empty")
        return stop


class ChoiceSpec(_DataSpec):
    """Log-likelihood of each option after the prompt (metrics: acc, the likeliest option is right; acc_norm,
    the likeliest per character). Give either `choices` or `options`."""

    kind: Literal["choice"] = Field(description="the task kind")
    target: str = Field("answer", description="the field holding the right option's index or text")
    choices: str | None = Field(None, description="the field holding each example's list of options")
    options: list[str] | None = Field(
        None, min_length=2, description="the options, when every example shares them"
    )
    delimiter: str = Field(" ", description="between the prompt and an option")

    metrics: ClassVar[dict[str, bool]] = {"acc": True, "acc_norm": True}

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
    template: str = Field("{text}", description="the text whose tokens are scored, with {field} placeholders")

    metrics: ClassVar[dict[str, bool]] = {"nll": False}


class LmEvalSpec(_Spec):
    """An lm-evaluation-harness task, run on the candidate in memory; its metrics are those its task declares,
    and an objective on it names one."""

    kind: Literal["lm_eval"] = Field(description="the task kind")
    task: str = Field(description="the lm-eval task of the search split")
    held_out_task: str = Field(description="the lm-eval task of the held-out split (disjoint documents)")
    include_path: Path | None = Field(None, description="a directory of local lm-eval task YAMLs")

    #: lm-eval tasks declare their own metrics; they are checked when the task is loaded.
    metrics: ClassVar[dict[str, bool]] = {}


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "generate")
    return getattr(value, "kind", "generate")


TaskSpec = Annotated[
    Annotated[GenerateSpec, Tag("generate")]
    | Annotated[ChoiceSpec, Tag("choice")]
    | Annotated[PerplexitySpec, Tag("perplexity")]
    | Annotated[LmEvalSpec, Tag("lm_eval")],
    Discriminator(_kind),
]
