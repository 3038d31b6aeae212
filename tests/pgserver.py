"""
A real, throwaway PostgreSQL server for the tests (loaded by
C{tests/conftest.py} through C{pytest_plugins}).

Fixtures:
  - C{postgresql_server} (session): a L{PostgreSQLServer}, started once,
    stopped at the end; C{.url}, C{.stop()}, C{.start()}, C{.restart()},
    C{.createDatabase()}.
  - C{postgresql_url} (session): the URL of a database on it, shared by the
    whole session.
  - C{postgresql_db} (function): the URL of a fresh, empty database for one
    test (C{CREATE DATABASE} per test: fast).
  - C{store_url} (function, parametrized C{sqlite} / C{postgresql}): a fresh
    store URL, so one test runs against both backends.

The server binaries are found on C{PATH} or under
C{/usr/lib/postgresql/*/bin} (Debian's C{postgresql} package). If they are
missing the fixtures FAIL, never skip: a storage suite that silently skipped
its PostgreSQL half would prove nothing.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the C{postgres} OS user (C{runuser}); its files live in a private
temporary directory owned by that user.

Durability settings: the session server runs with C{fsync=off} for speed.
That cannot lose a committed transaction when only processes crash (the data
is in the OS page cache either way); only an OS crash could, and no test
crashes the OS. A test that needs the default settings anyway creates its own
C{PostgreSQLServer(fsync=True)}.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import Iterator, List, Optional

import pytest

__all__ = ["PostgreSQLServer", "findBinaries"]


def findBinaries() -> str:
    """
    The directory holding C{initdb}, C{pg_ctl} and C{postgres}.

    @raise RuntimeError: With instructions, when there is none.
    """
    onPath = shutil.which("pg_ctl")
    if onPath and os.path.exists(os.path.join(os.path.dirname(onPath), "initdb")):
        return os.path.dirname(onPath)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0,
    )
    for directory in reversed(candidates):
        if os.path.exists(os.path.join(directory, "initdb")) and os.path.exists(os.path.join(directory, "pg_ctl")):
            return directory
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
        "install them (Debian/Ubuntu: apt-get install postgresql) to run the storage tests"
    )


def _freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgreSQLServer:
    """
    One PostgreSQL cluster in a temporary directory, listening on
    127.0.0.1 at a fixed free port (kept across restarts, so URLs stay
    valid) and on a unix socket inside that directory.

    @ivar url: URL of the C{postgres} maintenance database.
    """

    user = "postgres"

    def __init__(self, fsync: bool = False) -> None:
        self.bindir = findBinaries()
        self.fsync = fsync
        self.port = _freePort()
        self.root = tempfile.mkdtemp(prefix="sensornet-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "postgresql.log")
        self._asUser: List[str] = []
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: hand the directory over.
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, but there is no 'postgres' OS user to run PostgreSQL as")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._asUser = ["runuser", "-u", "postgres", "--"]
        self._counter = itertools.count()
        self.running = False
        self.url = self.databaseURL("postgres")

    def databaseURL(self, database: str) -> str:
        """
        The URL of C{database} on this server, over TCP to 127.0.0.1.
        """
        return f"postgresql://{self.user}:test@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        result = subprocess.run(
            self._asUser + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
        )
        if result.returncode != 0:
            log = ""
            if os.path.exists(self.logfile):
                with open(self.logfile, errors="replace") as f:
                    log = f.read()[-3000:]
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}\n{log}"
            )

    def initdb(self) -> None:
        """
        Create the cluster (trust authentication: it listens on loopback
        only, for the length of a test run).
        """
        self._run(
            os.path.join(self.bindir, "initdb"),
            "-D", self.datadir, "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C",
            *(() if self.fsync else ("--no-sync",)),
        )

    def start(self) -> None:
        """
        Start the server and wait until it accepts connections.
        """
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
            "-c log_min_messages=warning",
        ]
        if not self.fsync:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            os.path.join(self.bindir, "pg_ctl"),
            "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "-o", " ".join(options), "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """
        Stop the server: C{fast} (disconnect clients, clean shutdown) or
        C{immediate} (like a crash: recovery at the next start).
        """
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        """
        Stop, then start again on the same port.
        """
        self.stop(mode)
        self.start()

    def createDatabase(self, name: Optional[str] = None) -> str:
        """
        Create an empty database and return its URL.
        """
        import psycopg

        if name is None:
            name = f"test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.databaseURL(name)

    def dropDatabase(self, name: str) -> None:
        """
        Drop a database, disconnecting whoever still uses it.
        """
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """
        Stop the server if it runs, and delete its files.
        """
        try:
            if self.running:
                self.stop("fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """
    A real PostgreSQL server for the whole session (fails, never skips,
    when PostgreSQL is not installed).
    """
    try:
        server = PostgreSQLServer()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgresql_url(postgresql_server: PostgreSQLServer) -> str:
    """
    The URL of one database shared by the whole session.
    """
    return postgresql_server.createDatabase("sensornet")


@pytest.fixture
def postgresql_db(postgresql_server: PostgreSQLServer) -> Iterator[str]:
    """
    The URL of a fresh, empty database for this test only.
    """
    if not postgresql_server.running:
        # A previous test stopped the server and failed before restarting it.
        postgresql_server.start()
    url = postgresql_server.createDatabase()
    yield url
    if postgresql_server.running:
        postgresql_server.dropDatabase(url.rsplit("/", 1)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]") -> str:
    """
    A fresh store URL for each backend, so one test runs against both.
    """
    if request.param == "sqlite":
        return f"sqlite:{os.path.join(os.fspath(tmp_path), 'sensornet.db')}"
    return str(request.getfixturevalue("postgresql_db"))
