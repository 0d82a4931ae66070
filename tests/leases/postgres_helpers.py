"""A throwaway PostgreSQL cluster on a loopback port, for tests that use real database logins.

`ThrowawayPostgres` runs Debian's `initdb` and `pg_ctl` in a private temporary directory. As
root it runs them as the `postgres` user through `runuser`, because PostgreSQL refuses to run
as root. Local (socket) connections trust the superuser, and TCP connections on 127.0.0.1 need a
password (SCRAM), so a login over TCP proves that a username and password work.

`.ci/run` installs Debian's `postgresql` package when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

POSTGRES_USER = "postgres"


def postgres_bin(name: str) -> str:
    """Return the path of a PostgreSQL server program; raise FileNotFoundError if missing."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(
            f"{name} not found under /usr/lib/postgresql; install Debian's postgresql package"
        )
    return found[-1]


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="secrets-agent-pg-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.port = _free_port()

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.as_root:
            entry = pwd.getpwnam(POSTGRES_USER)
            for path in (self.directory, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                postgres_bin("initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                POSTGRES_USER,
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
                "--no-sync",
                "--no-instructions",
            ]
        )
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                postgres_bin("pg_ctl"),
                "--pgdata",
                str(self.data),
                "--options",
                options,
                "--log",
                str(self.directory / "server.log"),
                "--wait",
                "start",
            ]
        )

    def stop(self) -> None:
        if self.data.exists():
            self._run(
                [postgres_bin("pg_ctl"), "--pgdata", str(self.data), "-m", "immediate", "stop"],
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def admin(self, sql: str) -> str:
        """Run SQL as the superuser over the local socket; return psql's output."""
        result = self._run(
            [
                postgres_bin("psql"),
                "--host",
                str(self.socket_dir),
                "--port",
                str(self.port),
                "--username",
                POSTGRES_USER,
                "--dbname",
                "postgres",
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--set",
                "ON_ERROR_STOP=1",
                "--file",
                "-",
            ],
            stdin=sql,
        )
        return result.stdout.strip()

    def login(self, username: str, password: str) -> subprocess.CompletedProcess[str]:
        """Connect over TCP with a username and password, as an application would."""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PGPASSWORD": password,
            "PGCONNECT_TIMEOUT": "5",
        }
        return subprocess.run(
            [
                postgres_bin("psql"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                username,
                "--dbname",
                "postgres",
                "--no-psqlrc",
                "--no-password",
                "--tuples-only",
                "--command",
                "SELECT current_user",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def _run(
        self, command: list[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        program = Path(command[0]).name
        if self.as_root:
            command = ["runuser", "-u", POSTGRES_USER, "--", *command]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=120, cwd="/"
        )
        if check and result.returncode != 0:
            # psql quotes the failing statement on LINE lines, and statements carry passwords.
            message = [
                line for line in result.stderr.splitlines() if not line.lstrip().startswith("LINE")
            ]
            raise RuntimeError(f"{program} failed ({result.returncode}): {' '.join(message)[:500]}")
        return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
