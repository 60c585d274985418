"""DuckDB as the in-process engine: one connection per step, bounded in memory and threads.

Steps stream Parquet to Parquet through SQL; past the memory limit DuckDB spills to the
lake's scratch folder instead of failing, so a step's footprint does not grow with the data.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
from dagster_duckdb import DuckDBResource

from kd_pipeline import settings
from kd_pipeline.lake import Lake, quote_literal


@contextlib.contextmanager
def engine_connection(resource: DuckDBResource, lake: Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection from the step's DuckDBResource with the pipeline's limits applied."""
    with resource.get_connection() as con:
        con.execute("SET memory_limit = ?", [settings.duckdb_memory_limit()])
        con.execute("SET threads = ?", [settings.duckdb_threads()])
        con.execute("SET temp_directory = ?", [str(lake.scratch_dir())])
        con.execute("SET preserve_insertion_order = true")
        yield con


def default_duckdb_resource() -> DuckDBResource:
    """An in-memory database per step: nothing shared, so steps never wait on a file lock."""
    return DuckDBResource(database=":memory:")


def parquet_options() -> str:
    """The COPY options of every Parquet file the pipeline writes: zstd at the configured
    level, row groups of 100k rows."""
    return (
        f"FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {settings.zstd_level()}, "
        "ROW_GROUP_SIZE 100000"
    )


def copy_parquet(
    con: duckdb.DuckDBPyConnection,
    select: str,
    out_dir: Path,
    params: Mapping[str, Any] | None = None,
    *,
    filename_prefix: str = "",
) -> int:
    """Stream a query into out_dir/<prefix>part-N.parquet (zstd, files rolled at ~512 MB)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", filename_prefix):
        raise ValueError(f"unsafe file name prefix {filename_prefix!r}")
    (rows,) = con.execute(
        f"COPY ({select}) TO {quote_literal(str(out_dir))} ({parquet_options()}, "
        "FILE_SIZE_BYTES '512MB', "
        f"FILENAME_PATTERN '{filename_prefix}part-{{i}}', OVERWRITE_OR_IGNORE true)",
        params or {},
    ).fetchall()[0]
    return int(rows)
