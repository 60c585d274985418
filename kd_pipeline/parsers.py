"""Readers for the upstream file formats of the text, pairwise and listwise families.

- **Archives** (`.tar.gz`, `.zip`) are unpacked streaming, one wanted member at a time, into
  a scratch folder; a member that could escape (absolute path, `..`, a link, a device) makes
  the whole archive refused, and a truncated or corrupt archive is a clear error.
- **Delimited text** (TSV, TREC runs and qrels) is parsed by DuckDB's CSV reader with the
  columns and types given explicitly (never sniffed, no quoting: upstream texts contain
  `"`), streamed through a SELECT into Parquet. A line the reader rejects is never dropped
  silently: formats whose fields are separated by "any whitespace" get a second chance
  (the line re-split on runs of whitespace), and every line that still does not parse is
  counted and reported as `<file>:<line>: <error>` in the `ParseReport`; the families turn
  that report into a blocking check, so a malformed file is never published.
- **JSON lines** (BEIR) are read by DuckDB with explicit columns; a malformed line fails
  the read with DuckDB's message (file and line), re-labelled with the archive member.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb

from kd_pipeline.engine import copy_parquet
from kd_pipeline.lake import quote_literal

REPORTED_LINES = 5
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


def _unpack_tar(archive: Path, wanted: Sequence[str], dest: Path) -> dict[str, Path]:
    """Stream the tar (any compression) once, copying the wanted members as they pass; stop
    as soon as all are out, so a member at the front of a large archive is quick. (A stream
    cannot look ahead: the first member matching a wanted name wins.)"""
    out: dict[str, Path] = {}
    seen: list[str] = []
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            name = safe_member_name(member.name, archive.name)
            if not (member.isfile() or member.isdir()):
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise ArchiveError(f"{archive.name}: member {member.name!r} is a {kind}; refusing")
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
    missing = [w for w in wanted if w not in out]
    if missing:
        _match_members(seen, missing, archive.name)  # raises, naming what the archive holds
    return out


def _unpack_zip(archive: Path, wanted: Sequence[str], dest: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = safe_member_name(info.filename, archive.name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                raise ArchiveError(
                    f"{archive.name}: member {info.filename!r} is a link or special file; refusing"
                )
            if not info.is_dir():
                names[name] = info
        for member, want in _match_members(list(names), wanted, archive.name).items():
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
        ) as exc:
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


def copy_delimited(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: DelimitedFormat,
    select: str,
    out_dir: Path,
    *,
    label: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> ParseReport:
    """Parse path as fmt and stream `select` (SQL reading the parsed rows as `{rows}`) into
    out_dir as Parquet. Returns what was read, including every line that did not parse."""
    label = label or path.name
    delimiter = fmt.delimiter or detect_delimiter(path)
    skip = 1 if _has_header(path, fmt) else 0
    rejects = f"kd_rejects_{secrets.token_hex(4)}"
    source = read_csv_sql(path, fmt, delimiter, skip, rejects)
    if fmt.any_whitespace:  # fields hold no whitespace: padding around a separator is one
        fields = ", ".join(_unpadded(n) if t == "VARCHAR" else n for n, t in fmt.columns)
        source = f"(SELECT {fields} FROM {source})"
    try:
        rows = copy_parquet(con, select.replace("{rows}", source), out_dir, params)
        lines = (
            f"(SELECT line, any_value(csv_line) AS csv_line FROM {rejects}_errors GROUP BY line)"
        )
        recovered_lines = 0
        if fmt.any_whitespace:
            resplit = _resplit_sql(fmt, lines)
            (recovered_lines,) = con.execute(f"SELECT count(*) FROM {resplit}").fetchall()[0]
            if recovered_lines:
                rows += append_parquet(
                    con, select.replace("{rows}", resplit), out_dir, "resplit", params
                )
            bad = f"line NOT IN (SELECT line FROM {resplit})"
        else:
            bad = "true"
        (malformed,) = con.execute(
            f"SELECT count(DISTINCT line) FROM {rejects}_errors WHERE {bad}"
        ).fetchall()[0]
        examples = con.execute(
            f"SELECT line, arg_min(error_message, column_idx) FROM {rejects}_errors "
            f"WHERE {bad} GROUP BY line ORDER BY line LIMIT {REPORTED_LINES}"
        ).fetchall()
    finally:
        con.execute(f"DROP TABLE IF EXISTS {rejects}_errors")
        con.execute(f"DROP TABLE IF EXISTS {rejects}_scans")
    return ParseReport(
        file=label,
        format=fmt.name,
        rows=int(rows),
        recovered_lines=int(recovered_lines),
        malformed_lines=int(malformed),
        examples=tuple(f"{label}:{line}: {message.strip()}" for line, message in examples),
        extra={"delimiter": "tab" if delimiter == "\t" else "space", "header_skipped": bool(skip)},
    )


# ---- JSON lines ------------------------------------------------------------------------------
def copy_json_lines(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    columns: Sequence[tuple[str, str]],
    select: str,
    out_dir: Path,
    *,
    label: str | None = None,
) -> ParseReport:
    """Stream a JSON-lines file (explicit columns; extra keys ignored) through `select`
    (reading `{rows}`) into out_dir. A malformed line fails the read, naming file and line."""
    label = label or path.name
    source = (
        f"read_json({quote_literal(str(path))}, format='newline_delimited', "
        f"columns={_struct_literal(columns)})"
    )
    try:
        rows = copy_parquet(con, select.replace("{rows}", source), out_dir)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        message = str(exc).replace(str(path), label)
        raise ParseError(f"{label}: not valid JSON lines: {message}") from None
    return ParseReport(file=label, format="JSON lines", rows=int(rows))
