"""docs/config.md, the run-config reference: generated from the models, current, and complete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
from pydantic import BaseModel, Field

from evomerge.config import RunConfig
from evomerge.config_reference import COMMAND, Section, reference, sections, type_text
from evomerge.merge.methods import get_method, method_names

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def _reachable_models(annotation, found: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """Every model an annotation names, however deeply nested (lists, mappings, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in found:
            found.add(annotation)
            for info in annotation.model_fields.values():
                _reachable_models(info.annotation, found)
        return found
    args = get_args(annotation)
    for arg in args[:1] if get_origin(annotation) is Annotated else args:
        _reachable_models(arg, found)
    return found


def _section_texts(doc: str) -> dict[str, str]:
    """The text under each `<a id="ANCHOR">` of the reference, by anchor."""
    parts = re.split(r'<a id="([^"]+)"></a>', doc)
    return dict(zip(parts[1::2], parts[2::2]))


def test_docs_config_md_is_current():
    committed, generated = DOC.read_text().splitlines(), reference().splitlines()
    if committed != generated:
        line = next(
            (i for i, (old, new) in enumerate(zip(committed, generated)) if old != new),
            min(len(committed), len(generated)),
        )
        pytest.fail(f"docs/config.md is stale (from its line {line + 1}): run `{COMMAND}`", pytrace=False)


def test_every_model_of_the_run_config_has_a_section_listing_each_of_its_fields():
    models = _reachable_models(RunConfig, set())
    names = {model.__name__ for model in models}
    assert {
        "RunConfig",
        "Recipe",
        "SourceSpec",
        "SearchedParam",
        "StackSpace",
        "GenerateSpec",
        "ChoiceSpec",
        "PerplexitySpec",
        "LmEvalSpec",
        "Objective",
        "EarlyStopping",
        "OptimizerConfig",
        "Budget",
    } <= names
    assert {section.model for section in sections()} == models
    texts = _section_texts(DOC.read_text())
    for model in models:
        text = texts.get(model.__name__.lower())
        assert text is not None, f"docs/config.md has no section for {model.__name__}"
        for name in model.model_fields:
            assert f"\n| `{name}` |" in text, f"docs/config.md: {model.__name__} lacks its key '{name}'"


def test_every_field_and_section_is_described():
    for section in sections():
        if section.paths != [""]:
            assert section.model.__dict__.get("__doc__"), f"{section.model.__name__} has no docstring"
        for name, info in section.model.model_fields.items():
            assert info.description, f"{section.model.__name__}.{name}: add Field(description=...)"


def test_sections_name_every_place_a_model_is_written():
    by_model = {section.model.__name__: section for section in sections()}
    assert by_model["Budget"].places == ["budget", "stack_budget"]
    assert by_model["Recipe"].places == ["recipe", "stack.sources[]"]
    assert by_model["SearchedParam"].places == ["genome[]"]
    assert by_model["ChoiceSpec"].title == "`tasks.NAME` with `kind: choice`"


def test_types_defaults_and_bounds_read_from_the_fields():
    doc = DOC.read_text()
    assert "| `confidence` | number | `0.95` | > 0.5, < 1 |" in doc
    assert "| `granularity` | one of: `global`, `layer`, `group`, `kind` | `layer` |" in doc
    assert "| `budget` | mapping ([`budget`](#budget)) | required |" in doc
    assert "| `stop` | list of strings | `[]` |" in doc
    assert "| `template` | string | `'{prompt}'` |" in doc  # quoted: unquoted it would be a YAML mapping


def test_a_string_checked_against_a_registry_names_its_values_through_json_schema_extra():
    class Chooser(BaseModel):
        """A stand-in for a name validated against a registry rather than typed as a Literal."""

        name: str = Field("a", json_schema_extra={"enum": ["a", "b"]}, description="a registered name")

    anchors = {Chooser: Section(Chooser, ["chooser"])}
    assert type_text(Chooser.model_fields["name"], anchors) == "one of: `a`, `b`"


def test_every_merge_method_and_parameter_is_listed():
    texts = _section_texts(DOC.read_text())
    methods = texts["merge-methods"]
    for name in method_names():
        block = methods.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        for spec in get_method(name).params:
            assert f"| `{spec.name}` |" in block, f"docs/config.md: method {name} lacks '{spec.name}'"
