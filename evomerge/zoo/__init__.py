"""The deterministic tiny model zoo: a base Llama and three single-skill experts to merge.

The zoo is what the demo and the tests search over. The package ships the zoo of the default settings as
built (`shipped`); `build` makes it, or a zoo of other settings, from nothing in about two minutes on two
CPU cores: a character-level `LlamaForCausalLM` is first trained on a mixture of three skills restricted to
an *easy* part of their inputs (the *base*: it has every skill's algorithm, but only for easy inputs), then
fine-tuned once per skill on that skill's *full* distribution, with a replay of the other skills' easy data
and an L2-SP pull toward the base (the *experts*: each extends its own skill and keeps the others at the
base's level). Each task vector is then a small extension of one skill, and plain task arithmetic of the
three experts does better over all skills than any single model; docs/zoo.md has the numbers.

Skills (see `SKILLS`; every answer is followed by EOS; the base's easy sub-distribution in brackets):

- ``add``: ``"add 12+05="`` -> ``"710"``. Two two-digit operands, zero-padded; the sum zero-padded to
  three digits and written least-significant digit first (12 + 05 = 017, reversed). [both operands < 50]
- ``reverse``: ``"rev abcde="`` -> ``"edcba"``. Three to six lowercase letters, reversed. [3-4 letters]
- ``shift``: ``"shift abcde="`` -> ``"bcdef"``. Three to six lowercase letters, each replaced by the next
  letter of the alphabet (``z`` -> ``a``). [letters a-m only]

Layout of a zoo directory::

    base/  expert_add/  expert_reverse/  expert_shift/     HF model dirs (safetensors, float32, tokenizer)
    data/<skill>/{train,search,held_out}.jsonl             fields "prompt", "answer"; disjoint prompts
    data/<skill>/base_train.jsonl                          the base's easy examples (no scored prompt)
    zoo.json                                               the manifest (accuracy, merge check), written last

Same settings on the same kind of CPU give bit-identical safetensors; another kind of CPU may give other
weights (torch's kernels follow the instruction set), which is why the default zoo is shipped as built
(docs/zoo.md, "Shipped, not rebuilt"). A zoo's manifest and cache directory carry the hash of its settings,
so a changed setting builds a new zoo instead of reusing an old one.

The package, by job: `settings` (ZooSettings and its hash), `skills` (the skills, their data, the model
names), `tokenizer`, `training`, `check` (accuracy matrix and merge check), `build` (`build_zoo`,
`ensure_zoo`, the manifest), `shipped` (the shipped zoo and its checksums), `ship` (`python -m
evomerge.zoo.ship`, which ships it again). Importing it registers the `zoo:` schemes
(evomerge/references.py): the model references `zoo:NAME` and the task data `zoo:SKILL`. The core never
imports this package by name in code; it loads it as a plug-in the first time it meets the `zoo:` scheme.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import UsageError
from evomerge.references import register_data_scheme, register_model_scheme
from evomerge.zoo.build import ensure_zoo
from evomerge.zoo.skills import SKILLS

ZOO_SCHEME = "zoo"


def zoo_model(name: str) -> Path:
    """The directory of the zoo model a `zoo:NAME` reference names (in the shipped zoo, or in one built
    first if not cached)."""
    zoo = ensure_zoo()
    path = zoo / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in zoo.iterdir() if (p / "config.json").is_file())
        raise UsageError(f"the zoo has no model '{name}'; it has: {', '.join(available)}")
    return path


def zoo_data(skill: str) -> Path:
    """The data directory (one `SPLIT.jsonl` per split) of the skill a `zoo:SKILL` task data names."""
    if skill not in SKILLS:
        raise UsageError(f"the zoo has no skill '{skill}'; it has: {', '.join(SKILLS)}")
    return ensure_zoo() / "data" / skill


register_model_scheme(ZOO_SCHEME, zoo_model)
register_data_scheme(ZOO_SCHEME, zoo_data)
