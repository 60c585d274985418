"""A census of a text file's lines, taken before any engine parses it.

DuckDB's CSV reader is fast but has three blind spots, found by injecting faults
(issue 13 items 1-2, issue 12 item 2): a line longer than its read buffer (a 100 MB line,
a 40 MiB block of NUL bytes) vanishes without a reject entry; a line of millions of fields
costs time and memory quadratic in its field count (a reject row per extra field); a
file mixing LF and CRLF line ends stops the reader with an internal error. So every
delimited or JSON-lines input is first scanned once here, in fixed-size chunks with
vectorised byte operations (numpy; O(file size), memory bounded by the chunk size):

- every line is counted (a last line without a newline too), so the rows an engine reads
  can be reconciled with the lines the file has;
- a line longer than `max_bytes` or with more than `max_fields` fields is rejected here,
  with its line number and reason, and never reaches the engine;
- blank lines and lines ending in CRLF are counted.

When something must be kept from the engine (a rejected line, or a mix of line ends),
`write_clean_copy` writes a copy in which each rejected line is blank (so line numbers stay
those of the original) and every CRLF is LF; the engine reads the copy.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

CHUNK_BYTES = 16 << 20
REPORTED = 5  # rejected lines named in a report
REMEMBERED = 100_000  # rejected line numbers kept for the clean copy; more refuse the file
_LF, _CR = 10, 13


@dataclass
class LineCensus:
    """What one scan of a file found. Line numbers count from 1, as editors do."""

    lines: int = 0  # every line, the last one even without a newline
    blank_lines: int = 0  # empty, or only a CR
    crlf_lines: int = 0  # lines ending in CRLF
    rejected: int = 0  # lines over max_bytes or max_fields
    examples: list[tuple[int, str]] = field(default_factory=list)  # first REPORTED (line, why)
    rejected_numbers: list[int] = field(default_factory=list)  # first REMEMBERED of them
    first_blank: list[int] = field(default_factory=list)  # first REPORTED blank lines
    unterminated: bool = False  # the last line has no newline

    @property
    def mixed_line_ends(self) -> bool:
        """Some lines end in CRLF and others in LF (a last line without an end aside)."""
        return 0 < self.crlf_lines < self.lines - int(self.unterminated)

    def needs_clean_copy(self) -> bool:
        """Whether an engine must read a cleaned copy instead of the file itself."""
        return self.rejected > 0 or self.mixed_line_ends


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The file in chunks, each ending after a LF where possible and never between a CR and
    the LF after it (so a CRLF never spans two chunks)."""
    while chunk := handle.read(CHUNK_BYTES):
        if chunk.endswith(b"\r"):
            chunk += handle.read(1)
        yield chunk


def open_text_bytes(path: Path) -> BinaryIO:
    """path's bytes, gunzipped (every member, CRC and length checked) when it ends in .gz."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


@dataclass
class _Carry:
    """The line a chunk ends in the middle of."""

    length: int = 0
    fields: int = 0  # separators seen in it so far
    cr_before: bool = False  # the previous chunk ended in a CR


def _separators(chunk: bytes, start: int, stop: int, delimiters: bytes, runs: bool) -> int:
    """How many separators chunk[start:stop] holds: delimiter bytes, or runs of them."""
    if not delimiters or stop <= start:
        return 0
    if not runs:
        return sum(chunk.count(delimiters[i : i + 1], start, stop) for i in range(len(delimiters)))
    a = np.frombuffer(chunk, np.uint8, count=stop - start, offset=start)
    is_delim = np.isin(a, np.frombuffer(delimiters, np.uint8))
    return int(is_delim[0]) + int(np.count_nonzero(is_delim[1:] & ~is_delim[:-1]))


def _scan(
    path: Path,
    delimiters: bytes,
    runs: bool,
    max_bytes: int,
    max_fields: int,
    visit: Callable[[bytes, np.ndarray, np.ndarray, int, _Carry], None] | None = None,
) -> LineCensus:
    """One pass over path in chunks. Fields are counted only in lines at least max_fields
    bytes long (a line with more fields cannot be shorter), so ordinary lines cost a few
    vectorised operations per chunk, not a count each."""
    census = LineCensus()
    carry = _Carry()
    base = 0  # lines finished before this chunk
    with open_text_bytes(path) as handle:
        for chunk in _chunks(handle):
            a = np.frombuffer(chunk, np.uint8)
            ends = np.flatnonzero(a == _LF)
            if len(ends):
                begins = np.empty(len(ends), np.int64)
                begins[0] = 0
                begins[1:] = ends[:-1] + 1
                lengths = ends - begins
                lengths[0] += carry.length
                crs = np.zeros(len(ends), bool)
                inside = ends > 0
                crs[inside] = a[ends[inside] - 1] == _CR
                if ends[0] == 0:
                    crs[0] = carry.cr_before
                content = lengths - crs
                fields = np.ones(len(ends), np.int64)
                fields[0] += carry.fields
                for i in np.flatnonzero(content >= max_fields) if delimiters else ():
                    fields[i] += _separators(chunk, begins[i], ends[i], delimiters, runs)
                _tally(census, base, content, fields, crs, max_bytes, max_fields)
                if visit is not None:
                    visit(chunk, ends, crs, base, carry)
                base += len(ends)
                tail = int(ends[-1]) + 1
                carry = _Carry(len(a) - tail, _separators(chunk, tail, len(a), delimiters, runs))
            else:
                if visit is not None:
                    visit(chunk, ends, np.zeros(0, bool), base, carry)
                more = _separators(chunk, 0, len(a), delimiters, runs)
                carry = _Carry(carry.length + len(a), carry.fields + more)
            if len(a):
                carry.cr_before = bool(a[-1] == _CR)
    if carry.length:  # a last line without a newline
        census.unterminated = True
        last = np.array([carry.length - int(carry.cr_before)])
        _tally(
            census,
            base,
            last,
            np.array([carry.fields + 1]),
            np.zeros(1, bool),
            max_bytes,
            max_fields,
        )
    return census


def _tally(
    census: LineCensus,
    base: int,
    content: np.ndarray,
    fields: np.ndarray,
    crs: np.ndarray,
    max_bytes: int,
    max_fields: int,
) -> None:
    census.lines += len(content)
    census.crlf_lines += int(crs.sum())
    blank = np.flatnonzero(content == 0)
    census.blank_lines += len(blank)
    room = REPORTED - len(census.first_blank)
    census.first_blank += [base + int(i) + 1 for i in blank[:room]]
    bad = np.flatnonzero((content > max_bytes) | (fields > max_fields))
    if not len(bad):
        return
    census.rejected += len(bad)
    room = REMEMBERED - len(census.rejected_numbers)
    census.rejected_numbers += [base + int(i) + 1 for i in bad[: max(room, 0)]]
    for i in bad[: max(REPORTED - len(census.examples), 0)]:
        if content[i] > max_bytes:
            why = f"line of {int(content[i]):,} bytes, longer than the limit of {max_bytes:,}"
        else:
            why = f"{int(fields[i]):,} fields, more than the limit of {max_fields:,}"
        census.examples.append((base + int(i) + 1, why))


def take_census(
    path: Path,
    *,
    delimiters: bytes,
    max_bytes: int,
    max_fields: int,
    runs: bool = False,
) -> LineCensus:
    """Scan path once (gunzipped when it ends in .gz) and count its lines.

    delimiters: the bytes that separate fields (b"\\t", or b"\\t " for whitespace formats;
    b"" to check lengths only);
    runs: count a run of delimiters as one separator. A line is rejected when its content
    (without CR/LF) is longer than max_bytes or it has more than max_fields fields.
    Raises OSError / gzip.BadGzipFile / EOFError for an unreadable or corrupt file.
    """
    return _scan(path, delimiters, runs, max_bytes, max_fields)


def write_clean_copy(path: Path, census: LineCensus, target: Path) -> None:
    """Copy path to target with each rejected line blanked (its LF kept, so line numbers
    are unchanged) and every CRLF turned into LF. Needs every rejected line's number:
    callers refuse a file with more than REMEMBERED rejected lines instead."""
    if census.rejected > len(census.rejected_numbers):
        raise ValueError(f"{path}: more than {REMEMBERED} rejected lines; not copied")
    dropped = np.array(sorted(census.rejected_numbers), np.int64)
    with open(target, "wb") as out:

        def visit(
            chunk: bytes, ends: np.ndarray, crs: np.ndarray, base: int, carry: _Carry
        ) -> None:
            a = np.frombuffer(chunk, np.uint8)
            keep = np.ones(len(a), bool)
            if len(ends):
                keep[ends[crs & (ends > 0)] - 1] = False  # the CR of a CRLF
                begins = np.concatenate(([0], ends[:-1] + 1))
                numbers = base + 1 + np.arange(len(ends))
                gone = np.isin(numbers, dropped)
                delta = np.zeros(len(a) + 1, np.int64)
                np.add.at(delta, begins[gone], 1)
                np.add.at(delta, ends[gone], -1)
                tail_number = base + len(ends) + 1
                if tail_number in dropped:  # the line this chunk ends in the middle of
                    delta[ends[-1] + 1] += 1
                    delta[len(a)] -= 1
                keep &= np.cumsum(delta)[:-1] == 0
            elif base + 1 in dropped:
                keep[:] = False
            out.write(a[keep].tobytes())

        _scan(path, b"", False, 1 << 62, 1 << 62, visit)
