"""DuckDB as the in-process engine: one connection per step, bounded in memory and threads.

Steps stream Parquet to Parquet through SQL; past the memory limit DuckDB spills to the
lake's scratch folder instead of failing, so a step's footprint does not grow with the data.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, field_validator

from kd_pipeline import ducklake, settings
from kd_pipeline.lake import Lake, quote_literal
from kd_pipeline.resources import FromEnvironment, bound_to_variable


class EngineResource(FromEnvironment, DuckDBResource):
    """DuckDB for a step: an in-memory database per step (nothing shared, so steps never
    wait on a file lock), bounded by `memory_limit` and `threads`. Built like the other
    resources (`FromEnvironment`): each limit is its variable's `dg.EnvVar` when set, else
    its default resolved now, validated by the settings' rule of that variable."""

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "memory_limit": settings.MEMORY_LIMIT_ENV,
        "threads": settings.THREADS_ENV,
    }
    INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"threads"})

    database: str = Field(default=":memory:", description="DuckDB's database: one in memory")
    memory_limit: str = Field(
        default_factory=settings.duckdb_memory_limit,
        description="KD_PIPELINE_DUCKDB_MEMORY: DuckDB's memory limit per step, past which it "
        "spills to the lake's scratch folder (e.g. 4GB, 512MiB, 50% of this machine; "
        "default 4GB)",
    )
    threads: int = Field(
        default_factory=settings.duckdb_threads,
        description="KD_PIPELINE_DUCKDB_THREADS: DuckDB's threads per step (default: all cores)",
    )

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        return value if bound_to_variable(value) else settings.parse_memory_limit(value)

    @field_validator("threads", mode="before")
    @classmethod
    def _positive_threads(cls, value: object) -> object:
        return value if bound_to_variable(value) else settings.parse_threads(value)  # type: ignore[arg-type]


@contextlib.contextmanager
def engine_connection(resource: EngineResource, lake: Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection from the step's EngineResource with its limits applied.

    For a lake on an object store, the connection also gets its credentials (the AWS_*
    variables, see `ducklake.configure_object_store`): steps read the published Parquet of
    their inputs by URL (`read_parquet('s3://bucket/prefix/data/...')`)."""
    with resource.get_connection() as con:
        con.execute("SET memory_limit = ?", [resource.memory_limit])
        con.execute("SET threads = ?", [resource.threads])
        con.execute("SET temp_directory = ?", [str(lake.scratch_dir())])
        con.execute("SET preserve_insertion_order = true")
        if lake.remote:
            ducklake.configure_object_store(con, str(lake.root))
        yield con


def default_duckdb_resource() -> EngineResource:
    """The engine as the environment configures it now, for code outside a Dagster run
    (the CLI, benchmarks, tests); raises pydantic's ValidationError naming a bad variable."""
    return EngineResource()


def connection_threads(con: duckdb.DuckDBPyConnection) -> int:
    """The threads a connection was given (`engine_connection`), for work beside DuckDB's
    own (e.g. gzip) to use as many."""
    ((threads,),) = con.execute("SELECT current_setting('threads')").fetchall()
    return int(threads)


def parquet_options() -> str:
    """The COPY options of every Parquet file the pipeline writes: zstd at the configured
    level, row groups of 100k rows."""
    return (
        f"FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {settings.zstd_level()}, "
        "ROW_GROUP_SIZE 100000"
    )


PART_DIGITS = 5  # part-00000.parquet: names sort in reading order (datasets, DuckDB globs)


def part_file_name(prefix: str, number: int) -> str:
    """`<prefix>part-NNNNN.parquet`, zero-padded so that name order is row order."""
    return f"{prefix}part-{number:0{PART_DIGITS}d}.parquet"


def copy_parquet(
    con: duckdb.DuckDBPyConnection,
    select: str,
    out_dir: Path,
    params: Mapping[str, Any] | None = None,
    *,
    filename_prefix: str = "",
    rows_per_file: int | None = None,
) -> int:
    """Stream a query into out_dir/<prefix>part-NNNNN.parquet (zstd) and return the rows.

    Files roll at ~512 MB, or every `rows_per_file` rows when given (exactly; the select's
    order is kept across files). The numbers are zero-padded, so every reader that sorts
    file names (`datasets`, DuckDB's globs) reads the rows in the select's order.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]*", filename_prefix):
        raise ValueError(f"unsafe file name prefix {filename_prefix!r}")
    if rows_per_file is not None:
        return _copy_in_chunks(con, select, out_dir, params, filename_prefix, rows_per_file)
    staging = out_dir / f".{filename_prefix}parts"
    out_dir.mkdir(parents=True, exist_ok=True)
    (rows,) = con.execute(
        f"COPY ({select}) TO {quote_literal(str(staging))} ({parquet_options()}, "
        "FILE_SIZE_BYTES '512MB', FILENAME_PATTERN 'part-{i}', OVERWRITE_OR_IGNORE true)",
        params or {},
    ).fetchall()[0]
    for part in staging.glob("part-*.parquet"):
        number = int(part.stem.removeprefix("part-"))
        os.replace(part, out_dir / part_file_name(filename_prefix, number))
    if staging.exists():
        staging.rmdir()
    return int(rows)


def _copy_in_chunks(
    con: duckdb.DuckDBPyConnection,
    select: str,
    out_dir: Path,
    params: Mapping[str, Any] | None,
    prefix: str,
    rows_per_file: int,
) -> int:
    """The select numbered once (in its order), then one file per `rows_per_file` rows."""
    if not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise ValueError(f"rows_per_file={rows_per_file!r}: expected an integer >= 1")
    # a table keeps the select's order as its rowid (insertion order is preserved)
    con.execute(f"CREATE OR REPLACE TEMP TABLE kd_numbered_rows AS {select}", params or {})
    ((total,),) = con.execute("SELECT count(*) FROM kd_numbered_rows").fetchall()
    out_dir.mkdir(parents=True, exist_ok=True)
    for number in range(max(1, -(-int(total) // rows_per_file))):
        target = out_dir / part_file_name(prefix, number)
        con.execute(
            "COPY (SELECT * FROM kd_numbered_rows "
            f"WHERE rowid // {rows_per_file} = {number} ORDER BY rowid) "
            f"TO {quote_literal(str(target))} ({parquet_options()})"
        )
    con.execute("DROP TABLE kd_numbered_rows")
    return int(total)
