"""The delimited and JSON-lines readers on generated faults: mixed line ends, over-long lines,
NUL blocks, wide lines, blank lines; every line a row or a reported `file:line` reject."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest

from kd_pipeline import lines, parsers
from kd_pipeline.families import text
from kd_pipeline.families.hofstaetter import write_pairwise
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


def test_a_json_lines_error_is_a_reported_line_not_an_exception(tmp_path: Path, con) -> None:
    path = _write(tmp_path, "q.jsonl", b'{"_id": "1", "text": "a"}\r\n{"_id": "2", "text"\n')
    report = text.read_beir_queries(con, path, _out(tmp_path, "q"), "fiqa.zip:queries.jsonl")
    assert report.malformed_lines == 1
    assert report.examples[0].startswith("fiqa.zip:queries.jsonl:2: ")


# ---- issue 13 items 1 and 2: long, NUL-filled and wide lines ---------------------------------
def _around(bad: bytes) -> bytes:
    return (ROW + b"\n") * 150 + bad + b"\n" + (ROW + b"\n") * 150


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"1.0\t2.0\tq\tp\t" + b"x" * (40 << 20), "longer than the limit"),  # > DuckDB's buffer
        (b"1.0\t2.0\tq\t" + b"\0" * (40 << 20) + b"\tn", "longer than the limit"),  # zeroed block
        (b"1.0\t2.0\tq\tp\t" + b"y" * (9 << 20), "longer than the limit"),  # just past the limit
        (b"\t".join([b"1"] * 1001), "1,001 fields, more than the limit of 1,000"),
        (b" \t ".join([b"1"] * 5000), "5,000 fields, more than the limit of 1,000"),
    ],
    ids=["100MB-like", "nul-block", "9MiB", "wide", "wide-padded"],
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


def test_reconciliation_tells_filtered_rows_from_lost_lines(
    tmp_path: Path, con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TREC run read with top_k drops rows on purpose; a line lost in the engine is still
    found (the census limit lifted so that DuckDB loses a 40 MiB line)."""
    run = [b"1 Q0 d%d %d %d.0 sys" % (i, i, 99 - i) for i in range(1, 11)]
    path = _write(tmp_path, "run.trec", b"\n".join(run) + b"\n")
    report = write_run(duckdb.connect(), path, _out(tmp_path, "a"), top_k=3)
    assert (report.rows, report.malformed_lines) == (3, 0)
    monkeypatch.setattr(parsers, "MAX_LINE_BYTES", 1 << 30)
    long = b"2 Q0 d1 1 1.0 " + b"x" * (40 << 20)
    path = _write(tmp_path, "run2.trec", b"\n".join([*run, long, *run]) + b"\n")
    report = write_run(con, path, _out(tmp_path, "b"), top_k=3)
    assert report.rows == 6
    assert report.malformed_lines == 1 and "1 line(s) unaccounted" in report.examples[0]
