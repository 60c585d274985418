"""Real servers on loopback for the lake's tests: PostgreSQL and an S3-compatible object store.

* :class:`PostgresServer` starts a fresh cluster of Debian's ``postgresql`` binaries
  (``/usr/lib/postgresql/<version>/bin``) in a temporary folder, listening on 127.0.0.1 only at
  a free port, its unix socket inside that folder, ``trust`` authentication (loopback only).
  PostgreSQL refuses to run as root, so under root the cluster belongs to an unprivileged OS
  user (``postgres`` where the Debian package created it, else ``kdpg``, created here).
  :meth:`PostgresServer.create_database` returns a libpq connection string, the form DuckLake's
  ``ducklake:postgres:<conninfo>`` takes; :meth:`PostgresServer.url` the URL form
  (``dagster-postgres``).
* :class:`S3Server` runs moto's standalone server (``python -m moto.server``) as a subprocess
  on 127.0.0.1 at a free port, so a test can SIGKILL writers without touching it; fake
  credentials, region ``us-east-1``, path-style URLs, plain HTTP.

Both stop when their ``with`` block ends, whatever the block raised. The session-scoped pytest
fixtures ``postgres_server`` and ``s3_server`` wrap them; a missing binary or package fails the
test (never skips) with one line naming what to install (``kd_pipeline_tests/setup-test-env.sh``
installs both).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import duckdb
import pytest

from kd_pipeline import ducklake

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = [
    "MissingServerError",
    "PostgresServer",
    "S3Server",
    "lake_connection",
    "postgres_server",
    "s3_server",
]

_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_PG_OS_USERS = ("postgres", "kdpg")  # the first that exists runs the cluster under root
_START_TIMEOUT_S = 60.0
_INSTALL_POSTGRES = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install Debian's "
    "postgresql (apt-get install postgresql, or run kd_pipeline_tests/setup-test-env.sh)"
)
_INSTALL_MOTO = (
    "moto's S3 server is not installed: pip install 'moto[server]>=5' "
    "(in the dev extra: .venv/bin/pip install -e '.[dev]')"
)


class LoopbackServer:
    """A server a test starts on 127.0.0.1: `with Server(...) as server:` starts it and
    stops it, even when the block raises."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MissingServerError(RuntimeError):
    """A server's binaries or package are not installed (the message says what to install)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lake_connection() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with DuckLake, httpfs and both catalog scanners loaded from
    their wheels (`kd_pipeline.ducklake`, never downloaded: DuckDB checks each file's
    official signature on LOAD). Raises MissingServerError when a wheel is missing."""
    con = duckdb.connect()
    for name in ("ducklake", "httpfs", "postgres_scanner", "sqlite_scanner"):
        path = ducklake.extension_path(name)
        if path is None:
            raise MissingServerError(
                f"the {name} extension wheel for duckdb {duckdb.__version__} is not installed: "
                ".venv/bin/pip install -e '.[dev]'"
            )
        con.execute(f"LOAD '{path}'")
    return con


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the newest Debian PostgreSQL install that has ``initdb``.

    Raises MissingServerError (one line: what to install) when there is none.
    """
    candidates = [Path(p) for p in glob.glob(_PG_BIN_GLOB) if (Path(p) / "initdb").is_file()]
    if not candidates:
        raise MissingServerError(_INSTALL_POSTGRES)
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _cluster_os_user() -> pwd.struct_passwd:
    """The OS user the cluster runs as: the current one, or under root an unprivileged one."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in _PG_OS_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    name = _PG_OS_USERS[-1]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class PostgresServer(LoopbackServer):
    """A throwaway PostgreSQL cluster on 127.0.0.1 (see the module docstring).

    Attributes once started: ``port``, ``user`` (the superuser role, named like the OS user),
    ``root`` (the temporary folder: ``data/``, ``sockets/``, ``server.log``),
    ``start_seconds`` (initdb + server start, wall clock).
    """

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        self._os_user = _cluster_os_user()
        self.user = self._os_user.pw_name
        self.port = 0
        self.root = Path()
        self.start_seconds = 0.0
        self._started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as the cluster's OS user; raise with its output on failure."""
        as_other = os.geteuid() != self._os_user.pw_uid
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(self.root)},
            user=self._os_user.pw_uid if as_other else None,
            group=self._os_user.pw_gid if as_other else None,
            extra_groups=[] if as_other else None,
            timeout=_START_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n{_tail(self.root / 'server.log')}"
            )
        return result

    def start(self) -> Self:
        """initdb a fresh cluster in a new temporary folder and start it (waits until ready)."""
        began = time.perf_counter()
        # Under /tmp, not pytest's tmp_path: pytest's folders are 0700 root's, which the
        # cluster's OS user could not enter.
        self.root = Path(tempfile.mkdtemp(prefix="kd-postgres-"))
        (self.root / "sockets").mkdir()
        os.chown(self.root, self._os_user.pw_uid, self._os_user.pw_gid)
        os.chown(self.root / "sockets", self._os_user.pw_uid, self._os_user.pw_gid)
        self._run(
            "initdb",
            "--pgdata", str(self.root / "data"),
            "--username", self.user,
            "--auth", "trust",  # initdb's trust covers local sockets and 127.0.0.1/::1 only
            "--encoding", "UTF8",
            "--locale", "C.UTF-8",
            "--no-sync",
        )  # fmt: skip
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root / 'sockets'} "
                # The tests kill writers, never this server: no fsync keeps commits fast.
                "-c fsync=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(
                    "pg_ctl", "start", "--wait", "--timeout", str(int(_START_TIMEOUT_S)),
                    "--pgdata", str(self.root / "data"),
                    "--log", str(self.root / "server.log"),
                    "-o", options,
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    self._remove_root()
                    raise
        self._started = True
        self.start_seconds = time.perf_counter() - began
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its libpq connection string.

        The string is ``"dbname=<name> host=127.0.0.1 port=<port> user=<user>"``, what
        ``ATTACH 'ducklake:postgres:<conninfo>'`` and ``psql`` take.
        Raises RuntimeError (createdb's message) if it exists already or the name is invalid.
        """
        self._run("createdb", "--host", "127.0.0.1", "--port", str(self.port),
                  "--username", self.user, name)  # fmt: skip
        return self.conninfo(name)

    def conninfo(self, dbname: str) -> str:
        """The libpq key=value connection string of database ``dbname`` on this server."""
        return f"dbname={dbname} host=127.0.0.1 port={self.port} user={self.user}"

    def url(self, dbname: str) -> str:
        """The ``postgresql://`` URL of database ``dbname`` (the form dagster-postgres takes)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and delete its folder; safe to call twice."""
        if self._started:
            self._started = False
            try:
                self._run("pg_ctl", "stop", "--wait", "--mode", "fast",
                          "--pgdata", str(self.root / "data"))  # fmt: skip
            finally:
                self._remove_root()

    def _remove_root(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server(LoopbackServer):
    """moto's standalone S3-compatible server on 127.0.0.1, in its own process.

    Attributes once started: ``port``, ``endpoint_url`` (``http://127.0.0.1:<port>``),
    ``host_port`` (``127.0.0.1:<port>``, the form DuckDB's ``ENDPOINT`` takes), the fake
    ``access_key_id`` / ``secret_access_key``, ``region``, ``start_seconds`` (wall clock until
    the server answered).
    """

    access_key_id = "testing"
    secret_access_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise MissingServerError(_INSTALL_MOTO)
        self.port = 0
        self.start_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path()

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> Self:
        """Start the server and wait until it answers an S3 request (ListBuckets)."""
        began = time.perf_counter()
        self.port = free_port()
        fd, log = tempfile.mkstemp(prefix="kd-moto-", suffix=".log")
        self._log = Path(log)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a killed process group of a test spares it
        )
        os.close(fd)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = _tail(self._log)
                self.stop()
                raise RuntimeError(f"moto's S3 server did not start on {self.host_port}:\n{tail}")
            time.sleep(0.05)
        self.start_seconds = time.perf_counter() - began
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def client(self) -> BaseClient:
        """A boto3 S3 client for this server (boto3 ships no static type for the S3 client)."""
        import boto3  # a dependency of moto, imported here like moto: only once a test needs it

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (region us-east-1); return its URL ``s3://<name>``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted (follows pagination)."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client (or KD_PIPELINE_LAKE) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def duckdb_secret_sql(self, name: str = "kd_s3") -> str:
        """The ``CREATE SECRET`` statement that points DuckDB's httpfs at this server."""
        return (
            f"CREATE OR REPLACE SECRET {name} (TYPE s3, KEY_ID '{self.access_key_id}', "
            f"SECRET '{self.secret_access_key}', REGION '{self.region}', "
            f"ENDPOINT '{self.host_port}', URL_STYLE 'path', USE_SSL false)"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and delete its log; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log.name:
            self._log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session; each test creates its own database."""
    try:
        server = PostgresServer()
    except MissingServerError as err:
        pytest.fail(str(err), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session; each test creates its own bucket."""
    try:
        server = S3Server()
    except MissingServerError as err:
        pytest.fail(str(err), pytrace=False)
    with server:
        yield server
