"""LightOn raw: resolving a config's files, reading upstream columns, publishing through
Dagster with blocking checks (write, audit, publish)."""

from __future__ import annotations

import hashlib
import math

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from kd_pipeline.families.lighton import CANONICAL_COLUMNS, resolve_config_files
from kd_pipeline.fetch import FetchError
from kd_pipeline.lake import Lake
from kd_pipeline_tests.helpers import (
    failures,
    lighton_repo,
    pairs,
    run_lighton_partition,
    write_pairs,
)

RAW = ("lighton", "raw")
CARD = """---
license: apache-2.0
configs:
- config_name: agnews
  data_files:
  - split: train
    path: agnews/train-*
- config_name: listed
  data_files: [listed/a.parquet, listed/b.parquet]
- config_name: nested
  data_files:
    - split: train
      path: ["deep/**/*.parquet"]
    - split: test
      path: deep/test.parquet
---
# card
"""
FILES = [
    "agnews/train-00000-of-00002.parquet",
    "agnews/train-00001-of-00002.parquet",
    "agnews/other.json",
    "listed/a.parquet",
    "listed/b.parquet",
    "listed/c.parquet",
    "deep/x/y/train.parquet",
    "deep/test.parquet",
    "msmarco/train-0.parquet",
    "data/fw-edu/train-0.parquet",
    "data/fw-edu/train-1.parquet",
]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("agnews", FILES[:2]),
        ("listed", ["listed/a.parquet", "listed/b.parquet"]),
        ("nested", ["deep/x/y/train.parquet"]),  # ** spans folders; the test split is left out
        ("msmarco", ["msmarco/train-0.parquet"]),  # not in the card: path prefix
        ("fw-edu", ["data/fw-edu/train-0.parquet", "data/fw-edu/train-1.parquet"]),
    ],
)
def test_resolve_config_files(config: str, expected: list[str]) -> None:
    assert resolve_config_files(CARD, FILES, config) == expected


def test_resolve_without_card_uses_prefix_and_errors_name_the_config() -> None:
    assert resolve_config_files(None, FILES, "agnews") == FILES[:2]
    with pytest.raises(FetchError, match="'quora'"):
        resolve_config_files(CARD, FILES, "quora")
    bad_card = CARD.replace("agnews/train-*", "nowhere/*")
    with pytest.raises(FetchError, match=r"'agnews'.*match no parquet"):
        resolve_config_files(bad_card, FILES, "agnews")


def _materialize(partition: str):
    result = run_lighton_partition(partition)
    return result


def _raw_rows(lake: Lake, partition: str) -> list[tuple]:
    return duckdb.execute(
        f"SELECT * FROM read_parquet('{lake.parquet_glob(RAW, partition)}') ORDER BY query"
    ).fetchall()


def test_sample_partition_publishes_raw_and_recipes_with_passing_checks(lake_dir) -> None:
    result = _materialize("msmarco")  # the sample splits msmarco over three shards
    assert result.success, failures(result)
    lake = Lake(lake_dir)
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)
    raw_glob = lake.parquet_glob(RAW, "msmarco")
    (rows, distinct_ids) = duckdb.execute(
        f"SELECT count(*), count(DISTINCT query_id) FROM read_parquet('{raw_glob}')"
    ).fetchone()
    assert rows == 200 and distinct_ids > 1
    schema = duckdb.execute(f"DESCRIBE SELECT * FROM read_parquet('{raw_glob}')").fetchall()
    assert {name: dtype for name, dtype, *_ in schema} == CANONICAL_COLUMNS
    (expected,) = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{raw_glob}') WHERE NOT \"drop\" AND duplicate IS NULL"
    ).fetchone()
    recommended = lake.parquet_glob(("lighton", "recommended"), "msmarco")
    assert (
        duckdb.execute(f"SELECT count(*) FROM read_parquet('{recommended}')").fetchone()[0]
        == expected
    )
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["dagster/row_count"].value == 200
    assert meta["revision"].value.startswith("mirror-")
    assert len(meta["files"].value) == 3
    catalog = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
    assert catalog.execute("SELECT DISTINCT partition FROM lighton.top35").fetchall() == [
        ("msmarco",)
    ]


def test_mirror_with_data_prefix_layout_and_other_widths(lake_dir, tmp_path, monkeypatch) -> None:
    """No card, files under data/<config>/, float32 scores, int32 or NaN-float duplicates,
    an index column in one shard only and an extra column: all read and cast."""
    mirror = tmp_path / "mirror"
    repo = lighton_repo(mirror)
    narrow = pa.schema(
        [
            ("query", pa.string()),
            ("document", pa.string()),
            ("similarity", pa.float32()),
            ("drop", pa.bool_()),
            ("duplicate", pa.int32()),
            ("index", pa.int64()),
            ("lang", pa.string()),
        ]
    )
    first = [dict(r, index=i, lang="en") for i, r in enumerate(pairs(5))]
    write_pairs(repo / "data" / "quora" / "train-0.parquet", first, narrow)
    floaty = pa.schema(
        [
            ("query", pa.string()),
            ("document", pa.string()),
            ("similarity", pa.float64()),
            ("drop", pa.bool_()),
            ("duplicate", pa.float64()),
        ]
    )
    second = [
        dict(r, duplicate=math.nan if r["duplicate"] is None else 3.0) for r in pairs(4, start=5)
    ]
    write_pairs(repo / "data" / "quora" / "train-1.parquet", second, floaty)
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))

    result = _materialize("quora")
    assert result.success, failures(result)
    rows = _raw_rows(Lake(lake_dir), "quora")
    assert len(rows) == 9
    by_query = {r[2]: r for r in rows}
    row5 = by_query["query 5"]
    assert row5[0] == hashlib.md5(b"query 5").hexdigest()
    assert row5[6] is None  # NaN duplicate became null
    assert by_query["query 0"][6] == 0  # duplicate 0 kept as 0, not null
    assert by_query["query 1"][4] == pytest.approx(0.1, abs=1e-6)  # float32 cast
    assert all(r[7] is None for r in rows)  # index is only kept when every shard has it
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["ignored_columns"].value == "lang"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            pa.schema(
                [
                    ("query", pa.string()),
                    ("document", pa.string()),
                    ("drop", pa.bool_()),
                    ("duplicate", pa.int64()),
                ]
            ),
            r"train-0\.parquet: column 'similarity' is missing",
        ),
        (
            pa.schema(
                [
                    ("query", pa.string()),
                    ("document", pa.string()),
                    ("similarity", pa.string()),
                    ("drop", pa.bool_()),
                    ("duplicate", pa.int64()),
                ]
            ),
            r"train-0\.parquet: column 'similarity' has type VARCHAR",
        ),
    ],
)
def test_schema_drift_is_a_clear_error_naming_file_and_column(
    lake_dir, tmp_path, monkeypatch, schema, message
) -> None:
    mirror = tmp_path / "mirror"
    rows = [{k: v for k, v in r.items() if k in schema.names} for r in pairs(3)]
    for r in rows:
        if "similarity" in r:
            r["similarity"] = "high"
    write_pairs(lighton_repo(mirror) / "agnews" / "train-0.parquet", rows, schema)
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = _materialize("agnews")
    assert not result.success
    import re

    assert re.search(message, failures(result))
    assert not Lake(lake_dir).is_published(RAW, "agnews")


def test_blocking_check_failure_keeps_the_published_version(
    lake_dir, tmp_path, monkeypatch
) -> None:
    """Write, audit, publish: a NaN score fails `finite_similarity`, nothing is published,
    the last good version stays readable and unchanged, and recipes do not run."""
    mirror = tmp_path / "mirror"
    shard = lighton_repo(mirror) / "agnews" / "train-0.parquet"
    write_pairs(shard, pairs(10))
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    assert _materialize("agnews").success
    lake = Lake(lake_dir)
    good_rows = _raw_rows(lake, "agnews")
    good_version = lake.manifest(RAW, "agnews")["version"]
    good_recommended = lake.manifest(("lighton", "recommended"), "agnews")["version"]

    bad = pairs(12)
    bad[4]["similarity"] = math.nan
    write_pairs(shard, bad)
    result = _materialize("agnews")
    assert not result.success
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {"finite_similarity"}
    assert "not published" in failures(result)
    assert lake.manifest(RAW, "agnews")["version"] == good_version
    assert _raw_rows(lake, "agnews") == good_rows
    assert lake.manifest(("lighton", "recommended"), "agnews")["version"] == good_recommended
    assert not any((lake_dir / ".staging" / "lighton" / "raw" / "agnews").iterdir())


def test_runs_are_recorded_in_the_instance(tmp_path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = run_lighton_partition("fw2-cmn_Hani", instance)
        assert result.success, failures(result)
        record = instance.get_latest_materialization_event(dg.AssetKey(["lighton", "top35"]))
        assert record is not None and record.dagster_event.partition == "fw2-cmn_Hani"
