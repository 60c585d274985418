"""SPLADE distillation folders (light-splade's layout) and the rules their trainer enforces.

light-splade reads four NDJSON files and validates them only after loading everything, in
Python, one rule at a time, stopping at the first offender. These are the same rules as
plain functions over DuckDB tables, each returning *every* violation as `(rule, id,
detail)` rows, so the export's blocking checks, `kd-pipeline validate-splade` and the
tests all judge a folder the same way, in seconds, before a trainer ever starts.

Layout (a path may be a file or a folder of `.ndjson` / `.ndjson.gz` files)::

    train/query_master.ndjson        {"qid": int, "text": str}
    train/doc_master.ndjson          {"doc_id": int, "text": str}
    train/positive_lists.ndjson      {"qid": int, "positive_doc_ids": [int, ...]}
    validation/...                   the same three (optional)
    hard-negatives-cross-encoder-scores.ndjson.gz   {"qid": int, "scores": {"<doc_id>": float}}
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from kd_pipeline.checks.rules import EXAMPLES, Rule, RuleOutcome, Table
from kd_pipeline.lake import quote_literal
from kd_pipeline.lines import LineCensus, LinesError, cleaned_copy, take_census, unaccounted
from kd_pipeline.parsers import engine_reason

SCORES_FILE = "hard-negatives-cross-encoder-scores"
MASTER_FILES = {"queries": "query_master", "documents": "doc_master", "positives": "positive_lists"}
SPLITS = ("train", "validation")
_SPLIT_TYPE = f"ENUM({', '.join(repr(s) for s in SPLITS)})"  # joins hash it as a small int
SUFFIXES = (".ndjson", ".ndjson.gz")
POINTWISE_ALTERNATIVE = (
    "a pointwise export, e.g. sentence-transformers (query, document, score) "
    "(kd-pipeline format `pointwise`)"
)

_INTEGER_TYPES = ("UBIGINT", "BIGINT")
# Lists mixing negative and large positive ints come out as HUGEINT; [] and [null] as NULL.
_LIST_TYPES = ('["UBIGINT"]', '["BIGINT"]', '["HUGEINT"]', '["NULL"]')
_NUMBER_TYPES = ("UBIGINT", "BIGINT", "HUGEINT", "DOUBLE")
_NEVER_IN_JSON = "\x01"  # a raw control character: JSON escapes it inside strings
LONG_LINE_MIB = 48  # the longest line read at all (a longer one fails its file, named)
_DERIVED_TABLES = ("positive_scores", "qid_presence")  # built by rules, once per load
SCRATCH_DB = "kd_splade_scratch"  # where a background thread's tables are shared
BUFFER_MIB = 64  # DuckDB's read unit: small enough that both threads share a small file


class LayoutError(ValueError):
    """A SPLADE folder is missing a file (or holds none of the right type)."""


# ---- finding the files ---------------------------------------------------------------------
def ndjson_files(path: Path) -> list[Path]:
    """The files the consumer reads for one entry: the path itself when it is an `.ndjson`
    or `.ndjson.gz` file, else the folder's `*.ndjson` and `*.ndjson.gz` (not recursive)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if path.is_file() and path.name.endswith(SUFFIXES):
        return [path]
    return []


def entry_files(base: Path, stem: str) -> list[Path]:
    """`<stem>.ndjson`, `<stem>.ndjson.gz` or a folder `<stem>` (or `<stem>.ndjson`) of them."""
    for candidate in (base / f"{stem}.ndjson", base / f"{stem}.ndjson.gz", base / stem):
        files = ndjson_files(candidate)
        if files:
            return files
    return []


@dataclass(frozen=True)
class SpladeLayout:
    """The files of each part of a SPLADE folder."""

    splits: dict[str, dict[str, tuple[Path, ...]]]  # split -> queries|documents|positives
    scores: tuple[Path, ...]
    root: Path = Path(".")


def resolve_layout(
    root: Path,
    *,
    scores: Path | None = None,
    splits: Sequence[str] | None = None,
) -> SpladeLayout:
    """Find a folder's files as light-splade would be pointed at them.

    The train split is required, validation is read when `validation/` exists (or when
    asked for in splits), the score file is looked for at the root (the layout shares it
    between the splits) unless given.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    wanted = (
        list(splits)
        if splits
        else ["train", *(["validation"] if (root / "validation").is_dir() else [])]
    )
    found: dict[str, dict[str, tuple[Path, ...]]] = {}
    missing: list[str] = []
    for split in wanted:
        if split not in SPLITS:
            raise LayoutError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        parts: dict[str, tuple[Path, ...]] = {}
        for kind, stem in MASTER_FILES.items():
            files = entry_files(root / split, stem)
            if not files:
                missing.append(f"{split}/{stem}.ndjson[.gz]")
            parts[kind] = tuple(files)
        found[split] = parts
    score_files = ndjson_files(scores) if scores is not None else entry_files(root, SCORES_FILE)
    if not score_files:
        missing.append(str(scores) if scores is not None else f"{SCORES_FILE}.ndjson[.gz]")
    if missing:
        raise LayoutError(f"{root}: missing {', '.join(missing)}")
    return SpladeLayout(found, tuple(score_files), root.resolve())


# ---- reading the files into DuckDB ---------------------------------------------------------
@dataclass(frozen=True)
class SpladeTables:
    """The temp tables one folder was loaded into (names carry a prefix, so two folders can
    be loaded on one connection). Only ids are kept: no rule needs a text or a score value,
    only that it is well formed.

    A row whose id is an integer is kept even when another field is malformed, so one bad
    row is reported once, by `rows_well_formed`, not again as a missing id.
    """

    prefix: str
    splits: tuple[str, ...]
    root: str = ""  # file names in reports are relative to it

    @property
    def queries(self) -> str:  # (split, qid)
        return f"{self.prefix}queries"

    @property
    def documents(self) -> str:  # (split, doc_id)
        return f"{self.prefix}documents"

    @property
    def positives(self) -> str:  # (split, qid, positive_doc_ids BIGINT[])
        return f"{self.prefix}positives"

    @property
    def scores(self) -> str:  # (qid, doc_ids BIGINT[]): one per row, its well-formed keys
        return f"{self.prefix}scores"

    @property
    def malformed(self) -> str:  # (file, split, id, problem)
        return f"{self.prefix}malformed"

    @property
    def lines(self) -> str:  # (file, split, rows)
        return f"{self.prefix}lines"

    @property
    def staging(self) -> str:
        return f"{self.prefix}staging"


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


def _shapes(keys: dict[str, Sequence[str]]) -> list[str]:
    """Every json_structure() string a well-formed row can have (any key order)."""
    shapes = []
    for order in itertools.permutations(keys):
        for types in itertools.product(*(keys[k] for k in order)):
            fields = [
                f'"{k}":' + (t if t.startswith("[") else f'"{t}"')
                for k, t in zip(order, types, strict=True)
            ]
            shapes.append("{" + ",".join(fields) + "}")
    return shapes


def _sql_list(values: Sequence[object]) -> str:
    return (
        "["
        + ", ".join(_sql_list(v) if isinstance(v, list) else quote_literal(str(v)) for v in values)
        + "]"
    )


# Strict patterns for the score file's fast path: a line they match is certainly a
# well-formed row (integer qid and keys that fit 64 bits, finite numbers: exponents of at
# most two digits). A line they do not match is judged exactly, by parsing it.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_WS = r"[ \t]*"
_ENTRY = rf'"{_INT}"{_WS}:{_WS}{_NUMBER}'
_SCORE_LINE = (
    rf'\{{{_WS}"qid"{_WS}:{_WS}{_INT}{_WS},{_WS}"scores"{_WS}:{_WS}\{{{_WS}'
    rf"(?:{_ENTRY}(?:{_WS},{_WS}{_ENTRY})*)?{_WS}\}}{_WS}\}}[ \t\r]*"
)
_SCORE_QID = rf'^\{{{_WS}"qid"{_WS}:{_WS}({_INT})'
_POSITIVE_LINE = (
    rf'\{{{_WS}"qid"{_WS}:{_WS}{_INT}{_WS},{_WS}"positive_doc_ids"{_WS}:{_WS}\[{_WS}'
    rf"(?:{_INT}(?:{_WS},{_WS}{_INT})*)?{_WS}\]{_WS}\}}[ \t\r]*"
)


@dataclass(frozen=True)
class _Kind:
    """One master file's row shape, its fast check and its exact diagnosis."""

    table: str  # SpladeTables attribute
    id_key: str
    value_key: str
    json_types: dict[str, tuple[str, ...]]  # json_structure types a key may have
    expected: str  # for messages
    value_type: str | None = None  # kept in the table (positives only)


_MASTERS = (
    _Kind(
        "queries",
        "qid",
        "text",
        {"qid": _INTEGER_TYPES, "text": ("VARCHAR",)},
        '{"qid": integer, "text": string}',
    ),
    _Kind(
        "documents",
        "doc_id",
        "text",
        {"doc_id": _INTEGER_TYPES, "text": ("VARCHAR",)},
        '{"doc_id": integer, "text": string}',
    ),
    _Kind(
        "positives",
        "qid",
        "positive_doc_ids",
        {"qid": _INTEGER_TYPES, "positive_doc_ids": _LIST_TYPES},
        '{"qid": integer, "positive_doc_ids": [integer, ...]}',
        "BIGINT[]",
    ),
)
_MASTER_FILE = {"queries": "queries", "documents": "documents", "positives": "positives"}
_SCORES_EXPECTED = '{"qid": integer, "scores": {"<doc_id>": number, ...}}'


def _problem(keys: Sequence[str], expected: str, shape_ok: str) -> str:
    """SQL: what is wrong with a line (NULL when well formed): blank, not JSON, not an
    object, extra or missing keys, else a wrong type (the row's structure is shown)."""
    wanted = _sql_list(list(keys))
    extra = f"list_filter(json_keys(line), lambda k: NOT list_contains({wanted}, k))"
    missing = f"list_filter({wanted}, lambda k: NOT list_contains(json_keys(line), k))"
    return (
        "CASE WHEN line IS NULL OR trim(line) = '' THEN 'blank line (json.loads fails on it)' "
        "WHEN NOT json_valid(line) THEN 'not valid JSON' "
        f"WHEN {shape_ok} THEN NULL "
        "WHEN json_type(line) <> 'OBJECT' THEN 'not a JSON object but ' || json_type(line) "
        f"WHEN len({extra}) > 0 THEN 'extra key(s) ' || array_to_string({extra}, ', ') "
        f"WHEN len({missing}) > 0 THEN 'missing key(s) ' || array_to_string({missing}, ', ') "
        f"ELSE {quote_literal('expected ' + expected + ', found ')} || "
        "json_structure(line)::VARCHAR END"
    )


def _loose_id(key: str) -> str:
    """SQL: the integer id of a line, whatever else is wrong with it (NULL if it has none)."""
    return (
        "CASE WHEN line IS NOT NULL AND json_valid(line) THEN CASE WHEN "
        f"list_contains({_sql_list(list(_INTEGER_TYPES))}, json_type(line, '$.{key}')) "
        f"THEN TRY_CAST(line ->> '$.{key}' AS BIGINT) END END"
    )


def _id_label(key: str) -> str:
    """SQL: an offending line named by its id, else by its first characters."""
    return (
        f"coalesce('{key} ' || CAST(id AS VARCHAR), "
        "'line ' || coalesce(to_json(left(line, 60))::VARCHAR, '(blank)'))"
    )


def load_splade(
    con: duckdb.DuckDBPyConnection,
    layout: SpladeLayout,
    prefix: str = "splade_",
    scratch: Path | None = None,
) -> SpladeTables:
    """Read a SPLADE folder's files into temp tables, recording every malformed line.

    Each line takes a cheap check that only well-formed rows pass (the key list and two
    JSON types for a master row, a strict pattern for a score row), and only the lines
    that fail it are parsed again to say exactly what is wrong (a differently ordered or
    spaced row is still well formed). A file DuckDB cannot read at all (not UTF-8, not
    gzip) is one malformed entry naming the file, not an exception. Before any of that,
    every file gets a line census (`ReadPlan`): gzip files are decompressed whole (CRC and
    length checked), a line the census rejects (longer than LONG_LINE_MIB, holding a NUL
    byte or a CR that does not end it) refuses its file, named with that line (no line is
    ever skipped), mixed LF/CRLF line ends are read from an LF copy in scratch (default:
    `default_scratch`; its free space checked first), and the lines each file yields are
    reconciled with the lines it has.
    """
    t = SpladeTables(prefix, tuple(layout.splits), str(layout.root))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {t.malformed} "
        "(file VARCHAR, split VARCHAR, id VARCHAR, problem VARCHAR)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {t.lines} (file VARCHAR, split VARCHAR, rows BIGINT)"
    )
    groups = [parts[kind.table] for kind in _MASTERS for parts in layout.splits.values()]
    censuses = _Censuses([*groups, layout.scores], scratch or default_scratch(layout.root))
    gzipped = [p for p in layout.scores if p.name.endswith(".gz")]
    # started at once on the files themselves: their census runs meanwhile, and only when
    # it asks for something else (a refused file, an LF copy) is the score file read again
    optimistic = ReadPlan(list(layout.scores), longest=LONG_LINE_MIB << 20)
    pending = _GzipLines(con, f"{prefix}score_lines", optimistic) if gzipped else None
    try:
        _load_all(con, t, layout, censuses, pending)
    finally:
        censuses.close()
    con.execute(f"DROP TABLE IF EXISTS {t.staging}")
    for derived in _DERIVED_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {t.prefix}{derived}")
    return t


def _load_all(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    layout: SpladeLayout,
    censuses: _Censuses,
    pending: _GzipLines | None,
) -> None:
    for kind in _MASTERS:
        value = f", {kind.value_key} {kind.value_type}" if kind.value_type else ""
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {getattr(t, kind.table)} "
            f"(split {_SPLIT_TYPE}, {kind.id_key} BIGINT{value})"
        )
        for split, parts in layout.splits.items():
            _load_master(con, t, kind, split, censuses.plan(parts[kind.table]))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {t.scores} (qid BIGINT, doc_ids BIGINT[])")
    scores = censuses.plan(layout.scores)
    if pending is not None and (scores.refused or scores.names):
        pending.discard()  # read on the files themselves; the plan reads otherwise
        pending = None
    _load_scores(con, t, scores, pending)


def default_scratch(root: Path) -> Path:
    """Where LF copies go when the caller names no folder: next to the folder validated
    (the export's output volume) when writable, else the system's temporary folder."""
    parent = Path(root).resolve().parent
    return parent if os.access(parent, os.W_OK) else Path(tempfile.gettempdir())


class _Censuses:
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


def _stage(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    split: str,
    files: Sequence[Path] | ReadPlan,
    select: str,
    pending: _GzipLines | None = None,
) -> int | None:
    """Create the staging table from select, whose `{lines}` is the files' lines as
    (file, line), and return how many lines failed the fast check; None when no file could
    be read (each recorded as malformed). Gzip files are decompressed into a table first
    (or were, by pending): decompression is sequential, and the JSON work on the table then
    runs on every thread. The lines read per file must be the lines the census counted."""
    plan = files if isinstance(files, ReadPlan) else ReadPlan.make(files, default_scratch(t.root))
    try:
        for path, problem in plan.refused:
            _file_malformed(con, t, path, split, problem)
        if not plan.readable:
            if pending is not None:
                pending.discard()
            return None
        per_file = _stage_lines(con, t, split, plan, select, pending)
    finally:
        if plan is not files:
            plan.close()
    if per_file is None:
        return None
    if per_file:  # none for empty files
        con.executemany(
            f"INSERT INTO {t.lines} VALUES (?, ?, ?)", [(f, split, n) for f, n, _ in per_file]
        )
    read = {f: int(n) for f, n, _ in per_file}
    for name, census in plan.census.items():
        gap = unaccounted(census, census.lines, read.get(name, 0))  # a blank line is a row
        if gap:
            _file_malformed(con, t, Path(name), split, gap)
    return sum(int(slow) for _, _, slow in per_file)


def _file_malformed(
    con: duckdb.DuckDBPyConnection, t: SpladeTables, path: Path, split: str, problem: str
) -> None:
    con.execute(
        f"INSERT INTO {t.malformed} VALUES ($f, $s, '(file)', $p)",
        {"f": str(path), "s": split, "p": problem},
    )


def _stage_lines(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    split: str,
    plan: ReadPlan,
    select: str,
    pending: _GzipLines | None,
) -> list[tuple[str, int, int]] | None:
    """(file, lines, lines failing the fast check) per file read, or None when DuckDB
    cannot read them (each file recorded as malformed)."""
    create = f"CREATE OR REPLACE TEMP TABLE {t.staging} AS "
    files = plan.readable
    try:
        if pending is None and any(p.name.endswith(".gz") for p in files):
            pending = _GzipLines(con, f"{t.prefix}gz_lines", plan)
        if pending is not None:
            try:
                con.execute(create + select.replace("{lines}", pending.wait()))
            finally:  # the decompressed text is not needed once staged
                con.execute(f"DROP TABLE IF EXISTS {pending.table}")
        else:
            con.execute(create + select.replace("{lines}", _plain_lines(plan)))
    except duckdb.Error as exc:
        reason = engine_reason(exc, plan.names)
        for path in files:
            _file_malformed(
                con,
                t,
                Path(plan.names.get(str(path), str(path))),
                split,
                f"cannot be read: {reason}",
            )
        return None
    return con.execute(
        f"SELECT file, count(*), count_if(NOT fast_ok) FROM {t.staging} GROUP BY file"
    ).fetchall()


def _plain_lines(plan: ReadPlan) -> str:
    source = _lines_source(plan.readable, plan.longest)
    return f"(SELECT {plan.file_column()} AS file, line FROM {source})"


class _GzipLines:
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
            cursor.execute(f"CREATE OR REPLACE TABLE {self.table} AS {_plain_lines(plan)}")
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


def _load_master(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    kind: _Kind,
    split: str,
    files: Sequence[Path] | ReadPlan,
) -> None:
    """A master file. Fast check of a text master: valid JSON with exactly the keys
    [id, text] in that order (json_keys), and a line that starts `{"<id>": <integer>,
    "text": "` (one anchored pattern, which also captures the id): with exactly those two
    keys, that proves the id is an integer and the text a string. Positive lists: a strict
    pattern over the whole line (the element types count)."""
    id_key, value_key = kind.id_key, kind.value_key
    if kind.value_type:
        fast = f"regexp_full_match(line, {quote_literal(_POSITIVE_LINE)})"
        fast_id = f"TRY_CAST(line ->> '$.{id_key}' AS BIGINT)"
        prefix_id = "NULL"
        value = (
            f", CASE WHEN fast_ok THEN json_transform(line, "
            f'\'{{"{value_key}":"{kind.value_type}"}}\').{value_key} END AS value'
        )
    else:
        keys = _sql_list([id_key, value_key])
        fast = f"coalesce(try(json_keys(line)) = {keys}, false) AND prefix_id <> ''"
        fast_id = "TRY_CAST(prefix_id AS BIGINT)"
        prefix = rf'^\{{{_WS}"{id_key}"{_WS}:{_WS}({_INT}){_WS},{_WS}"{value_key}"{_WS}:{_WS}"'
        prefix_id = f"regexp_extract(line, {quote_literal(prefix)}, 1)"
        value = ""
    select = (
        f"SELECT file, fast_ok, CASE WHEN fast_ok THEN {fast_id} END AS id{value}, "
        "CASE WHEN NOT fast_ok THEN line END AS line FROM "
        f"(SELECT file, line, prefix_id, coalesce(line IS NOT NULL AND {fast}, false) AS fast_ok "
        f"FROM (SELECT file, line, {prefix_id} AS prefix_id FROM {{lines}}))"
    )
    slow = _stage(con, t, split, files, select)
    if slow is None:
        return
    if slow:
        _diagnose_master(con, t, kind, split)
    keep = ", value" if kind.value_type else ""
    con.execute(
        f"INSERT INTO {getattr(t, kind.table)} SELECT $s, id{keep} FROM {t.staging} "
        "WHERE id IS NOT NULL",
        {"s": split},
    )


def _diagnose_master(
    con: duckdb.DuckDBPyConnection, t: SpladeTables, kind: _Kind, split: str
) -> None:
    """The lines that failed the fast check: their id (if any), their value when well
    formed, and what is wrong. A line that passed it is well formed with ids of at most
    18 digits (they fit 64 bits), so a folder without slow lines skips all of this."""
    id_key, value_key = kind.id_key, kind.value_key
    shapes = _sql_list(_shapes(kind.json_types))
    exact_ok = f"list_contains({shapes}, try(json_structure(line))::VARCHAR)"
    con.execute(f"UPDATE {t.staging} SET id = {_loose_id(id_key)} WHERE NOT fast_ok")
    if kind.value_type:
        con.execute(
            f"UPDATE {t.staging} SET value = json_transform(line, "
            f'\'{{"{value_key}":"{kind.value_type}"}}\').{value_key} '
            f"WHERE NOT fast_ok AND CASE WHEN json_valid(line) THEN {exact_ok} ELSE false END"
        )
    late = f"WHEN id IS NULL THEN '{id_key} outside the 64-bit integer range' " + (
        "WHEN list_count(value) <> len(value) THEN "
        "'positive_doc_ids holds a null or an id outside the 64-bit range' "
        if kind.value_type
        else ""
    )
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, $s, {_id_label(id_key)}, problem FROM "
        "(SELECT file, id, line, coalesce(CASE WHEN NOT fast_ok THEN "
        f"{_problem(list(kind.json_types), kind.expected, exact_ok)} END, CASE {late} END) "
        f"AS problem FROM {t.staging}) WHERE problem IS NOT NULL",
        {"s": split},
    )


def _load_scores(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    files: Sequence[Path] | ReadPlan,
    pending: _GzipLines | None = None,
) -> None:
    """Score rows: exactly `qid` and `scores`; every key an integer doc id (the consumer
    calls int() on it), every value a finite number. A row with a bad entry is malformed;
    every entry keyed by a doc id still counts as that doc's score entry, so a NaN or
    non-numeric score is reported once, by rows_well_formed, and not again as a pair
    without a teacher score (issue 12 item 7)."""
    select = (
        f"SELECT file, fast_ok, "
        f"CASE WHEN fast_ok THEN TRY_CAST(regexp_extract(line, {quote_literal(_SCORE_QID)}, 1) "
        "AS BIGINT) END AS id, "
        "CASE WHEN fast_ok THEN TRY_CAST(json_keys(line, '$.scores') AS BIGINT[]) END AS doc_ids, "
        "CASE WHEN NOT fast_ok THEN line END AS line FROM "
        f"(SELECT file, line, coalesce(regexp_full_match(line, {quote_literal(_SCORE_LINE)}), "
        "false) AS fast_ok FROM {lines})"
    )
    slow = _stage(con, t, "-", files, select, pending)
    if slow is None:
        return
    if slow:
        _diagnose_scores(con, t)
    con.execute(f"INSERT INTO {t.scores} SELECT id, doc_ids FROM {t.staging} WHERE id IS NOT NULL")


def _diagnose_scores(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> None:
    """The score lines that failed the fast check: their qid (if any), what is wrong, and
    the doc ids of their well-formed entries. A line that passed it is well formed with
    ids of at most 18 digits (they fit 64 bits), so a folder without slow lines skips this."""
    shape_ok = (
        "list_sort(json_keys(line)) = ['qid', 'scores'] AND "
        f"list_contains({_sql_list(list(_INTEGER_TYPES))}, json_type(line, '$.qid')) AND "
        "json_type(line, '$.scores') = 'OBJECT'"
    )
    con.execute(f"UPDATE {t.staging} SET id = {_loose_id('qid')} WHERE NOT fast_ok")
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, '-', {_id_label('qid')}, problem FROM "
        f"(SELECT file, id, line, CASE WHEN NOT fast_ok THEN "
        f"{_problem(['qid', 'scores'], _SCORES_EXPECTED, shape_ok)} END AS problem "
        f"FROM {t.staging}) WHERE problem IS NOT NULL"
    )
    # entries of the slow rows whose structure is right: each key and value judged
    entry_problem = (
        "CASE WHEN NOT regexp_full_match(key, '[+-]?[0-9]+') OR doc_id IS NULL THEN "
        "'score key ' || to_json(key)::VARCHAR || ' is not an integer doc id' "
        "WHEN value IS NULL OR json_type(value) = 'NULL' THEN "
        "'score of doc ' || key || ' is null, not a number' "
        f"WHEN NOT list_contains({_sql_list(list(_NUMBER_TYPES))}, json_type(value)) THEN "
        "'score of doc ' || key || ' is ' || value || ', not a number' "
        "WHEN NOT isfinite(score) THEN 'score of doc ' || key || ' is not finite' END"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {t.prefix}entries AS "
        f"SELECT file, qid, doc_id, {entry_problem} AS problem FROM "
        "(SELECT file, qid, e.key AS key, e.value AS value, "
        "TRY_CAST(e.key AS BIGINT) AS doc_id, TRY_CAST(e.value AS DOUBLE) AS score FROM "
        "(SELECT file, id AS qid, unnest(map_entries(json_transform(line, "
        '\'{"scores":"MAP(VARCHAR, JSON)"}\').scores)) AS e '
        f"FROM {t.staging} WHERE NOT fast_ok AND id IS NOT NULL AND "
        f"CASE WHEN json_valid(line) THEN {shape_ok} ELSE false END))"
    )
    entries = f"{t.prefix}entries"
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, '-', 'qid ' || qid, min(problem) "
        f"FROM {entries} WHERE problem IS NOT NULL GROUP BY file, qid"
    )
    con.execute(  # a doc whose score is bad still has an entry: one fault, one message
        f"UPDATE {t.staging} s SET doc_ids = coalesce((SELECT list(doc_id) FROM {entries} e "
        "WHERE e.qid = s.id AND e.doc_id IS NOT NULL), []) WHERE NOT fast_ok AND id IS NOT NULL"
    )
    con.execute(f"DROP TABLE {entries}")


# ---- the rules -----------------------------------------------------------------------------
# Each rule is a function (connection, tables) -> relation of (rule, id, detail): every
# violation, not the first. Ids are prefixed by the split when a folder has a validation one.
Violations = Callable[[duckdb.DuckDBPyConnection, SpladeTables], duckdb.DuckDBPyRelation]


_NONE = "SELECT NULL AS id, NULL AS detail LIMIT 0"  # a rule with nothing to report


def _where(t: SpladeTables, split_expr: str) -> str:
    """`<split> ` before an id, when the folder has more than the train split."""
    return f"{split_expr} || ' '" if len(t.splits) > 1 else "''"


def _violations(
    con: duckdb.DuckDBPyConnection, rule: str, select: str, params: dict | None = None
) -> duckdb.DuckDBPyRelation:
    """select yields (id, detail); label the rows with the rule."""
    return con.sql(f"SELECT '{rule}' AS rule, id, detail FROM ({select})", params=params)


def rows_well_formed(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> duckdb.DuckDBPyRelation:
    """Each line is one JSON object with exactly the file's keys, ids JSON integers, texts
    strings, scores finite numbers keyed by integer doc ids (the consumer's dataclasses
    reject extra or missing keys; a string id silently never matches)."""
    return _violations(
        con,
        "rows_well_formed",
        "SELECT CASE WHEN starts_with(file, $root) THEN file[len($root) + 1:] ELSE file END "
        f"|| ' ' || id || ': ' || problem AS id, problem AS detail FROM {t.malformed}",
        {"root": t.root.rstrip("/") + "/"},
    )


def positive_qids_in_query_master(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Rule 1: every qid of the positive lists exists in the query master."""
    return _violations(
        con,
        "positive_qids_in_query_master",
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid of the positive lists is not in the query master' AS detail "
        f"FROM {_qid_presence(con, t)} WHERE positive_lists > 0 AND queries = 0",
    )


def queries_have_positive_list(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Rule 2: every qid of the query master has a positive list."""
    return _violations(
        con,
        "queries_have_positive_list",
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid of the query master has no positive list' AS detail "
        f"FROM {_qid_presence(con, t)} WHERE queries > 0 AND positive_lists = 0",
    )


def _qid_presence(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> str:
    """(split, qid, queries, positive_lists): how often each qid occurs in its split's query
    master and positive lists, counted once for the rules that compare them. When both
    files hold the same (split, qid) at every line and the qids only increase (files
    written in one sorted order, like ours), each qid is once in each, seen in one
    streaming pass; otherwise they are counted by a hash aggregate."""
    name = f"{t.prefix}qid_presence"
    if _exists(con, name):
        return name
    counted = (
        f"SELECT split, qid, 1 AS queries, 1 AS positive_lists FROM {t.queries}"
        if _line_for_line(con, t.queries, t.positives, "qid", "split")
        else "SELECT split, qid, count_if(in_queries) AS queries, "
        "count_if(NOT in_queries) AS positive_lists FROM "
        f"(SELECT split, qid, true AS in_queries FROM {t.queries} "
        f"UNION ALL SELECT split, qid, false FROM {t.positives}) GROUP BY split, qid"
    )
    con.execute(f"CREATE TEMP TABLE {name} AS {counted}")
    return name


def _line_for_line(con: duckdb.DuckDBPyConnection, a: str, b: str, key: str, *same: str) -> bool:
    """Tables a and b hold the same key (and same columns) at every row, and the key only
    increases: then each key is once in each and a POSITIONAL JOIN is their join on it,
    proven in one streaming pass (files written in one sorted order, like ours)."""
    differs = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in (key, *same))
    ((aligned,),) = con.execute(
        f"SELECT (SELECT count(*) FROM {a}) = (SELECT count(*) FROM {b}) AND "
        f"count_if(a.{key} <= a.previous OR {differs}) = 0 FROM "
        f"(SELECT *, lag({key}) OVER () AS previous FROM {a}) a POSITIONAL JOIN {b} b"
    ).fetchall()
    return bool(aligned)


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """A temp table of this connection exists (a derived table already built)."""
    ((found,),) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = $t", {"t": table}
    ).fetchall()
    return bool(found)


def _only_increasing(con: duckdb.DuckDBPyConnection, table: str, key: str) -> bool:
    """The key only increases in the table's row order, so no key repeats (whatever that
    order is): one streaming pass, where finding repeats takes a hash aggregate."""
    ((repeats,),) = con.execute(
        f"SELECT count_if({key} <= previous) FROM "
        f"(SELECT {key}, lag({key}) OVER () AS previous FROM {table})"
    ).fetchall()
    return repeats == 0


def _positive_pairs(t: SpladeTables) -> str:
    return (
        f"(SELECT DISTINCT split, qid, unnest(positive_doc_ids) AS doc_id FROM {t.positives} "
        "WHERE positive_doc_ids IS NOT NULL)"
    )


def positive_docs_in_doc_master(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Rule 3: every positive doc_id exists in the document master (of its split)."""
    return _violations(
        con,
        "positive_docs_in_doc_master",
        f"SELECT {_where(t, 'split')} || 'qid ' || qid || ' doc_id ' || doc_id AS id, "
        "'positive doc_id is not in the document master' AS detail "
        f"FROM {_positive_pairs(t)} p ANTI JOIN {t.documents} d USING (split, doc_id) "
        "WHERE doc_id IS NOT NULL",
    )


def queries_have_positive(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Rule 4: every query has at least one positive."""
    return _violations(
        con,
        "queries_have_positive",
        f"SELECT DISTINCT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'the positive list is empty' AS detail "
        f"FROM {t.positives} WHERE len(positive_doc_ids) = 0",
    )


def _positive_scores(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> str:
    """(split, qid, unscored, negatives): per positive list and its score row, the positives
    without a score and the scored non-positives, built in one pass for rules 5 and 6. A
    repeated qid (a warning of ids_unique) gives a row per pair of its rows."""
    name = f"{t.prefix}positive_scores"
    if _exists(con, name):
        return name
    joined = (
        f"{t.positives} p POSITIONAL JOIN {t.scores} s"
        if _line_for_line(con, t.positives, t.scores, "qid")
        else f"{t.positives} p JOIN {t.scores} s USING (qid)"
    )
    con.execute(
        f"CREATE TEMP TABLE {name} AS SELECT p.split, p.qid, "
        "list_filter(p.positive_doc_ids, lambda d: NOT list_contains(s.doc_ids, d)) AS unscored, "
        "list_filter(s.doc_ids, lambda d: NOT list_contains(p.positive_doc_ids, d)) AS negatives "
        f"FROM {joined} WHERE p.positive_doc_ids IS NOT NULL"
    )
    return name


def queries_have_negative(
    con: duckdb.DuckDBPyConnection, t: SpladeTables, alternative: str = POINTWISE_ALTERNATIVE
) -> duckdb.DuckDBPyRelation:
    """Rule 5 (training split): every query has an available negative, a doc with a score
    that is not a positive and is in the document master. When no query has one the data
    is pointwise (every scored pair a positive): the detail says so and what to use."""
    if "train" not in t.splits:
        return _violations(con, "queries_have_negative", _NONE)
    # per query of the train positive lists with a score row: its scored non-positives
    negatives = f"(SELECT qid, negatives FROM {_positive_scores(con, t)} WHERE split = 'train')"
    available = f"{t.prefix}with_negative"
    docs = f"(SELECT doc_id FROM {t.documents} WHERE split = 'train')"
    # most queries' first negative is in the master: unnest only the other queries' lists
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {available} AS SELECT qid FROM "
        f"(SELECT qid, negatives[1] AS doc_id FROM {negatives}) SEMI JOIN {docs} USING (doc_id)"
    )
    ((rows, first_available),) = con.execute(
        f"SELECT (SELECT count(*) FROM {negatives}), (SELECT count(*) FROM {available})"
    ).fetchall()
    if rows == first_available:  # every row's first negative is available: no violation
        return _violations(con, "queries_have_negative", _NONE)
    con.execute(
        f"INSERT INTO {available} SELECT DISTINCT qid FROM (SELECT qid, unnest(negatives) "
        f"AS doc_id FROM {negatives} ANTI JOIN {available} USING (qid)) "
        f"SEMI JOIN {docs} USING (doc_id)"
    )
    checked = f"(SELECT DISTINCT qid FROM {negatives})"
    ((checked_count, with_negative),) = con.execute(
        f"SELECT (SELECT count(*) FROM {checked}), (SELECT count(*) FROM {available})"
    ).fetchall()
    if checked_count and not with_negative:
        detail = (
            "no scored negatives: no query has a scored document that is not a positive, "
            "so this is pointwise data and SPLADE distillation (one positive and one negative "
            f"per query, with teacher scores) cannot sample a negative; use {alternative} "
            "instead"
        )
    else:
        detail = "no available negative (a scored doc, not a positive, in the document master)"
    return _violations(
        con,
        "queries_have_negative",
        f"SELECT {_where(t, quote_literal('train'))} || 'qid ' || qid AS id, "
        f"{quote_literal(detail)} AS detail FROM {checked} ANTI JOIN {available} USING (qid)",
    )


def positive_pairs_scored(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Rule 6: every (query, positive) pair has a teacher score."""
    unscored = (  # list_filter, not list_has_all: that one is 20x slower (DuckDB 2.0)
        f"SELECT DISTINCT split, qid, unnest(unscored) AS doc_id FROM {_positive_scores(con, t)} "
        "WHERE len(unscored) > 0"
    )
    return _violations(
        con,
        "positive_pairs_scored",
        f"SELECT {_where(t, 'split')} || 'qid ' || qid || ' doc_id ' || doc_id AS id, "
        "'(query, positive) pair has no teacher score' AS detail "
        f"FROM ({unscored}) WHERE doc_id IS NOT NULL",
    )


def queries_have_score_row(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Every qid (query master or positive lists) has a row in the score file: the consumer
    looks each one up and fails on a missing one."""
    return _violations(
        con,
        "queries_have_score_row",
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid has no row in the score file' AS detail "
        f"FROM {_qid_presence(con, t)} ANTI JOIN {t.scores} USING (qid)",
    )


def has_training_queries(
    con: duckdb.DuckDBPyConnection, t: SpladeTables
) -> duckdb.DuckDBPyRelation:
    """Every split read has queries in its query master (an empty training set is a crash
    at the first epoch; an empty validation set one at the first evaluation). The rule
    applies to the splits asked for: `--split validation` judges the validation master."""
    splits = ", ".join(quote_literal(s) for s in t.splits)
    return _violations(
        con,
        "has_training_queries",
        "SELECT s || '/query_master' AS id, 'no queries in the ' || s || ' split' AS detail "
        f"FROM (SELECT unnest([{splits}]) AS s) WHERE s NOT IN "
        f"(SELECT DISTINCT CAST(split AS VARCHAR) FROM {t.queries})",
    )


def ids_unique(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> duckdb.DuckDBPyRelation:
    """An id occurs once per file (the consumer keeps the last row of a repeated id and
    silently drops the others; warning)."""
    where = _where(t, "split")
    presence = _qid_presence(con, t)
    parts = [
        f"SELECT {where} || 'qid ' || qid AS id, 'qid occurs ' || {column} || ' times in "
        f"{name}' AS detail FROM {presence} WHERE {column} > 1"
        for column, name in (
            ("queries", "the query master"),
            ("positive_lists", "the positive lists"),
        )
    ]
    if not _only_increasing(con, t.documents, "doc_id"):
        parts.append(
            f"SELECT {where} || 'doc_id ' || doc_id AS id, 'doc_id occurs ' || count(*) || "
            f"' times in the document master' AS detail FROM {t.documents} "
            "GROUP BY split, doc_id HAVING count(*) > 1"
        )
    if not _only_increasing(con, t.scores, "qid"):
        parts.append(
            "SELECT 'qid ' || qid AS id, 'qid occurs ' || count(*) || ' times in the score file' "
            f"AS detail FROM {t.scores} GROUP BY qid HAVING count(*) > 1"
        )
    return _violations(con, "ids_unique", " UNION ALL ".join(parts))


@dataclass(frozen=True)
class SpladeRule:
    """A SPLADE rule: its name, what it protects against, and its violations function."""

    name: str
    description: str
    violations: Violations
    blocking: bool = True


SPLADE_RULES: tuple[SpladeRule, ...] = (
    SpladeRule(
        "rows_well_formed",
        "Each line is one JSON object with exactly the file's keys; ids are JSON integers, "
        "texts strings, scores finite numbers keyed by integer doc ids.",
        rows_well_formed,
    ),
    SpladeRule(
        "positive_qids_in_query_master",
        "Rule 1: every qid of the positive lists exists in the query master.",
        positive_qids_in_query_master,
    ),
    SpladeRule(
        "queries_have_positive_list",
        "Rule 2: every qid of the query master has a positive list.",
        queries_have_positive_list,
    ),
    SpladeRule(
        "positive_docs_in_doc_master",
        "Rule 3: every positive doc_id exists in the document master.",
        positive_docs_in_doc_master,
    ),
    SpladeRule(
        "queries_have_positive",
        "Rule 4: every query has at least one positive.",
        queries_have_positive,
    ),
    SpladeRule(
        "queries_have_negative",
        "Rule 5 (training split): every query has an available negative: a document with a "
        "teacher score, not a positive, present in the document master.",
        queries_have_negative,
    ),
    SpladeRule(
        "positive_pairs_scored",
        "Rule 6: every (query, positive) pair has a teacher score.",
        positive_pairs_scored,
    ),
    SpladeRule(
        "queries_have_score_row",
        "Every qid of the query master and positive lists has a row in the score file.",
        queries_have_score_row,
    ),
    SpladeRule(
        "has_training_queries",
        "The query master of each split read (train, validation, or those asked for) is not "
        "empty: a split without queries crashes the consumer at its first epoch or evaluation.",
        has_training_queries,
    ),
    SpladeRule(
        "ids_unique",
        "Each id occurs once per file (warning: the consumer keeps the last one).",
        ids_unique,
        blocking=False,
    ),
)


def outcome_of(rule: str, violations: duckdb.DuckDBPyRelation, detail: str) -> RuleOutcome:
    """Count the violations and name the first few (ordered, so reports are stable)."""
    ((count,),) = violations.aggregate("count(*)").fetchall()
    examples: tuple[str, ...] = ()
    shown = detail
    if count:
        rows = violations.order("id").limit(EXAMPLES).fetchall()
        examples = tuple(str(r[1]) for r in rows)
        shown = str(rows[0][2])
    return RuleOutcome(rule, count == 0, int(count), examples, shown)


def evaluate_splade(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    alternative: str = POINTWISE_ALTERNATIVE,
) -> list[tuple[SpladeRule, RuleOutcome]]:
    """Every rule's verdict on a loaded folder."""
    results = []
    for rule in SPLADE_RULES:
        if rule.violations is queries_have_negative:
            rel = queries_have_negative(con, t, alternative)
        else:
            rel = rule.violations(con, t)
        results.append((rule, outcome_of(rule.name, rel, rule.description)))
    return results


def all_violations(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> duckdb.DuckDBPyRelation:
    """Every violation of every rule, as one relation (rule, id, detail)."""
    rels = [rule.violations(con, t) for rule in SPLADE_RULES]
    union = rels[0]
    for rel in rels[1:]:
        union = union.union(rel)
    return union


def audit_rules(
    con: duckdb.DuckDBPyConnection | None = None,
    t: SpladeTables | None = None,
    alternative: str = POINTWISE_ALTERNATIVE,
) -> list[Rule]:
    """The SPLADE rules as audit `Rule`s over a loaded folder (evaluated once, up front,
    so the audit and the metadata report the same verdicts). Without tables: the rules'
    names and descriptions, for declaring the asset checks."""
    if con is None or t is None:
        return [Rule(r.name, r.description, _unevaluated(r.name), r.blocking) for r in SPLADE_RULES]
    verdicts = evaluate_splade(con, t, alternative)
    return [Rule(r.name, r.description, _fixed(outcome), r.blocking) for r, outcome in verdicts]


def _fixed(outcome: RuleOutcome) -> Callable[[duckdb.DuckDBPyConnection, Table], RuleOutcome]:
    return lambda _con, _table: outcome


def _unevaluated(name: str) -> Callable[[duckdb.DuckDBPyConnection, Table], RuleOutcome]:
    def evaluate(_con: duckdb.DuckDBPyConnection, _table: Table) -> RuleOutcome:
        raise RuntimeError(f"{name}: load the SPLADE folder first (audit_rules(con, tables))")

    return evaluate


def validate_folder(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    *,
    scores: Path | None = None,
    splits: Sequence[str] | None = None,
    alternative: str = POINTWISE_ALTERNATIVE,
    scratch: Path | None = None,
) -> list[tuple[SpladeRule, RuleOutcome]]:
    """Resolve, load and judge a SPLADE folder (the CLI's whole job); scratch: where LF
    copies of files with mixed line ends go (`load_splade`)."""
    layout = resolve_layout(root, scores=scores, splits=splits)
    tables = load_splade(con, layout, scratch=scratch)
    return evaluate_splade(con, tables, alternative)
