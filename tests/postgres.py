"""A throwaway PostgreSQL server on loopback for the shared-search tests.

`initdb` + `pg_ctl` from Debian's `postgresql` package (`.ci/run` installs it) make a cluster in a temporary
directory on a free port, with a password (so that a wrong one can be tested); stopped and deleted afterwards.
initdb refuses to run as root, so as root the server runs as the `postgres` user the package creates.

Without the server programs the tests fail, saying how to install them; set EVOMERGE_SKIP_POSTGRES=1 to skip
them instead on a machine where you cannot install PostgreSQL (CI never sets it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER, PASSWORD = "evomerge", "evomerge-test-password"
SKIP_VARIABLE = "EVOMERGE_SKIP_POSTGRES"


def server_programs() -> Path | None:
    """The directory holding initdb and pg_ctl (Debian keeps them off PATH, under /usr/lib/postgresql)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Postgres:
    """One server: `url` for the study storage; `stop()` and `start()` to take the database away and back."""

    def __init__(self) -> None:
        self.programs = server_programs()
        if self.programs is None:
            message = (
                "PostgreSQL server programs (initdb, pg_ctl) not found: install them with "
                f"`apt-get install postgresql`, or set {SKIP_VARIABLE}=1 to skip the shared-search tests"
            )
            if os.environ.get(SKIP_VARIABLE) == "1":
                pytest.skip(message)
            pytest.fail(message)
        self.root = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"
        (self.root / "password").write_text(PASSWORD)
        try:
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
                shutil.chown(self.root / "password", "postgres")
            self._as_server_user(
                "initdb",
                "-D",
                self.data,
                "-U",
                USER,
                f"--pwfile={self.root / 'password'}",
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            )
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        # max_connections: the test process itself opens a storage (a connection pool) per scenario step
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=300"
        )
        self._as_server_user(
            "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._as_server_user("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self._as_server_user("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _as_server_user(self, program: str, *args: object, check: bool = True) -> None:
        command = [str(self.programs / program), *map(str, args)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")
