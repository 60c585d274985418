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
    schema = duckdb.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{raw_glob}', hive_partitioning = false)"
    ).fetchall()
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
    with lake.connect(read_only=True) as catalog:
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
    # the refused version's folder is gone: only the published one is left
    versions = list((lake_dir / "data" / "lighton" / "raw" / "partition=agnews").iterdir())
    assert versions == [lake.published_path(RAW, "agnews")]


def test_runs_are_recorded_in_the_instance(tmp_path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = run_lighton_partition("fw2-cmn_Hani", instance)
        assert result.success, failures(result)
        record = instance.get_latest_materialization_event(dg.AssetKey(["lighton", "top35"]))
        assert record is not None and record.dagster_event.partition == "fw2-cmn_Hani"


# ---- flag columns: nulls, absences, encodings (issue 12 item 5, issue 13 items 5 and 9) ----
def _flag_schema(drop: pa.DataType | None, duplicate: pa.DataType | None) -> pa.Schema:
    fields = [("query", pa.string()), ("document", pa.string()), ("similarity", pa.float64())]
    fields += [("drop", drop)] if drop is not None else []
    fields += [("duplicate", duplicate)] if duplicate is not None else []
    return pa.schema(fields)


def _no_drops(rows: list[dict]) -> list[dict]:
    """The rows with every drop null (written as a pa.null() column)."""
    return [{**r, "drop": None} for r in rows]


def _write_shards(mirror, config: str, shards: list[tuple[list[dict], pa.Schema]]) -> None:
    for number, (rows, schema) in enumerate(shards):
        kept = [{k: v for k, v in r.items() if k in schema.names} for r in rows]
        write_pairs(lighton_repo(mirror) / config / f"train-{number}.parquet", kept, schema)


def _check(result, name: str) -> dg.AssetCheckEvaluation:
    """The evaluation of a check of lighton/raw in a run."""
    (found,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == name and e.asset_key == dg.AssetKey(RAW)
    ]
    return found


def test_null_and_absent_flags_read_as_the_seed_reads_them(lake_dir, tmp_path, monkeypatch):
    """Null drop = not dropped, a shard without drop = not dropped, a shard whose drop is
    all null (type NULL) = not dropped, a shard without duplicate = no duplicates:
    published, counted in metadata and in a WARN check."""
    mirror = tmp_path / "mirror"
    with_nulls = pairs(6)
    for r in with_nulls[:2]:
        r["drop"] = None
    _write_shards(
        mirror,
        "agnews",
        [
            (with_nulls, _flag_schema(pa.bool_(), pa.int64())),  # rows 0-5, 2 null drops
            (pairs(4, start=6), _flag_schema(None, pa.int64())),  # no drop column
            (pairs(3, start=10), _flag_schema(pa.bool_(), None)),  # no duplicate column
            (_no_drops(pairs(3, start=13)), _flag_schema(pa.null(), pa.int64())),  # all-null drop
        ],
    )
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = _materialize("agnews")
    assert result.success, failures(result)
    rows = {r[2]: r for r in _raw_rows(Lake(lake_dir), "agnews")}
    assert len(rows) == 16
    assert rows["query 0"][5] is False and rows["query 1"][5] is False  # null drop: kept
    assert rows["query 3"][5] is True  # a real drop flag is kept as it is
    assert all(rows[f"query {i}"][5] is False for i in range(6, 10))  # absent drop: kept
    assert all(rows[f"query {i}"][5] is False for i in range(13, 16))  # all-null drop: kept
    assert rows["query 7"][6] == 0  # duplicate of the shard that has the column
    assert all(rows[f"query {i}"][6] is None for i in range(10, 13))  # absent: no duplicate
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["drop_unset_rows"].value == 2 + 4 + 3
    assert meta["files_without_drop"].value == "train-1.parquet"
    assert meta["files_without_duplicate"].value == "train-2.parquet"
    warned = _check(result, "drop_flag_set")
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.metadata["violations"].value == 2 + 4 + 3
    # every declared check is evaluated, the shrink guard included, and nothing else
    from kd_pipeline.definitions import defs
    from kd_pipeline.families.lighton import RAW_KEY

    declared = {s.name for s in defs.resolve_assets_def(RAW_KEY).check_specs}
    assert "no_unexpected_shrink" in declared
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations if e.asset_key == RAW_KEY} == declared
    # the recommended subset keeps the rows whose drop was unset
    recommended = duckdb.execute(
        "SELECT count(*) FROM read_parquet($g) WHERE query IN ('query 1', 'query 6')",
        {"g": Lake(lake_dir).parquet_glob(("lighton", "recommended"), "agnews")},
    ).fetchall()[0][0]
    assert recommended == 2


def test_an_all_null_drop_written_by_pandas_reads_as_not_dropped(lake_dir, tmp_path, monkeypatch):
    """pandas writes a `drop` of [None, None, ...] as a column of type null (as pyarrow's
    pa.null()): every row is kept and counted as unset, like an absent column."""
    import pandas as pd

    rows = pairs(5)
    frame = pd.DataFrame(
        {
            "query": [r["query"] for r in rows],
            "document": [r["document"] for r in rows],
            "similarity": [r["similarity"] for r in rows],
            "drop": [None] * len(rows),
        }
    )
    shard = lighton_repo(tmp_path / "mirror") / "agnews" / "train-0.parquet"
    shard.parent.mkdir(parents=True)
    frame.to_parquet(shard)
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(tmp_path / "mirror"))
    result = _materialize("agnews")
    assert result.success, failures(result)
    assert [r[5] for r in _raw_rows(Lake(lake_dir), "agnews")] == [False] * 5
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["drop_unset_rows"].value == 5
    assert meta["files_without_drop"].value == "-"  # the column is there, all null


def test_null_text_or_score_still_blocks(lake_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    rows = pairs(5)
    rows[1]["similarity"] = None
    rows[3]["document"] = None
    _write_shards(mirror, "agnews", [(rows, _flag_schema(pa.bool_(), pa.int64()))])
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = _materialize("agnews")
    assert not result.success
    failed = _check(result, "no_null_text_or_score")
    assert not failed.passed and failed.metadata["violations"].value == 2
    assert not Lake(lake_dir).is_published(RAW, "agnews")


def test_nan_float_flags_at_realistic_size(lake_dir, tmp_path, monkeypatch):
    """pandas writes nullable integers as floats with NaN: `duplicate` [1.0, NaN, 3.0, ...]
    and `drop` [0.0, NaN, 1.0, ...] over 300k rows in several row groups are read as
    integers / booleans with NaN as null (null drop = kept)."""
    import pyarrow.parquet as pq

    n = 300_000
    cycle = [1.0, math.nan, 3.0]
    drops = [0.0, math.nan, 1.0]
    table = pa.table(
        {
            "query": [f"q{i}" for i in range(n)],
            "document": [f"d{i}" for i in range(n)],
            "similarity": [float(i % 97) for i in range(n)],
            "drop": [drops[i % 3] for i in range(n)],
            "duplicate": [cycle[i % 3] for i in range(n)],
        }
    )
    shard = lighton_repo(tmp_path / "mirror") / "quora" / "train-0.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(table, shard, row_group_size=40_000)
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(tmp_path / "mirror"))
    result = _materialize("quora")
    assert result.success, failures(result)
    glob = Lake(lake_dir).parquet_glob(RAW, "quora")
    counts = duckdb.execute(
        "SELECT count(*), count(*) FILTER (duplicate IS NULL), sum(duplicate), "
        'count(*) FILTER ("drop"), count(*) FILTER (NOT "drop") FROM read_parquet($g)',
        {"g": glob},
    ).fetchall()[0]
    assert counts == (n, n // 3, (1 + 3) * (n // 3), n // 3, 2 * n // 3)
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["drop_unset_rows"].value == n // 3


DUP = "column 'duplicate' "


@pytest.mark.parametrize(
    ("column", "dtype", "values", "message"),
    [
        ("drop", pa.int64(), [0, 1, 2], r"column 'drop' \(BIGINT\), row 3: value 2 has no meaning"),
        ("drop", pa.int8(), [-1, 0, 1], r"column 'drop' \(TINYINT\), row 1: value -1"),
        ("drop", pa.float64(), [0.0, math.nan, 0.5], r"column 'drop' \(DOUBLE\), row 3: value 0.5"),
        ("duplicate", pa.float64(), [1.0, math.nan, 2.5], DUP + r"\(DOUBLE\), row 3: value 2.5"),
        ("duplicate", pa.float64(), [math.inf, 1.0, 2.0], DUP + r"\(DOUBLE\), row 1: value inf"),
        (
            "duplicate",
            pa.uint64(),
            [1, 2**63, 3],
            DUP + r"\(UBIGINT\), row 2: value 9223372036854775808",
        ),
    ],
)
def test_flag_values_without_meaning_are_schema_errors(
    lake_dir, tmp_path, monkeypatch, column, dtype, values, message
):
    """Only 0/1 are drop flags and only whole numbers are row indexes: anything else fails
    the run with one line naming file, column, row and value; nothing is published."""
    import re

    rows = pairs(3)
    for row, value in zip(rows, values, strict=True):
        row[column] = value
    drop_type = dtype if column == "drop" else pa.bool_()
    dup_type = dtype if column == "duplicate" else pa.int64()
    _write_shards(tmp_path / "mirror", "agnews", [(rows, _flag_schema(drop_type, dup_type))])
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(tmp_path / "mirror"))
    result = _materialize("agnews")
    assert not result.success
    assert re.search(r"train-0\.parquet: " + message, failures(result)), failures(result)
    assert "ConversionException" not in failures(result)
    assert not Lake(lake_dir).is_published(RAW, "agnews")


# ---- shrink guard (issue 13 item 6) -------------------------------------------------------
@pytest.mark.parametrize(("new_rows", "published"), [(0, False), (90, False), (120, True)])
def test_an_upstream_that_shrinks_too_much_does_not_replace_the_data(
    lake_dir, tmp_path, monkeypatch, new_rows, published
):
    """200 published rows; a 0-row shard (or 90 rows: 55% fewer) is blocked by
    no_unexpected_shrink and the 200 stay; 120 rows (40% fewer) is within the default 50%."""
    mirror = tmp_path / "mirror"
    schema = _flag_schema(pa.bool_(), pa.int64())
    _write_shards(mirror, "agnews", [(pairs(200), schema)])
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    assert _materialize("agnews").success
    lake = Lake(lake_dir)
    version = lake.manifest(RAW, "agnews")["version"]

    _write_shards(mirror, "agnews", [(pairs(new_rows), schema)])
    result = _materialize("agnews")
    guard = _check(result, "no_unexpected_shrink")
    assert result.success is published and guard.passed is published
    expected_rows = new_rows if published else 200
    assert lake.published_rows(RAW, "agnews") == expected_rows
    if not published:
        assert lake.manifest(RAW, "agnews")["version"] == version
        assert f"{new_rows} rows replace 200 published" in failures(result)


def test_the_shrink_knob_lets_an_empty_upstream_through(lake_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    schema = _flag_schema(pa.bool_(), pa.int64())
    _write_shards(mirror, "agnews", [(pairs(50), schema)])
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    assert _materialize("agnews").success
    _write_shards(mirror, "agnews", [([], schema)])
    monkeypatch.setenv("KD_PIPELINE_MAX_SHRINK", "1")
    result = _materialize("agnews")
    assert result.success, failures(result)
    assert Lake(lake_dir).published_rows(RAW, "agnews") == 0
    assert not _check(result, "not_empty").passed  # still said, as a warning


# ---- licence lineage (issue 12 item 6) ----------------------------------------------------
def test_card_licence_name_and_link_are_recorded(lake_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_shards(mirror, "agnews", [(pairs(5), _flag_schema(pa.bool_(), pa.int64()))])
    (lighton_repo(mirror) / "README.md").write_text(
        "---\nlicense: other\nlicense_name: fiqa-2018-non-commercial\n"
        "license_link: https://example.org/terms\n---\n# card\n"
    )
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = _materialize("agnews")
    assert result.success, failures(result)
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["card_license"].value == "other"
    assert meta["card_license_name"].value == "fiqa-2018-non-commercial"
    assert meta["card_license_link"].value == "https://example.org/terms"
    lineage = Lake(lake_dir).manifest(RAW, "agnews")["lineage"]
    assert lineage["card_license_name"] == "fiqa-2018-non-commercial"


def test_card_licence_reads_only_what_the_card_states() -> None:
    from kd_pipeline.families.cards import card_licence

    assert card_licence("---\nlicense: apache-2.0\n---\n") == {"license": "apache-2.0"}
    assert card_licence("---\nlicense: [mit, cc-by-4.0]\n---\n") == {"license": "mit, cc-by-4.0"}
    assert card_licence("# no header") == {}
    assert card_licence(None) == {}
