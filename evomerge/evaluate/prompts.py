"""What the model reads for one example of a prompted task (generate, choice): its formatted prompt, the
task's k-shot examples before it, a system prompt, and the tokenizer's chat template around them.

Without `chat_template` the text is blocks joined by the task's `fewshot_delimiter`:

    SYSTEM_PROMPT | SHOT_PROMPT + delimiter + SHOT_ANSWER | ... | PROMPT

With it, the messages `[system], (user: SHOT_PROMPT, assistant: SHOT_ANSWER)..., user: PROMPT` rendered by
`tokenizer.apply_chat_template(..., add_generation_prompt=True)`, as lm-eval renders a multi-turn k-shot
prompt; what is scored (a choice's option) then follows the assistant turn's head without a delimiter. The
text is encoded with the tokenizer's special tokens except a BOS the chat template wrote itself (lm-eval's
rule), so that no prompt starts with two.

The shots are drawn once per task, the same k for every example, so every prompt of a task begins with the
same tokens (system prompt, shots, the template's head): the part a KV cache could share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from evomerge.errors import UsageError
from evomerge.evaluate.specs import ChoiceSpec, GenerateSpec, LmEvalSpec

#: A k-shot example: its formatted prompt and its answer.
Shot = tuple[str, str]


def check_chat_template(task: str, spec: GenerateSpec | ChoiceSpec | LmEvalSpec, tokenizer) -> None:
    """Refuse `chat_template: true` for a tokenizer that has no chat template."""
    if spec.chat_template and not tokenizer.chat_template:
        raise UsageError(
            f"task '{task}': chat_template is true but the tokenizer of '{tokenizer.name_or_path}' has no "
            "chat template; set chat_template: false or score a model whose tokenizer has one"
        )


@dataclass(frozen=True)
class PromptFormat:
    """A task's prompt layout: the text around each example's prompt, and how that text is encoded."""

    task: str
    spec: GenerateSpec | ChoiceSpec
    tokenizer: PreTrainedTokenizerBase
    shots: Sequence[Shot]

    def __post_init__(self) -> None:
        check_chat_template(self.task, self.spec, self.tokenizer)

    @property
    def answer_delimiter(self) -> str:
        """Between the full prompt and what is scored after it (a choice's option)."""
        return "" if self.spec.chat_template else self.spec.delimiter

    def text(self, prompt: str) -> str:
        """The whole text before the model's answer to `prompt`."""
        spec = self.spec
        if not spec.chat_template:
            blocks = [
                *([spec.system_prompt] if spec.system_prompt else []),
                *(question + spec.delimiter + answer for question, answer in self.shots),
                prompt,
            ]
            return spec.fewshot_delimiter.join(blocks)
        messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
        for question, answer in self.shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": prompt})
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as error:  # e.g. a template that has no system role
            raise UsageError(
                f"task '{self.task}': the tokenizer's chat template refuses the prompt's messages ({error})"
            ) from None

    def encode(self, text: str) -> list[int]:
        """`text`'s token ids: with the tokenizer's special tokens, unless it begins with the BOS token."""
        bos = self.tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]
