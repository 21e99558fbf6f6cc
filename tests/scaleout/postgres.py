"""A real PostgreSQL server for the scale-out tests: Debian's binaries, a cluster of its own.

``initdb`` and ``pg_ctl`` run as the ``postgres`` OS account when the tests run as root (the
server refuses to run as root), in a fresh folder under /tmp, listening on 127.0.0.1 at a free
port and a unix socket in that folder. Connections over TCP need a password (scram-sha-256), as a
deployment's would. ``dev.sh`` installs Debian's ``postgresql`` package where it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed: ./dev.sh test installs Debian's postgresql"
        )
    return Path(initdb).resolve().parent


@dataclass
class PostgresServer:
    """One PostgreSQL cluster; :meth:`database` makes a database and a role that owns it."""

    port: int = field(default_factory=free_port)
    superuser_password: str = field(default_factory=lambda: secrets.token_hex(12))
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="oraculo-pg-")))

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *args: str) -> None:
        cmd = [str(pg_bin() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = (self.folder / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> PostgresServer:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for p in (self.folder, pwfile):
                os.chown(p, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--no-instructions",
        )
        pwfile.unlink()
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c fsync=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def url(self, database: str = "postgres", user: str = "postgres", password: str = "") -> str:
        password = password or self.superuser_password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Make role ``name`` (with a password) and database ``name`` it owns; return its URL."""
        import psycopg

        password = secrets.token_hex(12)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {name} OWNER {name}")
        return self.url(name, name, password)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
