"""DuckLake connections: the extensions, the object-store secret, the ATTACH, the retry.

DuckLake (DuckDB's lakehouse format) keeps table metadata and snapshots in a SQL database
(the catalog: SQLite on one machine, PostgreSQL for many) and the data as Parquet files under
a data path (a folder or an object store). Every connection to the lake is made here.

The extensions load from the `duckdb-extension-*` wheels pinned with `duckdb` (no download);
without a wheel, DuckDB's own `INSTALL`/`LOAD` is tried (it needs the network). DuckDB
checks the official signature of every extension it loads: unsigned ones stay refused.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from kd_pipeline.settings import CATALOG_ENV, LAKE_ENV, CatalogChoice

ALIAS = "lake"  # the name the lake is attached under on every connection

# extension -> the Python distribution that ships its signed binary
_WHEELS = {
    "ducklake": "duckdb_extension_ducklake",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
}

# Errors a concurrent writer causes; the short commit is retried on them.
_CONFLICT_MARKERS = (
    "transaction conflict",
    "database is locked",
    "could not serialize",
    "deadlock detected",
)


class CatalogUnreachable(Exception):
    """The catalog or the data path cannot be opened; the message names the setting."""


def extension_path(name: str) -> Path | None:
    """The `.duckdb_extension` file the wheel of `name` ships for this DuckDB, if installed."""
    spec = importlib.util.find_spec(_WHEELS[name])
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}"
    found = folder / f"{name}.duckdb_extension"
    return found if found.is_file() else None


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load one extension: from its wheel, else DuckDB's repository (needs the network)."""
    path = extension_path(name)
    if path is not None:
        con.execute(f"LOAD '{path}'")
    else:
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")


def configure_object_store(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Give the connection the credentials of an `s3://` data path from the standard AWS
    variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
    AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL (an S3-compatible server: MinIO, moto, R2);
    without keys, DuckDB's credential chain (instance profile, ~/.aws) is used."""
    load_extension(con, "httpfs")
    options = {"TYPE": "s3"}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["KEY_ID"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["SECRET"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    else:
        options["PROVIDER"] = "credential_chain"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["REGION"] = region
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if endpoint:
        parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        options["ENDPOINT"] = parsed.netloc
        options["USE_SSL"] = "true" if parsed.scheme == "https" else "false"
        options["URL_STYLE"] = "path"  # what S3-compatible servers serve
    bucket = urllib.parse.urlsplit(url).netloc
    options["SCOPE"] = f"s3://{bucket}"
    body = ", ".join(
        f"{key} {value}" if key in ("TYPE", "PROVIDER", "USE_SSL") else f"{key} {_literal(value)}"
        for key, value in options.items()
    )
    con.execute(f"CREATE OR REPLACE TEMPORARY SECRET kd_pipeline_lake ({body})")


def attach(
    con: duckdb.DuckDBPyConnection,
    catalog: CatalogChoice,
    data_path: str,
    *,
    read_only: bool = False,
) -> None:
    """Attach the lake to `con` as `lake` (ALIAS). `data_path` is the folder or URL (ending
    in `/`) DuckLake writes its Parquet files under; a catalog keeps the data path it was
    created with. Raises CatalogUnreachable naming KD_PIPELINE_CATALOG or KD_PIPELINE_LAKE
    and DuckDB's first line of the cause."""
    load_extension(con, "ducklake")
    load_extension(con, "postgres_scanner" if catalog.kind == "postgres" else "sqlite_scanner")
    if data_path.startswith("s3://"):
        configure_object_store(con, data_path)
    elif catalog.kind == "sqlite":
        try:
            Path(catalog.target).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogUnreachable(
                f"{CATALOG_ENV}: cannot open the lake catalog {catalog.describe()}: {exc}"
            ) from exc
    options = ["READ_ONLY"] if read_only else [f"DATA_PATH {_literal(data_path)}"]
    try:
        con.execute(f"ATTACH {_literal(catalog.attach_string)} AS {ALIAS} ({', '.join(options)})")
    except duckdb.Error as exc:
        if is_conflict(exc):
            raise  # another process is creating or committing: with_retry tries again
        cause = catalog_cause(exc, catalog)
        if "does not match existing data path" in cause:
            raise CatalogUnreachable(
                f"{LAKE_ENV}: the catalog {catalog.describe()} keeps its data under another "
                f"path than {data_path} ({cause}); point {LAKE_ENV} there or use "
                f"another {CATALOG_ENV}"
            ) from None
        raise CatalogUnreachable(
            f"{CATALOG_ENV}: cannot open the lake catalog {catalog.describe()}: {cause}"
        ) from None


T = TypeVar("T")


def with_retry(attempt: Callable[[], T], tries: int = 12, first_wait: float = 0.05) -> T:
    """Run `attempt` (one whole short transaction) again on a commit conflict with another
    writer, waiting 50 ms, then twice as long each time with jitter (up to ~1 min in all).
    DuckLake conflicts are per table: two runs swapping different partitions of one table
    conflict, and DuckLake's own retry does not resolve it; repeating the transaction does.
    Raises the last error when every try conflicted (or at once when it is no conflict)."""
    wait = first_wait
    for number in range(1, tries + 1):
        try:
            return attempt()
        except duckdb.Error as exc:
            if not is_conflict(exc) or number == tries:
                raise
        time.sleep(wait * (1 + random.random()))
        wait = min(wait * 2, 10.0)
    raise AssertionError("unreachable")


def is_conflict(exc: BaseException) -> bool:
    """Whether a DuckDB error is a concurrent writer's doing (retrying may succeed)."""
    text = str(exc).lower()
    return any(marker in text for marker in _CONFLICT_MARKERS)


# DuckDB's own suggestions, on the lines after its message: kept (a misspelled name's fix),
# unless the nearest name it found is one of its system views (`nowhere` -> "pg_indexes")
_HINT_PREFIXES = ("Did you mean", "Candidate bindings")
_SYSTEM_NAME = re.compile(r'"(?:[\w.]*\.)?(?:pg_|information_schema|duckdb_|sqlite_)')


def first_line(exc: BaseException) -> str:
    """An engine error as one line: its first line (no query excerpt, no traceback), with
    DuckDB's suggestion appended when it gives one (`Table with name recomended does not
    exist! Did you mean "lighton.recommended"?`) and it names no system view."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    hints = [
        line
        for line in lines[1:]
        if line.startswith(_HINT_PREFIXES) and not _SYSTEM_NAME.search(line)
    ]
    return " ".join(lines[:1] + hints)


# DuckLake's and the scanners' wrapping of the catalog database's own message
_ENGINE_PREFIX = re.compile(
    r"^(?:[A-Z][A-Za-z ]*Error: )?(?:Failed to probe DuckLake metadata: )?"
    r'(?:Failed to prepare query ".*?": )?',
    re.DOTALL,
)


def catalog_cause(exc: BaseException, catalog: CatalogChoice) -> str:
    """Why ATTACH could not open the catalog, as one readable line: the database's own
    message (libpq's "connection to server at ... failed: Connection refused", "FATAL:
    database "x" does not exist", SQLite's "unable to open database file") without the
    wrapping DuckDB adds around it (DuckLake's "Failed to attach DuckLake MetaData ... at
    path + ..." and the scanner's "Unable to connect to Postgres at ...", which repeat the
    connection string the caller names once, or the scanner's probe query); its hint
    lines joined with '; ', runs of spaces made one. No password can be in it:
    settings.parse_catalog refuses one in the connection string, and libpq takes it from
    PGPASSWORD or ~/.pgpass and never prints it."""
    text = str(exc).strip()
    quoted = f'"{catalog.target}": '
    if quoted in text:  # the scanner's "<what failed> "<target>": <the database's message>"
        text = text[text.rindex(quoted) + len(quoted) :]
    text = _ENGINE_PREFIX.sub("", text, count=1)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"NUL byte in {value!r}")
    return "'" + value.replace("'", "''") + "'"
