"""References by scheme: the scheme table, plug-ins found by name, and one-line errors for unknown schemes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from evomerge import references
from evomerge.errors import UsageError
from evomerge.evaluate.data import data_directory
from evomerge.merge.recipe import recipe_from_dict
from evomerge.output.mergekit import mergekit_config
from evomerge.references import register_model_scheme, split_scheme
from evomerge.sources import resolve_ref, source_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_tables(monkeypatch):
    """Scheme tables holding every plug-in's schemes, restored after the test with what it registered gone."""
    references.load_plugins()
    monkeypatch.setattr(references, "_MODEL_SCHEMES", dict(references._MODEL_SCHEMES))
    monkeypatch.setattr(references, "_DATA_SCHEMES", dict(references._DATA_SCHEMES))


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("zoo:expert_add", ("zoo", "expert_add")),
        ("hf:org/model", ("hf", "org/model")),
        ("org/model", None),
        ("/models/a:b", None),
        ("./a:b", None),
        ("C:/models/x", None),  # a Windows drive, not a scheme
    ],
)
def test_split_scheme(ref, parts):
    assert split_scheme(ref) == parts


def test_a_registered_scheme_resolves_models(tiny_models, fresh_tables):
    register_model_scheme("tiny", lambda name: tiny_models[name])
    assert resolve_ref("tiny:a") == tiny_models["a"]
    assert source_name("tiny:a") == "a"


def test_a_scheme_is_registered_once(fresh_tables):
    register_model_scheme("twice", Path)
    register_model_scheme("twice", Path)  # the same resolver again is no conflict
    with pytest.raises(ValueError, match="registered twice"):
        register_model_scheme("twice", lambda name: Path(name))


def test_unknown_schemes_are_one_line_usage_errors():
    model_error = r"model reference 'nope:x': unknown scheme 'nope:' \(known: .*hf:.*zoo:"
    with pytest.raises(UsageError, match=model_error):
        resolve_ref("nope:x")
    with pytest.raises(UsageError, match=r"data reference 'nope:x': unknown scheme 'nope:' \(known: .*zoo:"):
        data_directory("nope:x")


def test_a_local_path_with_a_colon_is_still_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd:name").mkdir()
    assert resolve_ref("odd:name") == Path("odd:name")
    assert data_directory("odd:name") == Path("odd:name")


def test_hub_scheme_names_a_hub_model():
    with pytest.raises(UsageError, match="on the hub, which is offline"):
        resolve_ref("hf:some-org/some-model")
    with pytest.raises(UsageError, match="a hub model is named ORG/MODEL"):
        resolve_ref("hf:no-slash")
    recipe = recipe_from_dict({"method": "linear", "sources": [{"model": "hf:org/a"}, {"model": "org/b"}]})
    assert [m["model"] for m in mergekit_config(recipe, [])["models"]] == ["org/a", "org/b"]


def test_a_third_party_plug_in_is_found_by_its_entry_point(tmp_path, monkeypatch, fresh_tables):
    (tmp_path / "third_party_plugin.py").write_text(
        "from pathlib import Path\n"
        "from evomerge.references import register_data_scheme\n"
        "register_data_scheme('thirdparty', lambda name: Path('/data') / name)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = EntryPoint("thirdparty", "third_party_plugin", references.PLUGIN_GROUP)
    monkeypatch.setattr(references, "entry_points", lambda group: [plugin] if group == plugin.group else [])
    monkeypatch.setattr(references, "_plugins_loaded", False)
    assert data_directory("thirdparty:sums") == Path("/data/sums")


def test_a_plug_in_that_fails_to_load_is_a_usage_error(monkeypatch, fresh_tables):
    broken = EntryPoint("broken", "no_such_module_anywhere", references.PLUGIN_GROUP)
    monkeypatch.setattr(references, "entry_points", lambda group: [broken])
    monkeypatch.setattr(references, "_plugins_loaded", False)
    with pytest.raises(UsageError, match="plug-in 'broken' .* failed to load: ModuleNotFoundError"):
        resolve_ref("other:x")


def test_the_core_finds_the_zoo_plug_in_by_name(zoo_dir):
    """A fresh process that never imports evomerge.zoo itself resolves `zoo:` models and data."""
    script = (
        "import sys\n"
        "from evomerge.sources import resolve_ref\n"
        "from evomerge.evaluate.data import data_directory\n"
        "assert 'evomerge.zoo' not in sys.modules\n"
        "print(resolve_ref('zoo:expert_add'))\n"
        "print(data_directory('zoo:add'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(zoo_dir / "expert_add"), str(zoo_dir / "data" / "add")]
