"""Rank-DistiLLM runs: TREC parsing on any whitespace, top-k, qrels annotation, every
variant through Dagster on the sample, and damaged runs kept out of the lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from kd_pipeline.families.rank_distillm import (
    PREPARE_IDS,
    RANK_DISTILLM_JOB,
    RUNS_KEY,
    rank_distillm_partitions,
    write_run,
)
from kd_pipeline.families.text import (
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QRELS_TRAIN_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    TEXT_JOB,
)
from kd_pipeline.families.upstream import RUN_VARIANTS
from kd_pipeline.lake import Lake, safe_name
from kd_pipeline_tests.family_runs import (
    checks,
    edit_lines,
    materialized,
    redeclare,
    rows,
    run_job,
    stand_in_mirror,
    url_path,
)
from kd_pipeline_tests.helpers import failures

VARIANTS = [
    "msmarco.bm25.annotated",
    "msmarco.colbertv2.annotated",
    "rankzephyr.bm25_10000.sampled100",
    "rankzephyr.colbert10000.sampled100",
    "rankzephyr.colbert10000.sampled50",
    "rankzephyr.colbert10000.sampled10",
]
TEXTS = [MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_QRELS_TRAIN_KEY]


def test_partitions_and_prepare_ids() -> None:
    assert rank_distillm_partitions.get_partition_keys() == VARIANTS
    assert all(safe_name(v, "partition key") == v for v in VARIANTS)
    assert {v: RUN_VARIANTS[v].top_k for v in VARIANTS} == dict(
        zip(VARIANTS, [500, 500, 100, 100, 50, 10], strict=True)
    )
    assert {
        f"com.github.webis-de.rank-distillm.{v}": (RUNS_KEY, v) for v in VARIANTS
    } == PREPARE_IDS


RUN = """\
q1 Q0 d1 1 9.5 bm25
q1 Q0 d2 2 9.0 bm25
q1\t0\td3\t3\t8.5\tcolbert
  q1   Q0  d4 4 8.0 bm25 \t
q1 Q0 d5 5 7.5 bm25
q2 Q0 d1 1 3.0 bm25
q2 Q0 d9
q2 Q0 d7 2 high bm25

q2 Q0 d8 3 1.0 bm25
"""


def test_write_run_splits_on_any_whitespace_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.run"
    path.write_text(RUN)
    con = duckdb.connect()
    report = write_run(con, path, tmp_path / "out", top_k=4, label="x.run")
    got = con.execute(
        "SELECT query_id, doc_id, rank, score, is_positive FROM read_parquet($g) ORDER BY ALL",
        {"g": str(tmp_path / "out" / "*.parquet")},
    ).fetchall()
    assert got == [
        ("q1", "d1", 1, 9.5, None),
        ("q1", "d2", 2, 9.0, None),
        ("q1", "d3", 3, 8.5, None),  # a tab-separated line in a space-separated file
        ("q1", "d4", 4, 8.0, None),  # runs of mixed whitespace
        ("q2", "d1", 1, 3.0, None),
        ("q2", "d8", 3, 1.0, None),
    ]  # d5 is past the top 4; the blank line is no row and no error
    assert (report.rows, report.recovered_lines, report.malformed_lines) == (6, 2, 2)
    assert report.examples == (
        "x.run:7: Expected Number of Columns: 6 Found: 3",
        'x.run:8: Error when converting column "score". Could not convert string "high" to '
        "'DOUBLE'",
    )
    assert report.extra["delimiter"] == "space"


def test_write_run_with_qrels_marks_positives_and_adds_the_missed_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.run"
    path.write_text("q1\t0\td1\t1\t2.0\tc\nq1\t0\td2\t2\t1.0\tc\nq2\t0\td5\t1\t4.0\tc\n")
    qrels = tmp_path / "qrels.parquet"
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT * FROM (VALUES ('q1', 'd2', 1), ('q1', 'd9', 1), ('q1', 'd1', 0), "
        "('q2', 'd5', 2), ('q3', 'd3', 1)) t(query_id, doc_id, relevance)) TO $p (FORMAT parquet)",
        {"p": str(qrels)},
    )
    report = write_run(con, path, tmp_path / "out", 500, str(qrels))
    got = con.execute(
        "SELECT * FROM read_parquet($g) ORDER BY query_id, rank NULLS LAST",
        {"g": str(tmp_path / "out" / "*.parquet")},
    ).fetchall()
    assert got == [
        ("q1", "d1", 1, 2.0, False),  # relevance 0 is not a positive
        ("q1", "d2", 2, 1.0, True),
        ("q1", "d9", None, None, True),  # relevant but not in the list
        ("q2", "d5", 1, 4.0, True),
    ]  # q3 is judged but not in the run: not added
    assert report.extra == {
        "delimiter": "tab",
        "header_skipped": False,
        "unretrieved_positives": 1,
        "lines_in_file": 3,
        "blank_lines": 0,
        "first_blank_lines": [],
        "crlf_lines": 0,
        "longest_line_bytes": 15,
        "lines_beyond_top_k": 0,
    }
    report = write_run(con, path, tmp_path / "top1", 1, str(qrels))  # d2 ranked beyond top_k
    got = con.execute(
        "SELECT doc_id, rank FROM read_parquet($g) ORDER BY query_id, rank NULLS LAST, doc_id",
        {"g": str(tmp_path / "top1" / "*.parquet")},
    ).fetchall()
    assert got == [("d1", 1), ("d2", None), ("d9", None), ("d5", 1)]
    assert (report.rows, report.malformed_lines) == (2, 0)
    assert (report.extra["lines_beyond_top_k"], report.extra["unretrieved_positives"]) == (1, 2)


def test_every_variant_on_the_sample(lake_dir: Path) -> None:
    assert run_job(TEXT_JOB, selection=TEXTS).success
    for variant in VARIANTS:
        result = run_job(RANK_DISTILLM_JOB, variant)
        assert result.success, failures(result)
        assert all(e.passed for e in result.get_asset_check_evaluations()), variant
        meta = materialized(result, RUNS_KEY)
        spec = RUN_VARIANTS[variant]
        assert meta["delimiter"] == ("space" if "bm25" in variant else "tab")
        assert meta["annotated"] is spec.annotated and meta["malformed_lines"] == 0
        (n, queries, top, flags, unranked) = duckdb.execute(
            "SELECT count(*), count(DISTINCT query_id), max(rank), list(DISTINCT is_positive "
            "ORDER BY is_positive), count(*) FILTER (rank IS NULL) FROM read_parquet($g)",
            {"g": Lake(lake_dir).parquet_glob(RUNS_KEY.path, variant)},
        ).fetchone()
        assert n == meta["dagster/row_count"] and top <= spec.top_k
        if spec.annotated:
            assert queries == 60 and flags == [False, True]
            assert unranked == meta["unretrieved_positives"] > 0  # missed positives kept
            assert (
                checks(result)[(RUNS_KEY.to_user_string(), "ids_resolve_to_texts")]
                .metadata["first_offenders"]
                .value
                == "doc_id=8841823"
            )
        else:
            assert queries == 20 and flags == [None] and unranked == 0
    positives = rows(lake_dir, RUNS_KEY, "msmarco.bm25.annotated", "query_id, doc_id")
    qrels = rows(lake_dir, MSMARCO_QRELS_TRAIN_KEY, None, "query_id, doc_id")
    assert set(qrels) <= set(positives)  # every judged pair of a ranked query is there


def test_damaged_run_keeps_the_published_version(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    variant = "rankzephyr.colbert10000.sampled10"
    assert run_job(TEXT_JOB, selection=TEXTS[:2]).success
    assert run_job(RANK_DISTILLM_JOB, variant).success
    good = Lake(lake_dir).manifest(RUNS_KEY.path, variant)["version"]

    run = url_path(mirror, RUN_VARIANTS[variant].url)
    # drop rank 3 of the first query, truncate a line of the second
    edit_lines(run, lambda lines: [*lines[:2], *lines[3:12], lines[12][:10], *lines[13:]])
    redeclare(mirror)
    result = run_job(RANK_DISTILLM_JOB, variant)
    assert not result.success
    failed = {name for (_, name), e in checks(result).items() if not e.passed}
    assert failed == {"ranks_contiguous", "no_malformed_lines"}
    # the cut line is line 12 of the damaged file (one line above it was dropped)
    assert f"{RUN_VARIANTS[variant].file}:12: Expected Number of Columns: 6" in failures(result)
    assert Lake(lake_dir).manifest(RUNS_KEY.path, variant)["version"] == good
