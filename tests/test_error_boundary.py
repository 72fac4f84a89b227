"""The CLI's one error boundary (evomerge/boundary.py): each kind of failure that is the user's or the
machine's gives one line and its exit code through the real command, with nothing half-written; a full disk
or a lost ledger database mid-run stops the run, and resume ends as an uninterrupted run; a bug shows its
traceback and says so."""

from __future__ import annotations

import errno
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from runs import config_data, evomerge_result, ledger_rows, run_search, run_study, write_config
from safetensors import SafetensorError
from sqlalchemy.exc import OperationalError

from evomerge.boundary import EXIT_BUG, explained
from evomerge.cli import main
from evomerge.errors import MergeFailure, SearchFailed, UsageError
from evomerge.files import parse_yaml


def sqlite_error(name: str, code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode, error.sqlite_errorname = code, name
    return error


def ledger_failure(orig: BaseException) -> StorageInternalError:
    """The chain Optuna's RDB storage raises when the database driver fails."""
    try:
        try:
            raise OperationalError("INSERT INTO trials ...", {}, orig) from orig
        except OperationalError as wrapped:
            raise StorageInternalError("An exception is raised during the commit.") from wrapped
    except StorageInternalError as error:
        return error


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/out"),
            "no space left on device: '/data/out'",
            2,
        ),
        (
            OSError(errno.EFBIG, "File too large"),
            "file too large; the file outgrew the largest file allowed",
            2,
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), "permission denied: '/x'; check its", 2),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), "read-only file system: '/ro'", 2),
        (SafetensorError("Error while serializing: I/O error: (os error 28)"), "no space left on device;", 2),
        (
            ledger_failure(sqlite_error("SQLITE_FULL", 13, "database or disk is full")),
            "(SQLite) failed: no space",
            2,
        ),
        (ledger_failure(sqlite_error("SQLITE_IOERR_WRITE", 778, "disk I/O error")), "input/output error", 2),
        (
            ledger_failure(sqlite_error("SQLITE_CANTOPEN", 14, "unable to open database file")),
            "unable to open",
            2,
        ),
        (
            ledger_failure(ConnectionError("server closed the connection\nmore")),
            "lost the run ledger's database",
            2,
        ),
        (UnicodeDecodeError("utf-8", b"\xfb", 0, 1, "invalid start byte"), "not UTF-8", 2),
        (MemoryError(), "out of memory", 2),
        (chained(UsageError("the user's words"), OSError(errno.ENOENT, "x")), "the user's words", 2),
        (SearchFailed("every candidate failed"), "every candidate failed", 3),
        (MergeFailure("NaN"), "NaN", 2),
        (chained(RuntimeError("wrapped"), OSError(errno.ENOSPC, "full")), "no space left on device", 2),
    ],
)
def test_each_kind_of_failure_is_one_line_with_its_exit_code(error, line, code):
    said, exit_code = explained(error)
    assert line in said and "\n" not in said and exit_code == code


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("x"), ValueError("y"), TypeError("z")])
def test_anything_else_is_a_bug(error):
    assert explained(error) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e39", 1e39),
        ("5e-3", 0.005),
        ("-2E+2", -200.0),
        (".5e1", 5.0),
        ("1.0e+39", 1e39),
        ("7", 7),
        ("e5", "e5"),
    ],
)
def test_yaml_reads_the_floats_of_yaml_1_2(text, value):
    read = parse_yaml(f"w: {text}")["w"]
    assert read == value and type(read) is type(value)


def test_a_bug_shows_its_traceback_and_says_it_is_one(monkeypatch, capsys, tmp_path):
    import evomerge.files

    def broken(path, what):
        raise RuntimeError("an internal mistake")

    monkeypatch.setattr(evomerge.files, "read_yaml", broken)
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]) == EXIT_BUG
    errors = capsys.readouterr().err
    assert "Traceback" in errors and "RuntimeError: an internal mistake" in errors
    assert (
        errors.strip().splitlines()[-1].startswith("evomerge: internal error: the traceback above is a bug")
    )


# ---------------------------------------------------------------- through the real command


def evomerge(*args: object, limit_file_size: int | None = None) -> tuple[int, str]:
    """`evomerge ARGS` in a new process (with a file size limit, as `ulimit -f` sets): code and stderr."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    result = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=limited if limit_file_size is not None else None,
    )
    return result.returncode, result.stderr


def one_line(errors: str) -> str:
    lines = errors.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomerge: error: "), errors
    return lines[0]


def linear_recipe(path: Path, tiny_models, weight: str = "1.0") -> Path:
    path.write_text(
        f"method: task_arithmetic\nbase: {tiny_models['base']}\n"
        f"sources:\n  - model: {tiny_models['a']}\n    weight: {weight}\n  - model: {tiny_models['b']}\n"
    )
    return path


def nothing_at(out: Path) -> bool:
    """Neither `out` nor a staging directory of it is left."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_a_recipe_that_is_not_text_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\x00\xfb\xff binary")
    code, errors = evomerge("merge", recipe, "--out", tmp_path / "out")
    assert code == 2 and "is not a text file" in one_line(errors) and nothing_at(tmp_path / "out")


def test_a_weight_beyond_float32_is_one_line_written_as_users_write_it(tiny_models, tmp_path):
    code, errors = evomerge(
        "merge", linear_recipe(tmp_path / "r.yaml", tiny_models, "1e39"), "--out", tmp_path / "o"
    )
    assert code == 2 and "'weight' = 1e+39 is beyond float32's range" in one_line(errors)
    assert nothing_at(tmp_path / "o")


def test_a_file_size_limit_at_save_is_one_line_and_leaves_nothing(tiny_models, tmp_path):
    out = tmp_path / "out"
    code, errors = evomerge(
        "merge", linear_recipe(tmp_path / "r.yaml", tiny_models), "--out", out, limit_file_size=4096
    )
    assert code == 2 and "file too large" in one_line(errors) and nothing_at(out)


@pytest.mark.parametrize("out", ["/proc/evomerge-test/out", "FILE/sub/out"])
def test_an_output_path_that_cannot_be_made_is_one_line(out, tiny_models, tmp_path):
    (tmp_path / "FILE").write_text("")  # a file where a directory is needed
    out = out.replace("FILE", str(tmp_path / "FILE"))
    code, errors = evomerge("merge", linear_recipe(tmp_path / "r.yaml", tiny_models), "--out", out)
    assert code == 2 and f"cannot write '{out}'" in one_line(errors)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": "Q: {prompt"}, "is not a template (expected '}' before end of string)"),
        ({"template": "Q: {}"}, "has a placeholder {} that names no field"),
    ],
)
def test_a_template_that_cannot_be_filled_is_one_line(change, message, tiny_models, task_dir, tmp_path):
    data = config_data(tiny_models, task_dir, tmp_path / "run")
    data["tasks"]["t"].update(change)
    code, errors = evomerge("run", write_config(tmp_path / "c.yaml", data))
    assert code == 2 and message in one_line(errors) and not (tmp_path / "run").exists()


def test_an_empty_data_file_says_which_split_is_empty(tiny_models, task_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "search.jsonl").write_text("")
    (data_dir / "held_out.jsonl").write_text((task_dir / "held_out.jsonl").read_text())
    data = config_data(tiny_models, data_dir, tmp_path / "run")
    code, errors = evomerge("run", write_config(tmp_path / "c.yaml", data))
    assert code == 2 and "task 't': the search split is empty" in one_line(errors)


# ---------------------------------------------------------------- faults mid-run, then resume


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("disk_full@3", "the run ledger (SQLite) failed: no space left on device"),
        ("db_lost@3", "the run ledger (SQLite) failed: unable to open database file"),
    ],
)
def test_a_full_disk_or_a_lost_database_mid_run_stops_it_in_one_line_and_resume_ends_as_uninterrupted(
    fault, said, tiny_models, task_dir, tmp_path
):
    expected = ledger_rows(run_search(config_data(tiny_models, task_dir, tmp_path / "whole")))
    config = write_config(tmp_path / "c.yaml", config_data(tiny_models, task_dir, tmp_path / "run"))
    code, errors = evomerge_result("run", config, fault=fault)
    line = errors.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"evomerge: error: {said}"), errors
    assert line.endswith(f"evomerge resume {tmp_path / 'run'}") and "Traceback" not in errors
    recorded = run_study(tmp_path / "run").get_trials()
    assert [t.number for t in recorded if t.state == TrialState.COMPLETE] == [0, 1, 2, 3]
    assert evomerge_result("resume", tmp_path / "run") == (0, "")
    assert ledger_rows(run_study(tmp_path / "run")) == expected


def test_a_merge_that_overflows_is_a_failed_candidate_and_a_killed_run_resumes_past_it(
    tiny_models, task_dir, tmp_path
):
    whole = write_config(tmp_path / "w.yaml", config_data(tiny_models, task_dir, tmp_path / "whole"))
    assert evomerge_result("run", whole, fault="overflow@2")[0] == 0
    expected = ledger_rows(run_study(tmp_path / "whole"))
    failed = run_study(tmp_path / "whole").trials[2]
    assert failed.state == TrialState.FAIL and "NaN or Inf" in failed.user_attrs["failure_reason"]
    assert [row[1] for row in expected].count(TrialState.FAIL) == 1

    config = write_config(tmp_path / "c.yaml", config_data(tiny_models, task_dir, tmp_path / "run"))
    code, _ = evomerge_result("run", config, fault="overflow@2,sigkill@5")
    assert code == -9
    assert evomerge_result("resume", tmp_path / "run") == (0, "")
    assert ledger_rows(run_study(tmp_path / "run")) == expected


def test_a_run_whose_every_candidate_failed_exits_3_and_status_says_so(
    tiny_models, task_dir, tmp_path, monkeypatch, capsys
):
    from evomerge.merge.engine import MergeEngine

    def overflowing(self, recipe, model, progress=False):
        raise MergeFailure("the merge produced NaN or Inf in tensor 'x'")

    monkeypatch.setattr(MergeEngine, "materialize", overflowing)
    data = config_data(tiny_models, task_dir, tmp_path / "run", evaluations=4)
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 3
    line = one_line(capsys.readouterr().err)
    assert "every candidate failed (4 of 4); the last: MergeFailure: the merge produced NaN" in line
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "no candidate scored: every one failed; the last: MergeFailure" in capsys.readouterr().out


def test_the_readme_documents_the_exit_codes():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Exit codes") :]
    for code in ("| 0 ", "| 1 ", "| 2 ", "| 3 ", "| 130 ", "| 143 "):
        assert code in section
