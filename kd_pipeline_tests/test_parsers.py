"""The delimited and JSON-lines readers on generated faults: mixed line ends, over-long lines,
NUL blocks, wide lines, blank lines; every line a row or a reported `file:line` reject."""

from __future__ import annotations

import gzip
import re
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_pipeline import lines, parsers
from kd_pipeline.families import text
from kd_pipeline.families.hofstaetter import TEACHER_TSV, write_pairwise
from kd_pipeline.families.rank_distillm import write_run

ROW = b"1.5\t0.5\tq1\tp1\tn1"


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    (tmp_path / "out").mkdir(exist_ok=True)
    return path


def _out(tmp_path: Path, name: str) -> Path:
    out = tmp_path / "out" / name
    out.mkdir(parents=True)
    return out


def _rows(con: duckdb.DuckDBPyConnection, out: Path) -> list[tuple]:
    return con.execute(f"SELECT * FROM read_parquet('{out}/*.parquet') ORDER BY ALL").fetchall()


# ---- issue 12 item 2: LF, CRLF and a mix, in every delimited reader --------------------------
LINE_ENDS = {
    "crlf_but_last": lambda rows: b"\r\n".join(rows),
    "crlf_then_lf": lambda rows: b"\r\n".join(rows[:2]) + b"\r\n" + b"\n".join(rows[2:]) + b"\n",
    "lf_then_crlf": lambda rows: b"\n".join(rows[:2]) + b"\n" + b"\r\n".join(rows[2:]) + b"\r\n",
    "all_crlf": lambda rows: b"".join(r + b"\r\n" for r in rows),
    "alternating": lambda rows: b"".join(
        r + (b"\r\n" if i % 2 else b"\n") for i, r in enumerate(rows)
    ),
}


@pytest.mark.parametrize("ends", list(LINE_ENDS))
def test_teacher_tsv_reads_any_mix_of_line_ends(tmp_path: Path, con, ends: str) -> None:
    rows = [b"%d.5\t0.5\tq%d\tp%d\tn%d" % (i, i, i, i) for i in range(5)]
    path = _write(tmp_path, "scores.tsv", LINE_ENDS[ends](rows))
    out = _out(tmp_path, "pairs")
    report = write_pairwise(con, path, out)
    assert (report.rows, report.malformed_lines) == (5, 0)
    got = con.execute(f"SELECT neg_id FROM read_parquet('{out}/*.parquet') ORDER BY 1").fetchall()
    assert [r[0] for r in got] == [f"n{i}" for i in range(5)]  # no CR left in the last field


@pytest.mark.parametrize("ends", ["crlf_then_lf", "alternating"])
def test_every_delimited_reader_reads_mixed_line_ends(tmp_path: Path, con, ends: str) -> None:
    make = LINE_ENDS[ends]
    cases = [
        (text.read_msmarco_queries, [b"1\twhat is a tab", b"2\tcaf\xc3\xa9 au lait", b"3\tx"], 3),
        (text.read_trec_qrels, [b"1 0 d1 1", b"2 0 d2 1", b"3 0 d3 0"], 3),
        (text.read_beir_qrels, [b"query-id\tcorpus-id\tscore", b"1\td1\t1", b"2\td2\t1"], 2),
        (text.read_beir_queries, [b'{"_id": "1", "text": "a"}', b'{"_id": "2", "text": "b"}'], 2),
    ]
    for number, (read, lines_, expected) in enumerate(cases):
        path = _write(tmp_path, f"in{number}.txt", make(lines_))
        out = _out(tmp_path, f"r{number}")
        report = read(con, path, out, path.name)
        assert (report.rows, report.malformed_lines) == (expected, 0), read.__name__
        values = [str(v) for row in _rows(con, out) for v in row]
        assert not any("\r" in v for v in values), read.__name__
    run = _write(
        tmp_path, "run.trec", make([b"1 Q0 d%d %d %d.0 sys" % (i, i, 9 - i) for i in (1, 2, 3)])
    )
    report = write_run(con, run, _out(tmp_path, "run"), top_k=2)
    assert (report.rows, report.malformed_lines) == (2, 0)  # the top_k filter, nothing lost


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_a_json_lines_error_is_a_reported_line_not_an_exception(tmp_path: Path, con, end) -> None:
    """One line number, the file's: DuckDB's own (which counts a CRLF as two lines) is cut
    from its message."""
    data = b'{"_id": "1", "text": "a"}' + end + b'{"_id": "2", "text"\n'
    path = _write(tmp_path, "q.jsonl", data)
    report = text.read_beir_queries(con, path, _out(tmp_path, "q"), "fiqa.zip:queries.jsonl")
    assert report.malformed_lines == 1
    assert report.examples == (
        "fiqa.zip:queries.jsonl:2: Invalid Input Error: Malformed JSON in file "
        '"fiqa.zip:queries.jsonl": unexpected end of data.',
    )


@pytest.mark.parametrize("blank", [b"   ", b" \t ", b"\t\r"])
def test_a_whitespace_only_json_line_is_blank(tmp_path: Path, con, blank: bytes) -> None:
    data = b'{"_id": "1", "text": "a"}\n' + blank + b'\n{"_id": "2", "text": "b"}\n'
    path = _write(tmp_path, "q.jsonl", data)
    report = text.read_beir_queries(con, path, _out(tmp_path, "q"), "queries.jsonl")
    assert (report.rows, report.malformed_lines, report.examples) == (2, 0, ())
    assert (report.extra["blank_lines"], report.extra["first_blank_lines"]) == (1, [2])


# ---- cleaned copies: only when needed, under the caller's scratch, with room checked -----
@pytest.mark.parametrize("name", ["scores.tsv", "scores.tsv.gz"])
def test_a_cleaned_copy_without_room_is_one_line_naming_file_and_bytes(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Mixed line ends need an LF copy; when the scratch volume has no room for it (here:
    the spare it must leave is set above any disk), the refusal is one line naming the file
    and the bytes needed, before anything is written."""
    data = (ROW + b"\r\n") * 3 + (ROW + b"\n") * 2
    path = _write(tmp_path, name, gzip.compress(data) if name.endswith(".gz") else data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(lines, "SPARE_BYTES", 1 << 60)
    with pytest.raises(parsers.ParseError) as refused:
        parsers.copy_delimited(
            con, path, TEACHER_TSV, "SELECT * FROM {rows}", _out(tmp_path, "p"), scratch=scratch
        )
    message = str(refused.value)
    assert message.startswith(f"{name}: a cleaned copy (LF ends, rejected lines blanked) needs ")
    assert f"needs {len(data) - 3:,} bytes in {scratch}" in message and "\n" not in message
    assert list(scratch.iterdir()) == []


def test_crlf_json_lines_are_read_without_a_copy(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's JSON reader takes CR as whitespace: mixed or CRLF JSON lines are read as
    they are (no room is needed: the spare is set above any disk), and a rejected line
    still needs its copy."""
    monkeypatch.setattr(lines, "SPARE_BYTES", 1 << 60)
    line = b'{"_id": "1", "text": "a"}'
    path = _write(tmp_path, "q.jsonl", line + b"\r\n" + line + b"\n" + line + b"\r\n")
    report = text.read_beir_queries(con, path, _out(tmp_path, "q"), "queries.jsonl")
    assert (report.rows, report.malformed_lines, report.extra["crlf_lines"]) == (3, 0, 2)
    path = _write(tmp_path, "r.jsonl", line + b"\n\0" + line + b"\n")
    with pytest.raises(parsers.ParseError, match=r"^r\.jsonl: a cleaned copy"):
        text.read_beir_queries(con, path, _out(tmp_path, "r"), "r.jsonl")


def test_a_gzipped_file_is_copied_under_a_plain_name(tmp_path: Path, con) -> None:
    """The LF copy of a gzipped file is plain text and is named so (the engine picks its
    decompression by name)."""
    data = (ROW + b"\r\n") * 3 + (ROW + b"\n") * 2
    path = _write(tmp_path, "scores.tsv.gz", gzip.compress(data))
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv.gz")
    assert (report.rows, report.malformed_lines) == (5, 0)


def test_every_engine_error_is_one_line_naming_the_file(tmp_path: Path, con) -> None:
    """A `.gz` name on plain text: the census reads it (by its bytes), DuckDB refuses it
    (by its name) with an IOException, which reaches the caller as one ParseError line."""
    path = _write(tmp_path, "scores.tsv.gz", (ROW + b"\n") * 3)
    with pytest.raises(parsers.ParseError) as refused:
        write_pairwise(con, path, _out(tmp_path, "p"), "hofstaetter/scores.tsv.gz")
    message = str(refused.value)
    assert message.startswith("hofstaetter/scores.tsv.gz: cannot be parsed: IO Error: ")
    assert "\n" not in message and str(tmp_path) not in message
    path = _write(tmp_path, "q.jsonl.gz", b'{"_id": "1", "text": "a"}\n')
    with pytest.raises(parsers.ParseError, match=r"^q\.jsonl\.gz: cannot be parsed: "):
        text.read_beir_queries(con, path, _out(tmp_path, "q"), "q.jsonl.gz")


# ---- issue 13 items 1 and 2: long, NUL-filled and wide lines ---------------------------------
def _around(bad: bytes) -> bytes:
    return (ROW + b"\n") * 150 + bad + b"\n" + (ROW + b"\n") * 150


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"1.0\t2.0\tq\tp\t" + b"x" * (40 << 20), "longer than the limit"),  # > DuckDB's buffer
        (b"1.0\t2.0\tq\t" + b"\0" * (40 << 20) + b"\tn", "longer than the limit"),  # zeroed block
        (b"1.0\t2.0\tq\tp\t" + b"y" * (9 << 20), "longer than the limit"),  # just past the limit
        (b"\t".join([b"1"] * 37), "37 fields, more than the limit of 36"),  # 4 x 5 + 16
        (b" \t ".join([b"1"] * 5000), "5,000 fields, more than the limit of 36"),
        (b"1.0\t2.0\tq\t" + b"\0" * 4096 + b"\tn", "NUL bytes"),  # a 4 KiB zeroed block
        (b"1.0\t2.0\tq\tp\tn\rmore", "carriage return inside a line"),
    ],
    ids=["100MB-like", "nul-block", "9MiB", "wide", "wide-padded", "nul-4KiB", "lone-cr"],
)
def test_a_line_the_engine_cannot_take_is_a_reported_reject(
    tmp_path: Path, con, bad: bytes, reason: str
) -> None:
    path = _write(tmp_path, "scores.tsv", _around(bad))
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert (report.rows, report.malformed_lines) == (300, 1)
    assert report.examples[0].startswith("scores.tsv:151: ")
    assert reason in report.examples[0]
    assert report.extra["lines_in_file"] == 301


def test_each_format_has_its_field_limit(tmp_path: Path, con) -> None:
    """The limit is 4 x columns + 16 per format: a line at it reaches the engine (and is
    the engine's reject), one past it is the census's."""
    assert (TEACHER_TSV.max_fields, parsers.TREC_RUN.max_fields) == (36, 40)
    for fields, why in [(36, "expected 5"), (37, "37 fields, more than the limit of 36")]:
        path = _write(tmp_path, f"s{fields}.tsv", _around(b"\t".join([b"1"] * fields)))
        report = write_pairwise(con, path, _out(tmp_path, f"p{fields}"), "scores.tsv")
        assert (report.rows, report.malformed_lines) == (300, 1)
        assert report.examples[0].startswith("scores.tsv:151: ")
        assert why in report.examples[0].replace("Expected Number of Columns: 5", "expected 5")


def test_a_nul_block_across_a_line_break_rejects_the_merged_line(tmp_path: Path, con) -> None:
    """A crash-zeroed 4 KiB block that swallows a line break joins two rows into one line:
    that line is a reject, not a row (nor two rows)."""
    rows = [b"%d.5\t0.5\tq%d%s\tp%d\tn%d" % (i, i, b"x" * 3000, i, i) for i in range(5)]
    data = b"\n".join(rows) + b"\n"
    at = data.index(b"q1") + 100  # inside line 2, past its end, into line 3
    path = _write(tmp_path, "scores.tsv", data[:at] + b"\0" * 4096 + data[at + 4096 :])
    out = _out(tmp_path, "p")
    report = write_pairwise(con, path, out, "scores.tsv")
    assert report.extra["lines_in_file"] == 4
    assert (report.rows, report.malformed_lines) == (3, 1)
    assert report.examples == ("scores.tsv:2: NUL bytes",)
    ids = con.execute(f"SELECT left(query_id, 2) FROM read_parquet('{out}/*.parquet')")
    assert sorted(r[0] for r in ids.fetchall()) == ["q0", "q3", "q4"]


@pytest.mark.parametrize(
    ("data", "rejected"),
    [
        (ROW + b"\r\n" + ROW[:8] + b"\r" + ROW[8:] + b"\r\n" + ROW + b"\r\n", [2]),  # in a text
        (ROW + b"\n" + ROW + b"\r\r\n" + ROW + b"\n", [2]),  # \r\r\n
        (ROW + b"\n" + ROW + b"\n" + ROW + b"\r", [3]),  # the last line ends in CR
        (ROW + b"\r" + ROW + b"\n" + ROW + b"\n" + ROW + b"\n", [1]),  # an old Mac line end
    ],
    ids=["inside", "cr-cr-lf", "last-cr", "cr-ending"],
)
def test_a_carriage_return_not_ending_a_line_is_a_reported_reject(
    tmp_path: Path, con, data: bytes, rejected: list[int]
) -> None:
    """A CR that is not the CR of a CRLF stops DuckDB's CSV reader for the whole file; the
    census rejects its line (blanked in the copy the engine reads), and the rest parses."""
    path = _write(tmp_path, "scores.tsv", data)
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert (report.rows, report.malformed_lines) == (3 - len(rejected), len(rejected))
    assert report.examples == tuple(
        f"scores.tsv:{n}: carriage return inside a line" for n in rejected
    )
    for read, line in [
        (text.read_trec_qrels, b"1 0 d1 1"),
        (text.read_beir_queries, b'{"_id": "1", "text": "a"}'),
    ]:
        path = _write(tmp_path, f"{read.__name__}.txt", line + b"\r\n" + line + b"\rx\n" + line)
        report = read(con, path, _out(tmp_path, read.__name__), path.name)
        assert (report.rows, report.malformed_lines) == (2, 1), read.__name__
        assert report.examples == (f"{path.name}:2: carriage return inside a line",)


def test_a_line_that_vanishes_in_the_engine_is_caught_by_reconciliation(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the census's length limit lifted, DuckDB drops a 40 MiB line without a reject:
    the reconciliation of rows with the file's lines still reports it."""
    monkeypatch.setattr(parsers, "MAX_LINE_BYTES", 1 << 30)
    path = _write(tmp_path, "scores.tsv", _around(b"1.0\t2.0\tq\tp\t" + b"x" * (40 << 20)))
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert report.rows == 300
    assert report.malformed_lines == 1
    assert "301 lines" in report.examples[0] and "1 line(s) unaccounted" in report.examples[0]
    long = b"1.0\t2.0\tq\tp\t" + b"x" * (40 << 20)
    path = _write(tmp_path, "twice.tsv", _around(long + b"\n" + long))
    report = write_pairwise(con, path, _out(tmp_path, "twice"), "twice.tsv")
    assert (report.rows, report.malformed_lines) == (300, 2)  # each lost line counts
    assert "302 lines" in report.examples[0] and "2 line(s) unaccounted" in report.examples[0]


def test_ten_million_fields_are_reported_in_seconds(tmp_path: Path, con) -> None:
    path = _write(tmp_path, "scores.tsv", _around(b"\t".join([b"1"] * 10_000_000)))
    started = time.monotonic()
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert time.monotonic() - started < 20  # minutes before the census
    assert (report.rows, report.malformed_lines) == (300, 1)
    assert len(report.examples) == 1  # the report is bounded: one line, not one per field


def test_too_many_rejected_lines_refuse_the_file_unparsed(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lines, "REMEMBERED", 10)
    path = _write(tmp_path, "scores.tsv", (b"\t".join([b"1"] * 2000) + b"\n") * 12 + ROW + b"\n")
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert (report.rows, report.malformed_lines) == (0, 12)
    assert len(report.examples) == lines.REPORTED


def test_blank_lines_are_counted_and_named(tmp_path: Path, con) -> None:
    path = _write(tmp_path, "scores.tsv", ROW + b"\n\n" + ROW + b"\r\n\r\n" + ROW + b"\n")
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert (report.rows, report.malformed_lines) == (3, 0)
    assert report.extra["blank_lines"] == 2
    assert report.extra["first_blank_lines"] == [2, 4]


def test_engine_line_numbers_match_the_file_after_a_blanked_line(tmp_path: Path, con) -> None:
    """The clean copy keeps a rejected line as a blank line, so the engine's own rejects
    still carry the original line numbers."""
    data = _around(b"\t".join([b"1"] * 2000)) + b"oops\t0.5\tq\tp\tn\r\n" + ROW + b"\n"
    path = _write(tmp_path, "scores.tsv", data)
    report = write_pairwise(con, path, _out(tmp_path, "p"), "scores.tsv")
    assert (report.rows, report.malformed_lines) == (301, 2)
    assert report.examples[0].startswith("scores.tsv:151: 2,000 fields")
    assert report.examples[1].startswith("scores.tsv:302: ")


def test_census_counts_across_chunk_boundaries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lines, "CHUNK_BYTES", 7)
    data = b"a\tb\r\nc\td\n\n" + b"x" * 30 + b"\te\r\n" + b"\t".join([b"1"] * 20) + b"\nlast\tz"
    path = _write(tmp_path, "c.tsv", data)
    census = lines.take_census(path, delimiters=b"\t", max_bytes=20, max_fields=10)
    assert (census.lines, census.blank_lines, census.crlf_lines) == (6, 1, 2)
    assert census.rejected_numbers == [4, 5]
    assert census.unterminated and census.mixed_line_ends
    clean = tmp_path / "clean.tsv"
    lines.write_clean_copy(path, census, clean)
    assert clean.read_bytes() == b"a\tb\nc\td\n\n\n\nlast\tz"


@pytest.mark.parametrize("runs", [False, True])
def test_census_counts_fields_of_a_line_spanning_chunks(tmp_path: Path, monkeypatch, runs) -> None:
    monkeypatch.setattr(lines, "CHUNK_BYTES", 5)
    wide = b"  \t".join([b"ab"] * 30) if runs else b"\t".join([b"ab"] * 30)
    path = _write(tmp_path, "w.tsv", b"a\tb\n" + wide + b"\r\nc\td\n")
    delimiters = b"\t " if runs else b"\t"
    census = lines.take_census(
        path, delimiters=delimiters, max_bytes=1000, max_fields=29, runs=runs
    )
    assert census.rejected_numbers == [2]
    assert census.examples == [(2, "30 fields, more than the limit of 29")]
    census = lines.take_census(
        path, delimiters=delimiters, max_bytes=1000, max_fields=30, runs=runs
    )
    assert census.rejected == 0


def _reference_census(data: bytes, runs: bool, blank: bytes, max_bytes: int, max_fields: int):
    """What the census must find, line by line in plain Python."""
    pieces = data.split(b"\n")
    lines_ = pieces if pieces[-1] else pieces[:-1]
    rejected, blanks, crlf = [], [], 0
    for number, line in enumerate(lines_, 1):
        terminated = number < len(pieces)
        ends_crlf = terminated and line.endswith(b"\r")
        crlf += ends_crlf
        content = line[:-1] if ends_crlf else line
        separators = re.findall(rb"[\t ]+" if runs else rb"\t", content)
        fields = 1 + len(separators)
        if len(content) > max_bytes or b"\0" in content or b"\r" in content or fields > max_fields:
            rejected.append(number)
        elif not content.strip(blank) if blank else not content:
            blanks.append(number)
    return len(lines_), rejected, len(blanks), crlf


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.sampled_from([b"a", b"bb", b"\t", b" ", b"\r", b"\n", b"\r\n", b"\0"])).map(
        b"".join
    ),
    chunk=st.integers(1, 12),
    runs=st.booleans(),
    json_blank=st.booleans(),
)
def test_census_agrees_with_a_line_by_line_reading(
    data: bytes, chunk: int, runs: bool, json_blank: bool
) -> None:
    """Any bytes, any chunk size: the vectorised census finds what reading line by line
    finds (lines, rejected lines, blank lines, CRLF ends), and the cleaned copy is the
    file with rejected lines emptied and CRLF made LF."""
    blank = b" \t" if json_blank else b""
    reference = _reference_census(data, runs, blank, max_bytes=9, max_fields=3)
    saved = lines.CHUNK_BYTES
    lines.CHUNK_BYTES = chunk
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "f.tsv"
            path.write_bytes(data)
            census = lines.take_census(
                path,
                delimiters=b"\t " if runs else b"\t",
                runs=runs,
                blank=blank,
                max_bytes=9,
                max_fields=3,
            )
            copy = Path(folder) / "copy"
            lines.write_clean_copy(path, census, copy)
            cleaned = copy.read_bytes()
    finally:
        lines.CHUNK_BYTES = saved
    found = (census.lines, census.rejected_numbers, census.blank_lines, census.crlf_lines)
    assert found == reference
    pieces = data.split(b"\n")
    expected = [
        b"" if n in reference[1] else (p[:-1] if n < len(pieces) and p.endswith(b"\r") else p)
        for n, p in enumerate(pieces, 1)
    ]
    assert cleaned == b"\n".join(expected)


def test_reconciliation_tells_filtered_rows_from_lost_lines(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TREC run read with top_k drops rows on purpose; a line lost in the engine is still
    found (the census limit lifted so that DuckDB loses a 40 MiB line)."""
    run = [b"1 Q0 d%d %d %d.0 sys" % (i, i, 99 - i) for i in range(1, 11)]
    path = _write(tmp_path, "run.trec", b"\n".join(run) + b"\n")
    report = write_run(duckdb.connect(), path, _out(tmp_path, "a"), top_k=3)
    assert (report.rows, report.malformed_lines) == (3, 0)
    assert report.extra["lines_beyond_top_k"] == 7
    report = write_run(duckdb.connect(), path, _out(tmp_path, "all"), top_k=10)
    assert (report.rows, report.extra["lines_beyond_top_k"]) == (10, 0)
    padded = [*run]  # lines only the whitespace re-split reads, one kept, one beyond top_k
    padded[1], padded[6] = b"1 \tQ0  d2 2 97.0 sys", b"1  Q0\td7 7  92.0 sys"
    path = _write(tmp_path, "padded.trec", b"\n".join(padded) + b"\n")
    report = write_run(duckdb.connect(), path, _out(tmp_path, "padded"), top_k=3)
    assert (report.rows, report.recovered_lines, report.malformed_lines) == (3, 2, 0)
    assert report.extra["lines_beyond_top_k"] == 7
    monkeypatch.setattr(parsers, "MAX_LINE_BYTES", 1 << 30)
    long = b"2 Q0 d1 1 1.0 " + b"x" * (40 << 20)
    path = _write(tmp_path, "run2.trec", b"\n".join([*run, long, *run]) + b"\n")
    report = write_run(con, path, _out(tmp_path, "b"), top_k=3)
    assert report.rows == 6
    assert report.malformed_lines == 1 and "1 line(s) unaccounted" in report.examples[0]
    assert report.extra["lines_beyond_top_k"] == 14
