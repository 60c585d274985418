"""Readers for the upstream file formats of the text, pairwise and listwise families.

- **Archives** (`.tar.gz`, `.zip`) are unpacked streaming, one wanted member at a time, into
  a scratch folder, and verified whole: the compressed stream is read to its end (every
  gzip member, each CRC-32 and length trailer) even when the wanted member comes first,
  and every zip entry's CRC is checked. A member that could escape (absolute path, `..`,
  a link, a device) makes the whole archive refused, and a truncated or corrupt archive is
  a clear error.
- **Every line is accounted for.** Before the engine reads a file, the line census
  (`kd_pipeline.lines`) counts its lines and rejects the ones DuckDB's reader would lose,
  merge or choke on (longer than MAX_LINE_BYTES, more fields than the format's
  `max_fields`, a NUL byte, a CR that does not end the line); the engine reads the file,
  or a cleaned copy (rejected lines blank, LF ends) under a scratch folder on the output's
  volume, its free space checked first; the rows read are reconciled with the line count,
  and every line unaccounted for is a malformed line.
- **Delimited text** (TSV, TREC runs and qrels) is parsed by DuckDB's CSV reader with the
  columns and types given explicitly (never sniffed, no quoting: upstream texts contain
  `"`), streamed through a SELECT into Parquet. A line the reader rejects is never dropped
  silently: formats whose fields are separated by "any whitespace" get a second chance
  (the line re-split on runs of whitespace), and every line that still does not parse is
  counted and reported as `<file>:<line>: <error>` in the `ParseReport`; the families turn
  that report into a blocking check, so a malformed file is never published.
- **JSON lines** (BEIR) are read by DuckDB with explicit columns, CRLF or mixed ends as
  they are (a CR is JSON whitespace), whitespace-only lines blank; a malformed line stops
  the read and is the report's malformed line (file, line, DuckDB's message without its
  own line number), re-labelled with the archive member.
- **No raw engine error**: any `duckdb.Error` becomes one ParseError line naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import lzma
import os
import re
import secrets
import shutil
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from kd_pipeline.engine import copy_parquet
from kd_pipeline.lake import quote_literal
from kd_pipeline.lines import (
    REPORTED,
    LineCensus,
    LinesError,
    cleaned_copy,
    open_text_bytes,
    take_census,
    unaccounted,
)

try:  # DuckDB >= 1.4 moved the SQL types here
    from duckdb.sqltypes import BOOLEAN
except ImportError:  # pragma: no cover - older DuckDB
    from duckdb.typing import BOOLEAN

_WHITESPACE = quote_literal(" \t\x0b\x0c\r")
_COPY_CHUNK = 1 << 20


class ParseError(Exception):
    """An upstream file cannot be read as its format; the message names the file."""


class ArchiveError(ParseError):
    """An archive is truncated, corrupt, lacks a member or holds a member that could escape."""


# ---- archives --------------------------------------------------------------------------------
def safe_member_name(name: str, archive: str) -> str:
    """A member's path, normalised (`./a` -> `a`), if it stays inside the extraction folder."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if (
        path.is_absolute()
        or "\\" in name
        or "\x00" in name
        or ".." in parts
        or (parts and ":" in parts[0])
    ):
        raise ArchiveError(f"{archive}: member {name!r} would escape the extraction folder")
    return "/".join(parts)  # "" for the archive's own root folder (`./`)


def _match_members(names: Sequence[str], wanted: Sequence[str], archive: str) -> dict[str, str]:
    """member name -> wanted name: exact match, else a unique `<folder>/<wanted>` suffix."""
    found: dict[str, str] = {}
    for want in wanted:
        exact = [n for n in names if n == want]
        nested = [n for n in names if n.endswith("/" + want)]
        candidates = exact or nested
        if len(candidates) != 1:
            shown = ", ".join(sorted(names)[:10]) or "nothing"
            problem = "is missing" if not candidates else f"is ambiguous ({candidates})"
            raise ArchiveError(f"{archive}: member {want!r} {problem}; the archive holds {shown}")
        found[candidates[0]] = want
    return found


def _copy_stream(source: Any, target: Path) -> None:
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)


def _read_to_end(stream: BinaryIO) -> None:
    """Decompress what is left of stream, so its trailers (CRC, length) are checked."""
    while stream.read(_COPY_CHUNK):
        pass


def _unpack_tar(archive: Path, wanted: Sequence[str], dest: Path) -> dict[str, Path]:
    """Stream the tar (any compression) once, copying the wanted members as they pass; stop
    parsing the tar as soon as all are out, so a member at the front of a large archive is
    quick, but decompress the rest: only the end of the stream proves (CRC and length
    trailers) that no byte was damaged. (A stream cannot look ahead: the first member
    matching a wanted name wins.)"""
    out: dict[str, Path] = {}
    seen: list[str] = []
    with open_text_bytes(archive) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = safe_member_name(member.name, archive.name)
                if not (member.isfile() or member.isdir()):
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise ArchiveError(
                        f"{archive.name}: member {member.name!r} is a {kind}; refusing"
                    )
                if member.isdir():
                    continue
                seen.append(name)
                match = [w for w in wanted if name == w or name.endswith("/" + w)]
                if match and match[0] not in out:
                    target = dest / f"{len(out)}-{PurePosixPath(name).name}"
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file always has data
                    _copy_stream(source, target)
                    out[match[0]] = target
                    if len(out) == len(wanted):
                        break
        _read_to_end(stream)
    missing = [w for w in wanted if w not in out]
    if missing:
        _match_members(seen, missing, archive.name)  # raises, naming what the archive holds
    return out


def _special_zip_entry(info: zipfile.ZipInfo) -> bool:
    """A zip entry that is a link, device, FIFO or socket. Only entries written on Unix
    carry a file mode, and many writers (`zipfile.writestr`) store permission bits alone:
    no file-type bits means a regular file."""
    if info.create_system != 3:  # not Unix: the attributes are DOS flags, never a link
        return False
    kind = stat.S_IFMT(info.external_attr >> 16)
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR)


def _unpack_zip(archive: Path, wanted: Sequence[str], dest: Path) -> dict[str, Path]:
    """Copy the wanted members out, after every entry's CRC-32 was checked (testzip reads
    them all), so a damaged byte anywhere in the archive refuses it."""
    out: dict[str, Path] = {}
    with zipfile.ZipFile(archive) as zf:
        names: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            name = safe_member_name(info.filename, archive.name)
            if _special_zip_entry(info):
                raise ArchiveError(
                    f"{archive.name}: member {info.filename!r} is a link or special file; refusing"
                )
            if not info.is_dir():
                names[name] = info
        matched = _match_members(list(names), wanted, archive.name)
        damaged = zf.testzip()
        if damaged is not None:
            raise ArchiveError(f"{archive.name}: member {damaged!r} fails its CRC check")
        for member, want in matched.items():
            target = dest / f"{len(out)}-{PurePosixPath(member).name}"
            with zf.open(names[member]) as source:
                _copy_stream(source, target)
            out[want] = target
    return out


@contextlib.contextmanager
def unpacked(archive: Path, wanted: Sequence[str], scratch: Path) -> Iterator[dict[str, Path]]:
    """The wanted members of archive as files in a fresh folder under scratch, removed on
    exit. Member names match exactly or as the unique `<folder>/<name>` suffix."""
    dest = scratch / f"unpack-{secrets.token_hex(6)}"
    dest.mkdir(parents=True)
    try:
        unpack = _unpack_zip if archive.name.endswith(".zip") else _unpack_tar
        try:
            members = unpack(archive, list(wanted), dest)
        except (
            tarfile.TarError,
            zipfile.BadZipFile,
            EOFError,
            zlib.error,
            gzip.BadGzipFile,
            lzma.LZMAError,
            OSError,
        ) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # the disk or the file system, not the archive (disk full, EIO)
            raise ArchiveError(
                f"{archive.name}: truncated or corrupt archive ({type(exc).__name__}: {exc})"
            ) from exc
        yield members
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# ---- delimited text ------------------------------------------------------------------------
@dataclass(frozen=True)
class DelimitedFormat:
    """A delimited text format with fixed columns (name, DuckDB type) and no quoting."""

    name: str
    columns: tuple[tuple[str, str], ...]
    delimiter: str | None = "\t"  # None: tab or space, whichever the first line uses
    any_whitespace: bool = False  # fields never contain whitespace: re-split rejected lines
    header: tuple[str, ...] | None = None  # a first line equal to these is skipped

    @property
    def max_fields(self) -> int:
        """More fields on a line are rejected by the census, unparsed: far more than any
        padded line of the format has, few enough that DuckDB's rejects table (a row per
        extra field, each holding the line) stays small: at most 4 x columns + 16 rows of
        at most MAX_LINE_BYTES for a line that reaches it."""
        return 4 * len(self.columns) + 16


TREC_RUN = DelimitedFormat(
    "TREC run (query_id Q0 doc_id rank score system)",
    (
        ("query_id", "VARCHAR"),
        ("q0", "VARCHAR"),
        ("doc_id", "VARCHAR"),
        ("rank", "INTEGER"),
        ("score", "DOUBLE"),
        ("system", "VARCHAR"),
    ),
    delimiter=None,
    any_whitespace=True,
)
TREC_QRELS = DelimitedFormat(
    "TREC qrels (query_id iteration doc_id relevance)",
    (
        ("query_id", "VARCHAR"),
        ("iteration", "VARCHAR"),
        ("doc_id", "VARCHAR"),
        ("relevance", "INTEGER"),
    ),
    delimiter=None,
    any_whitespace=True,
)


@dataclass(frozen=True)
class ParseReport:
    """What a parse read: rows written, lines recovered by the whitespace re-split, and the
    malformed lines (count and the first few as `<file>:<line>: <error>`)."""

    file: str
    format: str
    rows: int
    recovered_lines: int = 0
    malformed_lines: int = 0
    examples: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "rows_parsed": self.rows,
            "malformed_lines": self.malformed_lines,
            "recovered_lines": self.recovered_lines,
        }


def detect_delimiter(path: Path) -> str:
    """Tab if the first non-empty line has one, else a space (TREC files use either)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                return "\t" if b"\t" in line else " "
            if handle.tell() > _COPY_CHUNK:
                break
    return "\t"


def _has_header(path: Path, fmt: DelimitedFormat) -> bool:
    if fmt.header is None:
        return False
    with open(path, "rb") as handle:
        first = handle.readline(64 * 1024).decode("utf-8", "replace").split()
    return [f.lower() for f in first] == [h.lower() for h in fmt.header]


def _unpadded(column: str) -> str:
    """column without surrounding whitespace; trimming only the values that hold any keeps
    the common case (no padding) at the cost of two byte scans, not a string copy."""
    return (
        f"CASE WHEN contains({column}, ' ') OR contains({column}, '\t') "
        f"THEN trim({column}, {_WHITESPACE}) ELSE {column} END AS {column}"
    )


def _struct_literal(columns: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{quote_literal(n)}: {quote_literal(t)}" for n, t in columns) + "}"


def read_csv_sql(path: Path, fmt: DelimitedFormat, delimiter: str, skip: int, rejects: str) -> str:
    """The explicit `read_csv(...)` call for fmt; rejected lines go to temp tables
    `<rejects>_errors` / `<rejects>_scans` (an empty field is a value, never NULL)."""
    names = "[" + ", ".join(quote_literal(n) for n, _ in fmt.columns) + "]"
    return (
        f"read_csv({quote_literal(str(path))}, delim={quote_literal(delimiter)}, header=false, "
        f"skip={skip}, auto_detect=false, quote='', escape='', "
        f"columns={_struct_literal(fmt.columns)}, force_not_null={names}, "
        f"store_rejects=true, rejects_table={quote_literal(rejects + '_errors')}, "
        f"rejects_scan={quote_literal(rejects + '_scans')})"
    )


def _resplit_sql(fmt: DelimitedFormat, rejected_lines: str) -> str:
    """Rejected lines re-split on any run of whitespace: those with the right number of
    fields that all cast are rows again (`line` kept to tell them from the rest)."""
    n = len(fmt.columns)
    casts = ", ".join(f"CAST(f[{i}] AS {t}) AS {n_}" for i, (n_, t) in enumerate(fmt.columns, 1))
    typed = " AND ".join(
        f"try_cast(f[{i}] AS {t}) IS NOT NULL" for i, (_, t) in enumerate(fmt.columns, 1)
    )
    split = (
        "SELECT line, list_filter(regexp_split_to_array(csv_line, '\\s+'), lambda x: x <> '') "
        f"AS f FROM {rejected_lines}"
    )
    return f"(SELECT line, {casts} FROM ({split}) WHERE len(f) = {n} AND {typed})"


def append_parquet(
    con: duckdb.DuckDBPyConnection,
    select: str,
    out_dir: Path,
    prefix: str,
    params: Mapping[str, Any] | None = None,
) -> int:
    """copy_parquet into out_dir next to files already there, as `<prefix>-NNNNN.parquet`."""
    tmp = out_dir / f".{prefix}"
    rows = copy_parquet(con, select, tmp, params)
    if rows:
        for number, part in enumerate(sorted(tmp.glob("*.parquet"))):
            os.replace(part, out_dir / f"{prefix}-{number:05d}.parquet")
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


MAX_LINE_BYTES = 8 << 20  # longer lines are rejected by the census (no upstream row nears it)


@contextlib.contextmanager
def _as_parse_error() -> Iterator[None]:
    """The census's own errors (unreadable file, no room for a copy) as ParseError."""
    try:
        yield
    except LinesError as exc:
        raise ParseError(str(exc)) from None


def _census(path: Path, label: str, **options: Any) -> LineCensus:
    with _as_parse_error():
        return take_census(path, label=label, max_bytes=MAX_LINE_BYTES, **options)


@contextlib.contextmanager
def engine_input(
    path: Path, census: LineCensus, scratch: Path, label: str, *, line_ends_matter: bool
) -> Iterator[Path]:
    """What the engine reads: path itself, or a cleaned copy under scratch
    (`lines.cleaned_copy`: rejected lines blanked, LF ends; disk space checked first)
    when the census rejected lines, or found mixed line ends and line_ends_matter (DuckDB's
    CSV reader stops on them; its JSON reader reads a CR as whitespace). Raises ParseError
    naming the file when the copy has no room or cannot be written."""
    if not (census.rejected or (line_ends_matter and census.mixed_line_ends)):
        yield path
        return
    with _as_parse_error(), cleaned_copy(path, census, scratch, label) as copy:
        yield copy


def census_metadata(census: LineCensus) -> dict[str, Any]:
    """What a census adds to a parse report's metadata."""
    return {
        "lines_in_file": census.lines,
        "blank_lines": census.blank_lines,
        "first_blank_lines": census.first_blank,
        "crlf_lines": census.crlf_lines,
        "longest_line_bytes": census.longest,
    }


def _census_report(
    label: str, fmt_name: str, census: LineCensus, extra: dict[str, Any]
) -> ParseReport:
    """A file refused unparsed: too many lines the census rejected to blank them all."""
    return ParseReport(
        file=label,
        format=fmt_name,
        rows=0,
        malformed_lines=census.rejected,
        examples=tuple(census.reasons(label)),
        extra={**census_metadata(census), **extra},
    )


@dataclass(frozen=True)
class _Parsed:
    """What one engine pass over a delimited file returned."""

    rows: int  # rows written (the engine's, then the re-split ones)
    engine_rows: int  # rows the engine's reader returned
    recovered: int  # rejected lines saved by the whitespace re-split
    malformed: int  # lines still rejected
    examples: list[tuple[int, str]]  # the first REPORTED of them (line, message)


def _reconciled(
    label: str,
    fmt_name: str,
    census: LineCensus,
    parsed: _Parsed,
    rows: int,
    expected: int,
    extra: dict[str, Any],
) -> ParseReport:
    """The report of a parse: the census's rejects, the engine's, and the reconciliation
    of the lines with what the engine returned (every line unaccounted for counts)."""
    read = parsed.engine_rows + parsed.recovered + parsed.malformed
    gap = unaccounted(census, expected, read)
    named = sorted(census.examples + parsed.examples)[:REPORTED]
    return ParseReport(
        file=label,
        format=fmt_name,
        rows=rows,
        recovered_lines=parsed.recovered,
        malformed_lines=parsed.malformed + census.rejected + abs(expected - read),
        examples=tuple([f"{label}: {gap}"] if gap else [])
        + tuple(f"{label}:{n}: {why}" for n, why in named),
        extra={**extra, **census_metadata(census)},
    )


def copy_delimited(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: DelimitedFormat,
    select: str,
    out_dir: Path,
    *,
    label: str | None = None,
    params: Mapping[str, Any] | None = None,
    keep: str | None = None,
    scratch: Path | None = None,
) -> ParseReport:
    """Parse path as fmt and stream `select` (SQL reading the parsed rows as `{rows}`, one
    output row per row) into out_dir as Parquet. Returns what was read, including every
    line that did not parse.

    Every line of the file ends up as a row, a blank line (counted), or a malformed line
    (counted, the first few named `<file>:<line>: <reason>`): the census rejects lines too
    long, too wide, or holding NUL bytes or a lone CR, the engine's rejects table holds the
    rest, and the rows read are reconciled with the file's line count (each line
    unaccounted for is a malformed line). Line ends may be LF, CRLF or a mix of both.
    keep: a SQL condition on the parsed rows (e.g. `rank <= $top_k`), applied in the same
    query that parses the file and counting the rows it drops (`_KeepTally`), so one pass
    both filters and reconciles every line; `extra["rows_filtered_out"]` is that count.
    scratch: where cleaned copies go (default out_dir's parent, the output's volume); its
    free space is checked first. Raises ParseError naming the file when it cannot be read,
    the scratch volume has no room for a copy, or the engine fails.
    """
    label = label or path.name
    scratch = scratch or out_dir.parent
    delimiter = fmt.delimiter or detect_delimiter(path)
    skip = 1 if _has_header(path, fmt) else 0
    separators = b"\t " if fmt.any_whitespace else delimiter.encode()
    census = _census(
        path, label, delimiters=separators, runs=fmt.any_whitespace, max_fields=fmt.max_fields
    )
    extra: dict[str, Any] = {
        "delimiter": "tab" if delimiter == "\t" else "space",
        "header_skipped": bool(skip),
    }
    if not census.all_remembered:
        return _census_report(label, fmt.name, census, extra)
    expected = census.lines - census.blank_lines - census.rejected - skip
    with engine_input(path, census, scratch, label, line_ends_matter=True) as readable:
        read = _Delimited(con, readable, fmt, delimiter, skip, label)
        with _KeepTally(con, keep) as tally:
            parsed = read.parse(select, out_dir, params, tally)
    report = _reconciled(label, fmt.name, census, parsed, parsed.rows, expected, extra)
    if keep is None:
        return report
    return replace(report, extra={**report.extra, "rows_filtered_out": tally.dropped})


class _KeepTally:
    """A filter that counts the rows it drops in the query that applies it: the keep
    condition is passed through a vectorised Python function (one call per batch of rows
    the engine hands over, not per row) that adds up the rows failing it (false or NULL)
    and returns the flags unchanged. Without a condition, rows pass untouched."""

    def __init__(self, con: duckdb.DuckDBPyConnection, keep: str | None) -> None:
        self._con, self._keep = con, keep
        self._name = f"kd_keep_tally_{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self.dropped = 0

    def _tally(self, flags: pa.Array) -> pa.Array:
        kept = pc.sum(flags).as_py() or 0
        with self._lock:
            self.dropped += len(flags) - kept
        return flags

    def __enter__(self) -> _KeepTally:
        if self._keep is not None:
            self._con.create_function(
                self._name, self._tally, [BOOLEAN], BOOLEAN, type="arrow", side_effects=True
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._keep is not None:
            self._con.remove_function(self._name)

    def rows(self, source: str) -> str:
        """source's rows that satisfy the condition (each failing one counted)."""
        if self._keep is None:
            return source
        return f"(SELECT * FROM {source} WHERE {self._name}({self._keep}))"


@dataclass(frozen=True)
class _Delimited:
    """One readable delimited file and how the engine reads it."""

    con: duckdb.DuckDBPyConnection
    readable: Path
    fmt: DelimitedFormat
    delimiter: str
    skip: int
    label: str

    def parse(
        self,
        select: str,
        out_dir: Path,
        params: Mapping[str, Any] | None,
        tally: _KeepTally,
    ) -> _Parsed:
        """Stream select over the parsed rows that tally keeps into out_dir; count the
        engine's rejects, re-split them on whitespace where the format allows it."""
        con, fmt = self.con, self.fmt
        rejects = f"kd_rejects_{secrets.token_hex(4)}"
        source = read_csv_sql(self.readable, fmt, self.delimiter, self.skip, rejects)
        if fmt.any_whitespace:  # fields hold no whitespace: padding around a separator is one
            fields = ", ".join(_unpadded(n) if t == "VARCHAR" else n for n, t in fmt.columns)
            source = f"(SELECT {fields} FROM {source})"
        try:
            written = self.run(
                copy_parquet, select.replace("{rows}", tally.rows(source)), out_dir, params
            )
            engine_rows = written + tally.dropped  # every row the reader returned
            lines = (
                f"(SELECT line, any_value(csv_line) AS csv_line FROM {rejects}_errors "
                "GROUP BY line)"
            )
            recovered = appended = 0
            bad = "true"
            if fmt.any_whitespace:
                resplit = _resplit_sql(fmt, lines)
                (recovered,) = con.execute(f"SELECT count(*) FROM {resplit}").fetchall()[0]
                if recovered:
                    appended = append_parquet(
                        con,
                        select.replace("{rows}", tally.rows(resplit)),
                        out_dir,
                        "resplit",
                        params,
                    )
                bad = f"line NOT IN (SELECT line FROM {resplit})"
            (malformed,) = con.execute(
                f"SELECT count(DISTINCT line) FROM {rejects}_errors WHERE {bad}"
            ).fetchall()[0]
            examples = con.execute(
                f"SELECT line, arg_min(error_message, column_idx) FROM {rejects}_errors "
                f"WHERE {bad} GROUP BY line ORDER BY line LIMIT {REPORTED}"
            ).fetchall()
        finally:
            con.execute(f"DROP TABLE IF EXISTS {rejects}_errors")
            con.execute(f"DROP TABLE IF EXISTS {rejects}_scans")
        return _Parsed(
            int(written) + int(appended),
            int(engine_rows),
            int(recovered),
            int(malformed),
            [(int(line), str(message).strip()) for line, message in examples],
        )

    def run(
        self,
        run: Callable[..., Any],
        sql: str,
        out_dir: Path | None,
        params: Mapping[str, Any] | None,
    ) -> Any:
        return _run_engine(self.con, run, sql, out_dir, params, self.label, self.readable)


def _fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, _out: None, params: Mapping[str, Any] | None
) -> tuple[Any, ...]:
    return con.execute(sql, params or {}).fetchall()[0]


class EngineError(ParseError):
    """The engine refused a file; `reason` is its message as one line, naming the file by
    its label and without the engine's own line numbers (they count a CRLF as two lines)."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: cannot be parsed: {reason}")
        self.reason = reason


_ENGINE_LINE_NUMBER = re.compile(r",? at byte \d+|,? in line \d+|,? on line:? \d+", re.IGNORECASE)


def _run_engine(
    con: duckdb.DuckDBPyConnection,
    run: Callable[..., Any],
    sql: str,
    out_dir: Path | None,
    params: Mapping[str, Any] | None,
    label: str,
    readable: Path,
) -> Any:
    """run(con, sql, out_dir, params), with any engine error (a file the census could not
    judge, an unexpected compression, a full disk) turned into an EngineError naming the
    file (never a raw engine exception)."""
    try:
        return run(con, sql, out_dir, params)
    except duckdb.Error as exc:
        raise EngineError(label, engine_reason(exc, {str(readable): label})) from None


def engine_reason(exc: duckdb.Error, names: Mapping[str, str]) -> str:
    """An engine error as one line for a user: its first line, each path the engine read
    replaced by the name the user knows (names: path read -> name), without the engine's
    own line numbers (they count a CRLF as two lines). Used by every reader here and by
    validate-splade."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    for read, name in names.items():
        message = message.replace(read, name)
    return _ENGINE_LINE_NUMBER.sub("", message).strip()


# ---- JSON lines ------------------------------------------------------------------------------
def first_invalid_json_line(path: Path) -> int | None:
    """The number of the first non-blank line that is not a JSON object (None if none).
    Used once the engine has refused the file: its own line numbers are off by one."""
    with open_text_bytes(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


JSON_BLANK = b" \t"  # a line of only these is blank: DuckDB's JSON reader skips it


def copy_json_lines(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    columns: Sequence[tuple[str, str]],
    select: str,
    out_dir: Path,
    *,
    label: str | None = None,
    scratch: Path | None = None,
) -> ParseReport:
    """Stream a JSON-lines file (explicit columns; extra keys ignored) through `select`
    (reading `{rows}`) into out_dir. Line ends may be LF, CRLF or mixed (read directly: a
    CR is JSON whitespace); a whitespace-only line is blank; a line longer than
    MAX_LINE_BYTES or holding a NUL byte or a lone CR is rejected by the census (the
    engine reads a copy under scratch with it blanked); the first malformed line stops
    the read and is the report's malformed line, named `<file>:<line>: <reason>`; rows
    read are reconciled with the file's non-blank lines."""
    label = label or path.name
    scratch = scratch or out_dir.parent
    census = _census(path, label, delimiters=b"", max_fields=1 << 62, blank=JSON_BLANK)
    if not census.all_remembered:
        return _census_report(label, "JSON lines", census, {})
    failure: list[str] = []
    with engine_input(path, census, scratch, label, line_ends_matter=False) as readable:
        source = (
            f"read_json({quote_literal(str(readable))}, format='newline_delimited', "
            f"columns={_struct_literal(columns)}, maximum_object_size={MAX_LINE_BYTES + 2})"
        )
        try:
            rows = _run_engine(
                con, copy_parquet, select.replace("{rows}", source), out_dir, None, label, readable
            )
        except EngineError as exc:
            line = first_invalid_json_line(readable)
            if line is None:
                raise
            rows, failure = 0, [f"{label}:{line}: {exc.reason}"]
    expected = census.lines - census.blank_lines - census.rejected
    gap = None if failure else unaccounted(census, expected, int(rows))
    missing = abs(expected - int(rows)) if gap else 0
    return ParseReport(
        file=label,
        format="JSON lines",
        rows=int(rows),
        malformed_lines=census.rejected + len(failure) + missing,
        examples=tuple(([f"{label}: {gap}"] if gap else []) + failure + census.reasons(label))[
            :REPORTED
        ],
        extra=census_metadata(census),
    )
