"""A real PostgreSQL server for tests: Debian's `postgresql` binaries (scripts/test.sh installs them when missing), on
127.0.0.1, a free port, a fresh data directory, run as an unprivileged user (the server refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from tests.support.services import free_port

SERVER_USER = "postgres"  # the system user Debian's package creates; used when the tests run as root
SUPERUSER = "sgde"  # the database role initdb makes; it connects with a password, as the production overlay does


def server_binaries() -> Path:
    """The directory of initdb and postgres: PATH, or the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise FileNotFoundError(
            "PostgreSQL server binaries (initdb, postgres) not found: `apt-get install postgresql` (scripts/test.sh "
            "does it when they are missing)"
        )
    return Path(versions[-1]).parent


class PostgresServer:
    """`postgres` in the foreground: SIGKILLed if the test process dies first (PR_SET_PDEATHSIG), stopped by stop().
    Each caller of new_database gets a database of its own."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.port = 0
        self.password = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        # Not under pytest's tmp_path: that is private to the user running the tests (root), and the server's user
        # must own its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="sgde-postgres-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and there is no {SERVER_USER!r} user to run PostgreSQL as (Debian's postgresql "
                    "package creates it)"
                ) from None
            self._owner = (user.pw_uid, user.pw_gid)
            os.chown(self.root, *self._owner)
            # setpriv drops to the user itself, so the parent-death signal it sets holds for the server too
            self._as = ["--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups"]

    def _run_as_server_user(self, args: list[str]) -> list[str]:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise FileNotFoundError("setpriv (util-linux) not found")
        return [setpriv, *self._as, "--pdeathsig", "KILL", "--", *args]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database, as SGDE_REGISTRY_DATABASE_URL takes it."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@{self.address}/{database}"

    def start(self, timeout: float = 60) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._owner:
            os.chown(pwfile, *self._owner)
        init = [
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",  # TCP connections need the password
            "--auth-local=peer",
            "--encoding=UTF8",
            "--no-instructions",
        ]
        done = subprocess.run(self._run_as_server_user(init), capture_output=True, text=True, cwd=self.root)
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        self.port = free_port()
        server = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "fsync=off",  # a test server: its data does not need to survive the machine
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._run_as_server_user(server),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:  # not accepting connections yet
                last = e
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"PostgreSQL at {self.address} not ready after {timeout} s: {last}\n{self.log_tail()}")

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """A psycopg connection (autocommit) to a database, for tests that look at or lock rows themselves."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        with self.connect(database) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def new_database(self, prefix: str = "sgde") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: clients disconnected, no waiting for them), then the data directory goes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
