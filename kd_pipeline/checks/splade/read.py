"""Reading a SPLADE folder's files as lines into DuckDB, every line accounted for.

Each group of files first gets a line census (`ReadPlan`, from `kd_pipeline.lines`) on two
background threads; DuckDB then reads the files (or LF copies of them) as one VARCHAR line
each, gzip files decompressed by a second connection on a background thread
(`GzipLines`) so that one-threaded inflation overlaps the other work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from kd_pipeline.lake import quote_literal
from kd_pipeline.lines import LineCensus, LinesError, cleaned_copy, take_census

_NEVER_IN_JSON = "\x01"  # a raw control character: JSON escapes it inside strings
LONG_LINE_MIB = 48  # the longest line read at all (a longer one fails its file, named)
SCRATCH_DB = "kd_splade_scratch"  # where a background thread's tables are shared
BUFFER_MIB = 64  # DuckDB's read unit: small enough that both threads share a small file


def _lines_source(files: Sequence[Path], max_line_bytes: int) -> str:
    """A DuckDB source of the files' lines, one VARCHAR `line` each (a blank line is NULL),
    as Python iterates them. A raw control character never occurs in valid JSON, so no
    line is ever split. DuckDB's line limit is set from the census's longest line (its
    buffer must hold two; a small buffer keeps both threads busy on a small file)."""
    names = "[" + ", ".join(quote_literal(str(p)) for p in files) + "]"
    limit = max(max_line_bytes + 2, 1 << 20)
    return (
        f"read_csv({names}, columns = {{'line': 'VARCHAR'}}, delim = '{_NEVER_IN_JSON}', "
        "quote = '', escape = '', header = false, auto_detect = false, filename = true, "
        f"max_line_size = {limit}, buffer_size = {max(BUFFER_MIB << 20, 2 * limit)})"
    )


def default_scratch(root: Path) -> Path:
    """Where LF copies go when the caller names no folder: next to the folder validated
    (the export's output volume) when writable, else the system's temporary folder."""
    parent = Path(root).resolve().parent
    return parent if os.access(parent, os.W_OK) else Path(tempfile.gettempdir())


class Censuses:
    """The ReadPlan of each group of files, made on two background threads from the start
    (gzip inflation and numpy release the GIL), so the census of one file overlaps DuckDB's
    work on the files before it."""

    def __init__(self, groups: Sequence[Sequence[Path]], scratch: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="line-census")
        self._plans: dict[tuple[Path, ...], Future[ReadPlan]] = {}
        for group in groups:
            key = tuple(group)
            if key not in self._plans:
                self._plans[key] = self._pool.submit(ReadPlan.make, group, scratch)

    def plan(self, files: Sequence[Path]) -> ReadPlan:
        return self._plans[tuple(files)].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for future in self._plans.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()


@dataclass
class ReadPlan:
    """What DuckDB reads for some files, after a line census of each (kd_pipeline.lines):
    the file itself, or an LF copy of a file with mixed line ends; a file that cannot be
    read whole (corrupt gzip), holds a line the census rejects, or whose copy has no room
    is refused, named, and not read at all, since reading it would skip or split a line."""

    readable: list[Path] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # path read -> the file's own path
    census: dict[str, LineCensus] = field(default_factory=dict)  # own path -> its census
    refused: list[tuple[Path, str]] = field(default_factory=list)
    longest: int = 0  # the longest line to read, in bytes
    copies: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def make(cls, files: Sequence[Path], scratch: Path) -> ReadPlan:
        """The plan for files; never raises for a file's fault (it is refused instead).
        LF copies go to a fresh folder under scratch (decompressed: up to each file's
        decompressed size, checked against the free space first)."""
        plan = cls()
        for path in files:
            try:
                census = take_census(
                    path,
                    delimiters=b"",
                    max_bytes=LONG_LINE_MIB << 20,
                    max_fields=1 << 62,
                    label=str(path),
                )
                if census.rejected:
                    number, why = census.examples[0]
                    more = f" (and {census.rejected - 1:,} more)" if census.rejected > 1 else ""
                    plan.refused.append(
                        (
                            path,
                            f"line {number}: {why}{more}; the file is refused, as no line "
                            "is skipped",
                        )
                    )
                    continue
                readable = path
                if census.mixed_line_ends:
                    readable = plan.copies.enter_context(
                        cleaned_copy(path, census, scratch, str(path))
                    )
                    plan.names[str(readable)] = str(path)
            except LinesError as exc:
                plan.refused.append((path, str(exc).removeprefix(f"{path}: ")))
                continue
            plan.census[str(path)] = census
            plan.readable.append(readable)
            plan.longest = max(plan.longest, census.longest)
        return plan

    def file_column(self) -> str:
        """SQL: the file's own path from DuckDB's `filename` column."""
        if not self.names:
            return "filename"
        cases = " ".join(
            f"WHEN {quote_literal(a)} THEN {quote_literal(b)}" for a, b in self.names.items()
        )
        return f"CASE filename {cases} ELSE filename END"

    def close(self) -> None:
        """Remove the LF copies."""
        self.copies.close()


def plain_lines(plan: ReadPlan) -> str:
    source = _lines_source(plan.readable, plan.longest)
    return f"(SELECT {plan.file_column()} AS file, line FROM {source})"


class GzipLines:
    """Gzip files' lines, decompressed into a table by a second connection on a background
    thread. DuckDB inflates a gzip file on one thread, so started early (the score file,
    before the masters) it overlaps with the masters' work on the other threads. The
    table lives in an attached in-memory database: temp tables are per connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, name: str, plan: ReadPlan) -> None:
        con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {SCRATCH_DB}")
        self.table = f"{SCRATCH_DB}.{name}"
        self._con = con
        self._error: duckdb.Error | None = None
        self._thread = threading.Thread(
            target=self._read, args=(con.cursor(), plan), name=f"gunzip {name}", daemon=True
        )
        self._thread.start()

    def _read(self, cursor: duckdb.DuckDBPyConnection, plan: ReadPlan) -> None:
        try:
            cursor.execute(f"CREATE OR REPLACE TABLE {self.table} AS {plain_lines(plan)}")
        except duckdb.Error as exc:  # raised again by wait(), in the caller's thread
            self._error = exc
        finally:
            cursor.close()

    def wait(self) -> str:
        """The table's name once it is complete (or the reading error)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.table

    def discard(self) -> None:
        """Wait for the thread and drop what it read (nothing of it is wanted)."""
        self._thread.join()
        self._con.execute(f"DROP TABLE IF EXISTS {self.table}")
