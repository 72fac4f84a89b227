"""Packaging: ranges in pyproject.toml and exact versions in constraints.txt, optional parts that name their
extra when missing, the demo's config shipped inside the package, and `python -m evomerge`.

A missing optional package is simulated by `sys.modules[name] = None`, which makes its import fail."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from evomerge import __version__
from evomerge.cli import main
from evomerge.errors import UsageError
from evomerge.evaluate.lm_eval_task import LmEvalTask
from evomerge.evaluate.specs import LmEvalSpec
from evomerge.extras import require
from evomerge.search.storage import open_storage
from evomerge.sources import load_model

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string ('lm-eval>=0.4' -> 'lm-eval')."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group()).lower()


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {_name(name): version for name, version in pins}


def test_pyproject_declares_ranges_and_constraints_pin_every_one_of_them():
    extras = PYPROJECT["optional-dependencies"]
    requirements = PYPROJECT["dependencies"] + [r for group in extras.values() for r in group]
    assert not [r for r in requirements if "==" in r], "exact pins belong in constraints.txt"
    assert set(extras) >= {"postgres", "gguf", "lm-eval", "plots", "peft", "smollm2", "all", "test"}
    assert extras["all"] == ["evomerge[postgres,gguf,lm-eval,plots,peft,smollm2]"]
    pins = _constraints()
    assert "evomerge" not in pins
    assert pins["torch"] == "2.13.0"  # the CPU wheel on disk; a looser pin downloads CUDA wheels
    third_party = [r for r in requirements if not r.startswith("evomerge[")]
    for requirement in third_party:
        assert _name(requirement) in pins, f"{requirement} is not pinned in constraints.txt"
        lower = re.search(r">=([0-9][^,;\s]*)", requirement)
        assert lower and lower.group(1) == pins[_name(requirement)], (
            f"{requirement}: its lower bound is not the version constraints.txt tests"
        )


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "plots", "anything").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(UsageError, match=re.escape("pip install 'evomerge[postgres]'")) as error:
        require("psycopg", "postgres", "a PostgreSQL storage")
    assert str(error.value).startswith("a PostgreSQL storage needs the Python package 'psycopg'")
    assert "\n" not in str(error.value)


def test_a_postgresql_storage_without_psycopg_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(UsageError, match=re.escape("pip install 'evomerge[postgres]'")):
        open_storage("postgresql://evomerge@127.0.0.1:1/none")
    assert main(["worker", "--storage", "postgresql://evomerge@127.0.0.1:1/none", "--study", "night"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'evomerge[postgres]'" in err


def test_a_sqlite_storage_needs_no_psycopg(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    open_storage(f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.mark.parametrize("missing", ["gguf", "accelerate"])
def test_a_gguf_file_without_the_gguf_extra_names_it(missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(UsageError, match=re.escape(f"package '{missing}'") + r".*evomerge\[gguf\]"):
        load_model(str(path))


def test_an_lm_eval_task_without_lm_eval_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    spec = LmEvalSpec(kind="lm_eval", task="a", held_out_task="b")
    with pytest.raises(UsageError, match=r"task 'quiz' .*pip install 'evomerge\[lm-eval\]'"):
        LmEvalTask("quiz", spec)


def test_plots_without_matplotlib_name_the_extra_and_the_report_tables_still_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "evomerge.output.plots", raising=False)
    monkeypatch.delitem(sys.modules, "evomerge.output.report", raising=False)
    with pytest.raises(UsageError, match=re.escape("pip install 'evomerge[plots]'")):
        importlib.import_module("evomerge.output.plots")
    report = importlib.import_module(
        "evomerge.output.report"
    )  # `baselines` uses its tables, which draw nothing
    assert callable(report.results_table)


def test_the_demo_config_ships_in_the_package_as_the_copy_users_read():
    from importlib import resources

    shipped = resources.files("evomerge") / "configs" / "demo.yaml"
    assert shipped.read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*.yaml" in package_data["evomerge"]


def test_python_dash_m_evomerge_is_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "evomerge", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"evomerge {__version__}"
