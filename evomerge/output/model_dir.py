"""Writing a merged model as a Hugging Face directory, all or nothing.

The directory holds the safetensors weights, config, generation config, the tokenizer of the reference model
(the base, else the first source) and `recipe.yaml`, from which `evomerge merge` rebuilds the same tensors bit
for bit. It is written into a hidden sibling directory and renamed into place at the end, so a failed or
killed write leaves nothing at the output path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from evomerge.errors import UsageError
from evomerge.files import written_directory
from evomerge.merge.engine import MergeEngine, recipe_dtype
from evomerge.merge.recipe import Recipe
from evomerge.search.space import Candidate, TokenizerSource


def check_output_dir(out: Path, replace: bool = False) -> None:
    """Raise UsageError unless `out` does not exist yet (or, with `replace`, holds a previous export) and
    could be created. `replace` never deletes anything but a model directory with a recipe.yaml (or an empty
    one)."""
    if out.exists():
        if not replace:
            raise UsageError(f"output directory '{out}' already exists; choose another --out or delete it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / "recipe.yaml").is_file()):
            raise UsageError(
                f"'{out}' exists and is not a previous export (no recipe.yaml); --force replaces only those"
            )
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UsageError(f"cannot write '{out}': '{ancestor}' is not a writable directory")


def write_merge(recipe: Recipe, out: Path, device: str = "cpu", progress: bool = True) -> Path:
    """Merge `recipe` on `device` and write the result to `out` (which must not exist); returns `out`.

    The output path is checked before any model is loaded, so a bad `out` fails at once.
    """
    out = Path(out)
    check_output_dir(out)
    engine = MergeEngine.from_recipe(recipe, device=device)
    model = engine.new_target(recipe_dtype(recipe))
    engine.materialize(recipe, model, progress=progress)
    write_model_dir(model, engine.reference, recipe, out)
    return out


def write_model_dir(
    model: PreTrainedModel,
    reference: TokenizerSource,
    recipe: Candidate,
    out: Path,
    files: dict[str, str] | None = None,
    replace: bool = False,
) -> None:
    """Save model, the reference's tokenizer, the recipe and any extra text `files` (name -> text) into a
    temporary sibling of `out`, then rename it to `out`; with `replace`, a directory already at `out` is
    swapped out and deleted."""
    with written_directory(out, replace=replace) as staging:
        model.save_pretrained(staging)
        tokenizer = _reference_tokenizer(reference)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")


def _reference_tokenizer(reference: TokenizerSource):
    try:
        return AutoTokenizer.from_pretrained(reference.directory)
    except (OSError, ValueError, TypeError) as error:
        where = reference.directory
        print(
            f"evomerge: warning: no tokenizer written: cannot load one from '{where}' ({error})",
            file=sys.stderr,
        )
        return None
