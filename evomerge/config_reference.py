"""The run-config reference, docs/config.md, generated from the pydantic models of the run config.

`python -m evomerge.config_reference > docs/config.md` writes it, and tests/test_config_reference.py fails
while the committed file differs, so a key added, renamed or re-described in a model cannot leave the
reference behind. Everything comes from the models: the sections from walking `RunConfig`'s fields down to
every model they nest, each key's type and default from its annotation, its bounds from its `Field` (`ge`,
`gt`, `le`, `lt`, `min_length`, `max_length`), its description from `Field(description=...)` and each
section's introduction from its model's docstring. The merge methods' parameters (the keys of a recipe's
sources and `parameters`) come from the method registry.

A string field validated against a registry rather than typed as a `Literal` names its allowed values with
`Field(json_schema_extra={"enum": [...]})`, which pydantic's JSON schema shows as well.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from evomerge.config import RunConfig
from evomerge.merge.methods import get_method, method_names

COMMAND = "python -m evomerge.config_reference > docs/config.md"
SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", Any: "any value"}


@dataclass
class Section:
    """One model of the run config and the places it is written (`budget`, `stack_budget`, ...)."""

    model: type[BaseModel]
    paths: list[str] = field(default_factory=list)
    tagged: bool = False  # reached as one member of a union of models, told apart by its tag field

    @property
    def anchor(self) -> str:
        return self.model.__name__.lower()

    @property
    def tag(self) -> str | None:
        """`key: value` of the field that tells this model from the other members of its union (its only
        single-value `Literal` field), when it is one of several."""
        if not self.tagged:
            return None
        for name, info in self.model.model_fields.items():
            annotation = _unwrapped(info.annotation)
            if get_origin(annotation) is Literal and len(get_args(annotation)) == 1:
                return f"{name}: {get_args(annotation)[0]}"
        return None

    @property
    def places(self) -> list[str]:
        """Its paths, the shallowest first (`budget` before `stack_budget`, `recipe` before
        `stack.sources[]`)."""
        return sorted(self.paths, key=lambda path: (path.count(".") + path.count("["), len(path)))

    @property
    def title(self) -> str:
        places = ", ".join(f"`{path}`" for path in self.places) if self.paths != [""] else "The top level"
        return f"{places} with `{self.tag}`" if self.tag else places


def sections(root: type[BaseModel] = RunConfig) -> list[Section]:
    """Every model a run config nests, in the order its fields reach them, each with its places."""
    found: dict[type[BaseModel], Section] = {}

    def visit(model: type[BaseModel], path: str, tagged: bool) -> None:
        if model in found:
            found[model].paths.append(path)
            return
        found[model] = Section(model, [path], tagged)
        for name, info in model.model_fields.items():
            for child, suffix, in_union in _nested_models(info.annotation):
                visit(child, f"{path}.{name}{suffix}" if path else f"{name}{suffix}", in_union)

    visit(root, "", False)
    return list(found.values())


def _nested_models(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str, bool]]:
    """The models an annotation holds: (model, where it sits below the key, whether it is one of several)."""
    annotation = _unwrapped(annotation)
    if _is_model(annotation):
        return [(annotation, suffix, False)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return _nested_models(args[0], suffix + "[]")
    if origin is dict:
        return _nested_models(args[1], suffix + ".NAME")
    if _is_union(annotation):
        members = [_unwrapped(arg) for arg in args if arg is not type(None)]
        several = sum(_is_model(member) for member in members) > 1
        return [
            (model, place, several or inner)
            for member in members
            for model, place, inner in _nested_models(member, suffix)
        ]
    return []


def _unwrapped(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def type_text(info: FieldInfo, anchors: dict[type[BaseModel], Section]) -> str:
    """A field's type in words: `number`, `one of: a, b`, `list of ...`, a link to a nested model's
    section."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "enum" in extra:
        return _one_of(extra["enum"])
    return _annotation_text(info.annotation, anchors)


def _annotation_text(annotation: Any, anchors: dict[type[BaseModel], Section], plural: bool = False) -> str:
    """`plural`: the type of a list's entries or a mapping's keys and values (`strings`, `mappings`)."""
    annotation = _unwrapped(annotation)
    mapping = "mappings" if plural else "mapping"
    if annotation in SCALARS:
        return SCALARS[annotation] + ("s" if plural and annotation is not Any else "")
    if _is_model(annotation):
        return f"{mapping} ({_model_link(anchors[annotation])})"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return _one_of(args)
    if origin is list:
        return f"{'lists' if plural else 'list'} of {_annotation_text(args[0], anchors, plural=True)}"
    if origin is dict:
        keys, values = (_annotation_text(arg, anchors, plural=True) for arg in args)
        return f"{mapping} of {keys} to {values}"
    if _is_union(annotation):
        members = [_unwrapped(arg) for arg in args if arg is not type(None)]
        if len(members) == 1:
            return _annotation_text(members[0], anchors, plural)
        if all(_is_model(member) for member in members):
            links = ", ".join(_model_link(anchors[member]) for member in members)
            return f"{mapping}, one of: {links}"
        return " or ".join(_annotation_text(member, anchors, plural) for member in members)
    raise TypeError(f"no words for the type {annotation!r}; teach evomerge/config_reference.py")


def _model_link(section: Section) -> str:
    name = section.tag.split(": ")[1] if section.tag else section.places[0]
    return f"[`{name}`](#{section.anchor})"


def _one_of(values: Any) -> str:
    return "one of: " + ", ".join(f"`{value}`" for value in values)


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return _inline_yaml(info.default_factory())
    if info.default is PydanticUndefined:
        return "required"
    if info.default is None:
        return "not set"
    if isinstance(info.default, BaseModel):
        return "its keys' defaults"
    return _inline_yaml(info.default)


def _inline_yaml(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and not value.isprintable():  # "\n\n": escaped, on one line
        return f"`{json.dumps(value)}`"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def constraints_text(info: FieldInfo) -> str:
    """The bounds a field's `Field(...)` sets, in words."""
    words = []
    is_text = _unwrapped(info.annotation) is str
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            empty = is_text and item.min_length == 1
            words.append("not empty" if empty else _count("at least", item.min_length))
        elif isinstance(item, annotated_types.MaxLen):
            words.append(_count("at most", item.max_length))
    return ", ".join(words)


def _count(bound: str, count: int) -> str:
    return f"{bound} {count} {'entry' if count == 1 else 'entries'}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _docstring(model: type) -> str:
    doc = model.__dict__.get("__doc__")  # the class's own docstring, not one inherited from BaseModel
    return inspect.cleandoc(doc) if doc else ""


def section_text(section: Section, anchors: dict[type[BaseModel], Section]) -> str:
    lines = [f'<a id="{section.anchor}"></a>', "", f"## {section.title}", ""]
    doc = _docstring(section.model)
    if doc:
        lines += [doc, ""]
    if section.model.model_config.get("extra") == "allow":
        lines += ["Keys other than those below are accepted too.", ""]
    lines += ["| key | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for name, info in section.model.model_fields.items():
        cells = [
            f"`{name}`",
            type_text(info, anchors),
            default_text(info),
            constraints_text(info),
            info.description or "",
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def methods_text() -> str:
    """The merge methods a recipe names and the parameters each takes, from the method registry."""
    lines = [
        '<a id="merge-methods"></a>',
        "",
        "## Merge methods (`recipe.method`) and their parameters",
        "",
        "A per-source parameter is a key of each entry of `recipe.sources`, a global one a key of "
        "`recipe.parameters`. A number can be a scalar, a list with one value per layer, "
        "`{gradient: [first, ..., last]}` or a mapping by module kind (embedding, attention, mlp, norm, "
        "head, default) of those.",
    ]
    for name in method_names():
        method = get_method(name)
        count = "exactly" if method.min_sources == method.max_sources else "at least"
        sources = f"{count} {method.min_sources} source{'s' if method.min_sources > 1 else ''}"
        needs = "a base and " if method.needs_base else ""
        reference = f" ({method.reference})" if method.reference else ""
        lines += ["", f"### `{name}`", "", f"Takes {needs}{sources}{reference}.", ""]
        if not method.params:
            lines.append("No parameters.")
            continue
        lines += ["| parameter | scope | default | range | description |", "| --- | --- | --- | --- | --- |"]
        for spec in method.params:
            scope = "per source" if spec.scope == "source" else "global"
            kind_range = "true or false" if spec.kind == "bool" else spec.range_text()
            cells = [f"`{spec.name}`", scope, _inline_yaml(spec.default), kind_range, spec.description]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def reference() -> str:
    """docs/config.md: every key of a run config, section by section, then the merge methods' parameters."""
    found = sections()
    anchors = {section.model: section for section in found}
    contents = [f"- [{section.title}](#{section.anchor})" for section in found]
    contents.append("- [Merge methods (`recipe.method`) and their parameters](#merge-methods)")
    head = [
        "# Run config reference",
        "",
        f"<!-- Generated from the run config's pydantic models by `{COMMAND}`. Do not edit it by hand: -->",
        "<!-- change the models' Field descriptions and docstrings, then run that command again. -->",
        "",
        f"Generated by `{COMMAND}` from the models in `evomerge/config.py` and the modules it imports; "
        "tests/test_config_reference.py fails when it is out of date.",
        "",
        "A run config is the YAML file given to `evomerge run` (`configs/demo.yaml` is a commented example). "
        "Each section below is one mapping of it: the places it is written, then its keys. `NAME` stands "
        "for a name you choose (a task's), `[]` for each entry of a list. A key whose default is `required` "
        "must be given; `not set` means it may be left out. Unknown keys are refused unless a section says "
        "otherwise.",
        "",
        *contents,
    ]
    body = [section_text(section, anchors) for section in found]
    return "\n\n".join(["\n".join(head), *body, methods_text()]) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
