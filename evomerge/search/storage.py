"""Where a ledger lives: opening an Optuna RDB storage, a lock per study, heartbeats, a lost database.

A shared run (several workers on one study) needs three things from the storage that a one-process run does
not, and Optuna's RDB storage gives the first:

- **Heartbeats.** Each worker records a heartbeat for the trial it evaluates; a RUNNING trial whose heartbeat
  is older than the grace period belongs to a dead worker. Optuna fails it, and a retry callback (Optuna's
  `RetryHeartbeatStaleTrialCallback`, see `evomerge/search/worker.py`) enqueues the same parameters again as
  a WAITING trial, which the next `ask` of any worker takes first.
- **A lock per study** (`study_lock`), held while a worker decides whether the budget still allows a
  candidate and asks for it, so that concurrent workers never start more candidates than the budget holds.
  On PostgreSQL a session advisory lock (released by the server when a worker's connection dies); on SQLite a
  `flock` on a file beside the database (released by the kernel when the process dies).
- **Patience.** A worker that loses the database retries each step with exponential backoff and gives up
  with one clear line after `patience` seconds; every step is safe to repeat (evomerge/search/worker.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url

from evomerge.errors import UsageError
from evomerge.extras import require
from evomerge.search.timing import GRACE_HEARTBEATS

T = TypeVar("T")
#: Workers that start together on a new database race to create Optuna's tables; the losers open it again.
SCHEMA_ATTEMPTS = 5
#: Errors that mean the database went away (server restart, network loss), not a mistake in a request.
CONNECTION_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def safe_url(url: str) -> str:
    """The storage URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say it as given, it has no password field to hide
        return url


def open_storage(
    url: str,
    heartbeat_seconds: int | None = None,
    retry: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> RDBStorage:
    """Optuna's RDB storage at `url`; with `heartbeat_seconds`, trials of dead workers can be failed (by
    `optuna.storages.fail_stale_trials`) and `retry` is called with each.

    SQLite waits up to a minute for a lock instead of failing with 'database is locked', and a shared SQLite
    ledger uses write-ahead logging, so that readers (status, dashboard, other workers) never block a writer.
    Optuna's informational lines (a line per study created, per trial finished) are turned off: the ledger
    records all of it.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _require_driver(url)
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    shared = {}
    if heartbeat_seconds is not None:
        shared = dict(
            heartbeat_interval=heartbeat_seconds,
            grace_period=GRACE_HEARTBEATS * heartbeat_seconds,
            heartbeat_stale_trial_callback=retry,
        )
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            storage = quietly(RDBStorage, url, engine_kwargs=engine_kwargs, **shared)
            break
        except Exception as error:  # SQLAlchemy raises many types for a bad URL, host or password
            if attempt + 1 < SCHEMA_ATTEMPTS and _schema_race(error):
                time.sleep(0.5)
                continue
            raise UsageError(f"cannot open the storage '{safe_url(url)}': {first_line(error)}") from None
    if sqlite and heartbeat_seconds is not None:
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _require_driver(url: str) -> None:
    """A PostgreSQL URL with SQLAlchemy's default driver needs psycopg, which is the `postgres` extra."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: opening it says so
        return
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        require("psycopg", "postgres", "a PostgreSQL storage")


def _schema_race(error: BaseException) -> bool:
    """Whether opening failed because another worker created Optuna's tables in a new database at the same
    moment (both saw none; the second one's CREATE or version row collides): opening again finds them."""
    while error is not None:
        if isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def study_names(storage: RDBStorage) -> list[str]:
    return [summary.study_name for summary in optuna.get_all_study_summaries(storage)]


@contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Hold the study's lock: one worker at a time creates, claims budget from or sweeps the study."""
    dialect = storage.engine.dialect.name
    if dialect == "postgresql":
        digest = hashlib.sha256(f"evomerge:{study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with storage.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    elif dialect == "sqlite" and storage.engine.url.database not in (None, "", ":memory:"):
        with open(Path(storage.engine.url.database).with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        raise UsageError(
            f"workers can share a postgresql:// or a sqlite:/// file storage, not '{safe_url(storage.url)}'"
        )


def patiently(step: Callable[[], T], url: str, patience: float, log: Callable[[str], None]) -> T:
    """Run a database step, retrying it with exponential backoff (1 s, 2 s, ... at most 60 s between tries)
    while the database is unreachable; after `patience` seconds, give up with one line. The step must be safe
    to repeat from its start."""
    started, delay, tries = time.monotonic(), 1.0, 0
    while True:
        try:
            return step()
        except Exception as raised:
            error = connection_error(raised)
            if error is None:
                raise
            tries += 1
            waited = time.monotonic() - started
            if waited + delay > patience:
                raise UsageError(
                    f"lost the storage '{safe_url(url)}' ({first_line(error)}); gave up after {tries} "
                    f"tries over {waited:.0f} s; the study is intact: start the worker again once the "
                    "database is up"
                ) from None
            log(f"the storage is unreachable ({first_line(error)}); retrying in {delay:.0f} s")
            time.sleep(delay)
            delay = min(2 * delay, 60.0)


def connection_error(error: BaseException) -> BaseException | None:
    """The database's connection error behind `error`, if that is what it is (Optuna wraps errors that
    happen during a commit in its StorageInternalError)."""
    while error is not None:
        if isinstance(error, CONNECTION_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


class Heartbeat:
    """Records the heartbeat of one trial every interval in a thread, while the trial is evaluated.

    Not Optuna's own heartbeat thread: that one dies at the first database error, so a worker that lost the
    database for a moment would later lose its trial too; this one keeps trying at every interval.
    """

    def __init__(self, storage: RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as error:
                if connection_error(error) is None:
                    raise


def quietly(make: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Optuna marks heartbeats, stale-trial sweeps and their retry callback experimental; the shared run
    relies on them on purpose, so the notice would only repeat on every worker's start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make(*args, **kwargs)


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
