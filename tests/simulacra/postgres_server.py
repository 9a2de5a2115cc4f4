"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, started on a free port of
127.0.0.1 (its unix socket in that folder), one database and a password-protected user, stopped at the end.

The binaries are Debian's ``postgresql`` (``make postgres`` installs it): found on PATH, else under
``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root, so as root the server runs as the
unprivileged ``postgres`` user the package creates (else ``nobody``), through ``runuser``.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "simulacra"
PASSWORD = "s3cret-pw"  # the tests check that no run file holds it
DATABASE = "simulacra_test"


def find_bin(name: str) -> Path | None:
    """A PostgreSQL program: on PATH, else in the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    return next((v / name for v in versions if (v / name).exists()), None)


def missing_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    if find_bin("initdb") is None or find_bin("pg_ctl") is None:
        return "no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: `make postgres`"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and no runuser to start PostgreSQL as an unprivileged user"
    return None


def _owner() -> str | None:
    """The unprivileged user to run the server as (None: the current user, who is not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and there is neither a postgres nor a nobody user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    folder: Path
    port: int
    owner: str | None

    @property
    def url(self) -> str:
        """The test database, with the password (as a user would type it)."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def url_without_password(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def psql_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER]


def _run(cmd: list[str], owner: str | None, **kw: object) -> subprocess.CompletedProcess:
    if owner is not None:
        cmd = ["runuser", "-u", owner, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a fresh server; stop it and delete its files afterwards."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    assert initdb is not None and pg_ctl is not None, missing_reason()
    owner = _owner()
    folder = Path(tempfile.mkdtemp(prefix="simulacra-pg-"))  # under /tmp: reachable by the server's user
    data, pwfile = folder / "data", folder / "pw"
    pwfile.write_text(PASSWORD)
    if owner is not None:
        info = pwd.getpwnam(owner)
        os.chown(folder, info.pw_uid, info.pw_gid)
        os.chown(pwfile, info.pw_uid, info.pw_gid)
    server = PostgresServer(folder, _free_port(), owner)
    started = False
    try:
        init = [str(initdb), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust"]
        out = _run([*init, "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], owner)
        assert out.returncode == 0, f"initdb failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        options = (
            f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=32MB "
            "-c max_connections=60"
        )  # fsync off: a killed process, not a crashed machine, is what the tests do
        log = folder / "log"
        out = _run([str(pg_ctl), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"], owner)
        why = log.read_text()[-2000:] if log.exists() else ""
        assert out.returncode == 0, f"pg_ctl start failed: {out.stderr[-1000:]} {why}"
        started = True
        createdb = find_bin("createdb")
        assert createdb is not None
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        out = _run([str(createdb), *server.psql_args(), DATABASE], None, env=env)
        assert out.returncode == 0, f"createdb failed: {out.stderr[-2000:]}"
        yield server
    finally:
        if started:
            _run([str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "stop"], owner)
            deadline = time.time() + 10
            while (data / "postmaster.pid").exists() and time.time() < deadline:
                time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
