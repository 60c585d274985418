"""A census of a text file's lines, taken before any engine parses it.

DuckDB's readers have blind spots, found by injecting faults (issue 13 items 1-2, issue 12
item 2, and their review): a line longer than the CSV reader's buffer (a 100 MB line, a
40 MiB block of NUL bytes) vanishes without a reject entry; a line of many fields costs
time and memory that grow with fields x length (a reject row per extra field, each holding
the line); a file mixing LF and CRLF, or holding a carriage return that does not end a
line, stops the CSV reader with an internal error; a smaller crash-zeroed block (NUL bytes)
is read as text, and merges two rows when it spans a line break. So every delimited or
JSON-lines input is first scanned once here, in fixed-size chunks with vectorised byte
operations (numpy; O(file size), memory a few times the chunk size, no Python loop per
line):

- every line is counted (a last line without a newline too), so the rows an engine reads
  can be reconciled with the lines the file has (`unaccounted`);
- a line is rejected, with its number and reason, when it is longer than `max_bytes`, holds
  a NUL byte, holds a carriage return that is not the CR of its CRLF end (a CR inside a
  passage, `\\r\\r\\n`, a last line ending in CR), or has more than `max_fields` fields;
- blank lines, lines ending in CRLF, the bytes read and the longest line are recorded.

Marks inside lines (NULs, lone CRs, delimiters) are counted per line the same way: their
positions (`flatnonzero`) are placed among the line ends (`searchsorted`) and counted per
line (`bincount`).

When something must be kept from an engine (a rejected line, or a mix of line ends for the
CSV reader), `cleaned_copy` writes a copy in which each rejected line is blank (so line
numbers stay those of the original) and every CRLF is LF, in a scratch folder the caller
chooses, after checking that the folder's volume has room for it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

CHUNK_BYTES = 16 << 20
REPORTED = 5  # rejected (or blank) lines named in a report
REMEMBERED = 100_000  # rejected line numbers kept for the clean copy; more refuse the file
SPARE_BYTES = 64 << 20  # left free on a volume after a cleaned copy is written
_LF, _CR, _NUL = 10, 13, 0
NUL_BYTES = "NUL bytes"
CARRIAGE_RETURN = "carriage return inside a line"


class LinesError(Exception):
    """A file the census cannot read whole, or a cleaned copy that cannot be written; the
    message is one line naming the file (and, for a copy, the bytes needed)."""


@dataclass
class LineCensus:
    """What one scan of a file found. Line numbers count from 1, as editors do."""

    lines: int = 0  # every line, the last one even without a newline
    blank_lines: int = 0  # empty, only the CR of a CRLF, or only the caller's blank bytes
    crlf_lines: int = 0  # lines ending in CRLF
    rejected: int = 0  # lines too long, too wide, holding a NUL or a lone CR
    examples: list[tuple[int, str]] = field(default_factory=list)  # first REPORTED (line, why)
    rejected_numbers: list[int] = field(default_factory=list)  # first REMEMBERED of them
    first_blank: list[int] = field(default_factory=list)  # first REPORTED blank lines
    unterminated: bool = False  # the last line has no newline
    bytes: int = 0  # bytes scanned (decompressed)
    longest: int = 0  # the longest line's content, in bytes (without CR/LF)

    @property
    def mixed_line_ends(self) -> bool:
        """Some lines end in CRLF and others in LF (a last line without an end aside)."""
        return 0 < self.crlf_lines < self.lines - int(self.unterminated)

    @property
    def all_remembered(self) -> bool:
        """Every rejected line's number is known, so a cleaned copy can blank them all."""
        return self.rejected <= len(self.rejected_numbers)

    def reasons(self, label: str) -> list[str]:
        """The first rejected lines as `<label>:<line>: <reason>`."""
        return [f"{label}:{number}: {why}" for number, why in self.examples]


def unaccounted(census: LineCensus, expected: int, read: int) -> str | None:
    """The reconciliation of a file's lines with the rows an engine read from it: None when
    they agree, else one sentence. expected: the lines that should come back as rows or
    engine rejects (the census's lines less blank, rejected and header lines, as the
    reader counts them)."""
    if read == expected:
        return None
    return (
        f"{census.lines} lines, of which {expected} should be rows or rejects, but the "
        f"reader returned {read}: {abs(expected - read)} line(s) unaccounted for"
    )


def open_text_bytes(path: Path) -> BinaryIO:
    """path's bytes, decompressed by the standard library's reader chosen by magic bytes
    (gzip, bzip2, xz), else as they are. The gzip reader reads every member (parallel gzip
    tools write several) and checks each member's CRC-32 and length trailer, bz2 and xz
    their own checks, when read to the end."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh") and magic[3:4].isdigit():
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The file in chunks, none ending in a CR unless the file does (so a CRLF never spans
    two chunks, and a CR at a chunk's end is the file's last byte)."""
    while chunk := handle.read(CHUNK_BYTES):
        while chunk.endswith(b"\r"):
            more = handle.read(1)
            if not more:
                break
            chunk += more
        yield chunk


def _read_chunks(path: Path, label: str) -> Iterator[bytes]:
    """_chunks of path's text; a read or decompression fault is a LinesError naming it."""
    try:
        with open_text_bytes(path) as handle:
            yield from _chunks(handle)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise LinesError(f"{label}: cannot be read ({type(exc).__name__}: {exc})") from None


@dataclass
class _Carry:
    """What is known of the line a chunk ends in the middle of."""

    length: int = 0
    separators: int = 0
    nuls: int = 0
    lone_crs: int = 0
    blank_bytes: int = 0
    last_is_delimiter: bool = False  # for runs of delimiters across a chunk boundary


def _per_line(mask: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many marked bytes each line of a chunk holds: len(ends) finished lines, then
    the open line after the last LF (positions -> searchsorted into the line ends ->
    bincount)."""
    return np.bincount(np.searchsorted(ends, np.flatnonzero(mask)), minlength=len(ends) + 1)


def _counts(
    a: np.ndarray,
    ends: np.ndarray,
    marks: Callable[[np.ndarray, bool], np.ndarray],
    candidates: np.ndarray,
    previous: bool = False,
) -> np.ndarray:
    """_per_line of marks(bytes, previous byte marked) over a chunk, where only candidate
    lines need an exact count: when none of the lines the chunk holds whole is one, they
    count 0, and only the line it continues and the line it leaves open are counted (two
    short slices, not a pass over the chunk)."""
    n = len(ends)
    if n == 0 or candidates[1:].any():
        return _per_line(marks(a, previous), ends)
    counts = np.zeros(n + 1, np.int64)
    counts[0] = np.count_nonzero(marks(a[: ends[0]], previous))
    counts[n] = np.count_nonzero(marks(a[ends[-1] + 1 :], False))
    return counts


def _is_any(a: np.ndarray, values: bytes) -> np.ndarray:
    mask = a == values[0]
    for value in values[1:]:
        mask |= a == value
    return mask


@dataclass
class _Settings:
    delimiters: bytes
    runs: bool
    blank: bytes
    max_bytes: int
    max_fields: int

    def separators(self, part: np.ndarray, previous: bool) -> np.ndarray:
        """The bytes of part that start a separator: each delimiter, or with runs the
        first of each run (previous: the byte before part is a delimiter)."""
        marks = _is_any(part, self.delimiters)
        if self.runs and len(marks):
            marks &= ~np.concatenate(([previous], marks[:-1]))
        return marks

    def blank_marks(self, part: np.ndarray, _previous: bool) -> np.ndarray:
        return _is_any(part, self.blank)


def _scan(
    path: Path,
    settings: _Settings,
    label: str | None = None,
    visit: Callable[[np.ndarray, np.ndarray, np.ndarray, int], None] | None = None,
) -> LineCensus:
    """One pass over path in chunks; visit(chunk, line ends, crlf per line, lines before)."""
    census = LineCensus()
    carry = _Carry()
    base = 0  # lines finished before this chunk
    for chunk in _read_chunks(path, label or path.name):
        a = np.frombuffer(chunk, np.uint8)
        carry = _chunk(census, settings, a, base, carry, visit)
        base = census.lines
    if carry.length:  # a last line without a newline
        census.unterminated = True
        _tally(
            census,
            base,
            settings,
            content=np.array([carry.length]),
            separators=np.array([carry.separators]),
            nuls=np.array([carry.nuls]),
            lone_crs=np.array([carry.lone_crs]),
            blank_bytes=np.array([carry.blank_bytes]),
            crlf=np.zeros(1, bool),
        )
    return census


def _chunk(
    census: LineCensus,
    settings: _Settings,
    a: np.ndarray,
    base: int,
    carry: _Carry,
    visit: Callable[[np.ndarray, np.ndarray, np.ndarray, int], None] | None,
) -> _Carry:
    """Tally the lines a chunk finishes; return what it leaves of the next line."""
    census.bytes += len(a)
    ends = np.flatnonzero(a == _LF)
    n = len(ends)
    starts = np.concatenate(([0], ends + 1))
    length = np.append(ends, len(a)) - starts  # n finished lines, then the open one
    crlf = np.zeros(n, bool)  # a chunk never starts with the LF of a CRLF (see _chunks)
    inside = ends > 0
    crlf[inside] = a[ends[inside] - 1] == _CR
    crs = a == _CR
    if n:
        crs[ends[crlf] - 1] = False  # the CRs that end lines; any other CR is inside one
    nuls = _per_line(a == _NUL, ends)
    lone_crs = _per_line(crs, ends)
    separators = np.zeros(n + 1, np.int64)
    last = bool(len(a)) and int(a[-1]) in settings.delimiters
    if settings.delimiters:
        # a line with more fields than max_fields is at least this long (with runs, each
        # separator but a leading one follows a field byte), so shorter lines need no count
        shortest = 2 * settings.max_fields - 1 if settings.runs else settings.max_fields
        separators = _counts(
            a, ends, settings.separators, length[:n] >= shortest, carry.last_is_delimiter
        )
    blank_bytes = np.zeros(n + 1, np.int64)
    if settings.blank:  # only a line starting with a blank byte can be all blank
        starts_blank = np.concatenate(([False], _is_any(a[ends[:-1] + 1], settings.blank)))
        blank_bytes = _counts(a, ends, settings.blank_marks, starts_blank)
    length[0] += carry.length
    separators[0] += carry.separators
    nuls[0] += carry.nuls
    lone_crs[0] += carry.lone_crs
    blank_bytes[0] += carry.blank_bytes
    if n:
        _tally(
            census,
            base,
            settings,
            content=length[:n] - crlf,
            separators=separators[:n],
            nuls=nuls[:n],
            lone_crs=lone_crs[:n],
            blank_bytes=blank_bytes[:n],
            crlf=crlf,
        )
    if visit is not None:
        visit(a, ends, crlf, base)
    return _Carry(
        int(length[n]),
        int(separators[n]),
        int(nuls[n]),
        int(lone_crs[n]),
        int(blank_bytes[n]),
        last,
    )


def _tally(
    census: LineCensus,
    base: int,
    settings: _Settings,
    *,
    content: np.ndarray,
    separators: np.ndarray,
    nuls: np.ndarray,
    lone_crs: np.ndarray,
    blank_bytes: np.ndarray,
    crlf: np.ndarray,
) -> None:
    """Count a run of finished lines (numbered from base + 1) and judge each."""
    census.lines += len(content)
    census.crlf_lines += int(crlf.sum())
    census.longest = max(census.longest, int(content.max()))
    fields = separators + 1
    too_long = content > settings.max_bytes
    bad = too_long | (nuls > 0) | (lone_crs > 0) | (fields > settings.max_fields)
    blank = ~bad & ((content == 0) | (blank_bytes == content))
    where_blank = np.flatnonzero(blank)
    census.blank_lines += len(where_blank)
    room = REPORTED - len(census.first_blank)
    census.first_blank += [base + int(i) + 1 for i in where_blank[: max(room, 0)]]
    where_bad = np.flatnonzero(bad)
    if not len(where_bad):
        return
    census.rejected += len(where_bad)
    room = REMEMBERED - len(census.rejected_numbers)
    census.rejected_numbers += [base + int(i) + 1 for i in where_bad[: max(room, 0)]]
    for i in where_bad[: max(REPORTED - len(census.examples), 0)]:
        if too_long[i]:
            limit = settings.max_bytes
            why = f"line of {int(content[i]):,} bytes, longer than the limit of {limit:,}"
        elif nuls[i]:
            why = NUL_BYTES
        elif lone_crs[i]:
            why = CARRIAGE_RETURN
        else:
            why = f"{int(fields[i]):,} fields, more than the limit of {settings.max_fields:,}"
        census.examples.append((base + int(i) + 1, why))


def take_census(
    path: Path,
    *,
    delimiters: bytes,
    max_bytes: int,
    max_fields: int,
    runs: bool = False,
    blank: bytes = b"",
    label: str | None = None,
) -> LineCensus:
    """Scan path once (decompressed when gzip, bzip2 or xz) and count and judge its lines.

    delimiters: the bytes that separate fields (b"\\t", or b"\\t " for whitespace formats;
    b"" to leave fields uncounted); runs: a run of delimiters is one separator;
    blank: bytes a line may consist of and still be blank (b" \\t" for JSON lines, whose
    reader skips whitespace-only lines). A line is rejected when its content (without its
    LF or CRLF end) is longer than max_bytes, holds a NUL byte or a CR, or has more than
    max_fields fields. Raises LinesError naming the file (label, else its name) when it is
    unreadable or corrupt.
    """
    return _scan(path, _Settings(delimiters, runs, blank, max_bytes, max_fields), label)


def write_clean_copy(path: Path, census: LineCensus, target: Path) -> None:
    """Copy path (decompressed) to target with each rejected line blanked (its LF kept, so
    line numbers are unchanged) and every CRLF turned into LF. Memory: a boolean mask per
    chunk. Needs every rejected line's number (`census.all_remembered`); raises ValueError
    otherwise, OSError when target cannot be written."""
    if not census.all_remembered:
        raise ValueError(f"{path.name}: more than {REMEMBERED} rejected lines; not copied")
    dropped = np.array(census.rejected_numbers, np.int64)  # increasing

    with open(target, "wb") as out:

        def visit(a: np.ndarray, ends: np.ndarray, crlf: np.ndarray, base: int) -> None:
            keep = np.ones(len(a), bool)
            keep[ends[crlf] - 1] = False  # the CR of each CRLF
            first = np.searchsorted(dropped, base + 1)
            last = np.searchsorted(dropped, base + len(ends) + 1, "right")
            for number in dropped[first:last]:  # the rejected lines this chunk holds
                i = int(number) - base - 1
                start = 0 if i == 0 else int(ends[i - 1]) + 1
                stop = int(ends[i]) if i < len(ends) else len(a)
                keep[start:stop] = False
            out.write(a[keep].tobytes())

        _scan(path, _Settings(b"", False, b"", 1 << 62, 1 << 62), visit=visit)


def ensure_room(folder: Path, needed: int, what: str) -> None:
    """Raise LinesError (one line: what, the bytes needed and free) unless folder's volume
    has needed bytes free plus SPARE_BYTES."""
    free = shutil.disk_usage(folder).free
    if free < needed + SPARE_BYTES:
        raise LinesError(
            f"{what} needs {needed:,} bytes in {folder} (plus {SPARE_BYTES:,} spare), "
            f"but only {free:,} are free"
        )


@contextlib.contextmanager
def cleaned_copy(path: Path, census: LineCensus, scratch: Path, label: str) -> Iterator[Path]:
    """A cleaned copy of path (`write_clean_copy`, decompressed, named without `.gz`) in a
    fresh folder under scratch, removed on exit. The copy costs up to the file's
    decompressed size (`census.bytes`) on scratch's volume, checked before writing.
    Raises LinesError naming the file when there is no room or the copy cannot be written."""
    needed = census.bytes - census.crlf_lines
    ensure_room(scratch, needed, f"{label}: a cleaned copy (LF ends, rejected lines blanked)")
    folder = Path(tempfile.mkdtemp(prefix=".clean-", dir=scratch))
    try:
        target = folder / path.name.removesuffix(".gz")
        try:
            write_clean_copy(path, census, target)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LinesError(f"{label}: a cleaned copy could not be written ({reason})") from None
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)
