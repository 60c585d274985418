"""The lake on DuckLake: staging, the short retried commit, snapshots and time travel,
retention, writer locks, plain SQL names, and one clear line for a bad catalog or data path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd_pipeline.ducklake import CatalogUnreachable
from kd_pipeline.lake import (
    MANIFEST_NAME,
    Lake,
    LakeError,
    PartitionBusyError,
    Publication,
    catalog_view_names,
    safe_name,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = ("fam", "asset")


# ---- helpers ------------------------------------------------------------------------------
def write_rows(folder: Path, ids: Sequence[int], name: str = "part-00000.parquet") -> None:
    table = pa.table(
        {"id": pa.array(ids, pa.int64()), "label": pa.array([f"row-{i}" for i in ids])}
    )
    pq.write_table(table, folder / name)


def publish_ids(
    lake: Lake, key: Sequence[str], partition: str | None, ids: Sequence[int]
) -> Publication:
    with lake.stage(key, partition) as staged:
        write_rows(staged.path, ids)
        return lake.publish(staged, {"rows": len(ids)})


def table_ids(
    lake: Lake, key: Sequence[str], partition: str | None = None, at: int | None = None
) -> list[int]:
    """The ids of the table (one partition, or all) through DuckLake, at a snapshot."""
    schema, table = lake.table_name(key)
    version = f" AT (VERSION => {at})" if at is not None else ""
    where = " WHERE partition = $p" if partition is not None else ""
    with lake.connect(read_only=True) as con:
        rows = con.execute(
            f"SELECT id FROM {schema}.{table}{version}{where}",
            {"p": partition} if partition is not None else {},
        ).fetchall()
    return sorted(row[0] for row in rows)


def read_ids(glob: str | list[str]) -> list[int]:
    with duckdb.connect() as con:
        rows = con.execute("SELECT id FROM read_parquet(?)", [glob]).fetchall()
    return sorted(row[0] for row in rows)


def python_child(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# ---- publish --------------------------------------------------------------------------------
def test_publish_makes_a_partition_of_a_table_with_a_partition_column(lake_dir: Path):
    lake = Lake(lake_dir)
    first = publish_ids(lake, KEY, "p1", [1, 2, 3])
    second = publish_ids(lake, KEY, "p2", [10])
    assert second.snapshot > first.snapshot
    assert table_ids(lake, KEY, "p1") == [1, 2, 3]
    assert table_ids(lake, KEY) == [1, 2, 3, 10]
    with lake.connect(read_only=True) as con:
        assert con.execute("SELECT DISTINCT partition FROM fam.asset ORDER BY 1").fetchall() == [
            ("p1",),
            ("p2",),
        ]
        # the files are where the layout says, and the registry names them
        (location,) = con.execute(
            "SELECT location FROM publications WHERE asset = 'fam/asset' AND partition = 'p1'"
        ).fetchone()
    assert location == f"data/fam/asset/partition=p1/{first.version}"
    assert lake.published_path(KEY, "p1") == lake_dir / location == first.location
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [1, 2, 3]
    assert lake.published_rows(KEY, "p1") == 3 and lake.published_partitions(KEY) == ["p1", "p2"]
    # the catalog lives beside the data of a folder lake, the data under data/
    assert (lake_dir / "catalog.sqlite").is_file()


def test_unpartitioned_asset_is_a_table_without_partition_column(lake_dir: Path):
    lake = Lake(lake_dir)
    publish_ids(lake, ("fam", "table"), None, [7, 8])
    publish_ids(lake, ("fam", "table"), None, [9])
    assert table_ids(lake, ("fam", "table")) == [9]
    with lake.connect(read_only=True) as con:
        columns = [row[0] for row in con.execute("DESCRIBE fam.table_").fetchall()]
    assert columns == ["id", "label"]  # `table` is reserved: the table is fam.table_


def test_manifest_is_recorded_with_the_version_and_read_back(lake_dir: Path):
    lake = Lake(lake_dir)
    with lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [1])
        lake.publish(staged, {"rows": 1, "lineage": {"revision": "abc"}})
    manifest = lake.manifest(KEY, "p1")
    assert manifest["version"] == staged.version
    assert manifest["lineage"] == {"revision": "abc"} and manifest["rows"] == 1
    with pytest.raises(LakeError, match="nothing published for fam/asset \\[p9\\]"):
        lake.manifest(KEY, "p9")


def test_a_republish_is_one_snapshot_and_the_old_version_stays_readable_by_time_travel(
    lake_dir: Path,
):
    lake = Lake(lake_dir)
    old = publish_ids(lake, KEY, "p1", [1, 2])
    publish_ids(lake, KEY, "p2", [5])
    new = publish_ids(lake, KEY, "p1", [3, 3, 3])
    assert table_ids(lake, KEY, "p1") == [3, 3, 3]
    assert table_ids(lake, KEY, "p1", at=old.snapshot) == [1, 2]
    assert table_ids(lake, KEY, "p2") == [5]  # the other partition is untouched
    assert Path(old.location).is_dir() and Path(new.location).is_dir()
    with lake.connect(read_only=True) as con:
        message = con.execute(
            "SELECT commit_message, commit_extra_info FROM snapshots() WHERE snapshot_id = $s",
            {"s": new.snapshot},
        ).fetchone()
    assert message[0] == "publish fam/asset [p1]" and new.version in message[1]


def test_a_pinned_lake_reads_every_input_at_the_snapshot_it_started_at(lake_dir: Path):
    """What a step reads (its lake is pinned when it starts) stays what was published then,
    whatever lands during the run: a replaced partition, a new one, another table."""
    lake = Lake(lake_dir)
    first = publish_ids(lake, KEY, "p1", [1, 2])
    texts = publish_ids(lake, ("fam", "texts"), None, [7])
    step = lake.pinned()
    assert step.read_snapshot == texts.snapshot
    publish_ids(lake, KEY, "p1", [3])  # publishes landing while the step runs
    publish_ids(lake, KEY, "p2", [4])
    publish_ids(lake, ("fam", "texts"), None, [8, 9])
    assert read_ids(step.parquet_glob(KEY, "p1")) == [1, 2]
    assert read_ids(step.parquet_glob(KEY)) == [1, 2] and step.published_partitions(KEY) == ["p1"]
    assert step.manifest(KEY, "p1")["version"] == first.version
    assert step.published_rows(("fam", "texts")) == 1 and not step.is_published(KEY, "p2")
    assert read_ids(step.parquet_glob(("fam", "texts"))) == [7]
    # the same reads through DuckLake's time travel agree: the pin is that snapshot
    assert table_ids(lake, KEY, at=step.read_snapshot) == [1, 2]
    # the lake itself reads what is current now
    assert read_ids(lake.parquet_glob(KEY)) == [3, 4] and lake.read_snapshot is None
    assert read_ids(lake.parquet_glob(("fam", "texts"))) == [8, 9]


def test_publishing_through_a_pinned_lake_is_seen_by_the_next_pin(lake_dir: Path):
    """A step publishes through its pinned lake (the table created by the first publish is
    not in the pin: it is created then); a later step's pin sees what it published."""
    step = Lake(lake_dir).pinned()
    assert step.read_snapshot is not None and not step.is_published(KEY, "p1")
    published = publish_ids(step, KEY, "p1", [5, 6])
    later = Lake(lake_dir).pinned()
    assert later.read_snapshot == published.snapshot
    assert read_ids(later.parquet_glob(KEY, "p1")) == [5, 6]
    again = publish_ids(later, KEY, "p1", [7])  # the table is in this pin: no create
    assert table_ids(Lake(lake_dir), KEY) == [7] and again.snapshot > published.snapshot


def test_a_superseded_version_stays_readable_for_the_retention_then_goes(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", str(1 / 86400))  # one second
    lake = Lake(lake_dir)
    old = publish_ids(lake, KEY, "p1", [1, 2])
    time.sleep(1.5)  # old's snapshot is older than the window, but current until now
    middle = publish_ids(lake, KEY, "p1", [3])
    assert table_ids(lake, KEY, "p1") == [3]
    assert table_ids(lake, KEY, "p1", at=old.snapshot) == [1, 2]  # superseded 0 s ago
    assert list(Path(old.location).glob("*.parquet"))
    time.sleep(1.5)  # now superseded for longer than the retention
    publish_ids(lake, KEY, "p1", [4])
    assert not list(Path(old.location).glob("*.parquet"))  # expired, its files deleted
    with pytest.raises(duckdb.Error):
        table_ids(lake, KEY, "p1", at=old.snapshot)
    assert table_ids(lake, KEY, "p1", at=middle.snapshot) == [3]  # replaced 0 s ago: kept


def test_a_lake_given_its_retention_keeps_to_it_whatever_the_variable_says(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The lake resource's retention_days (fixed when the code location loads) is the
    lake's own: a variable changed since does not move it."""
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", "7")
    lake = Lake(lake_dir, retention_days=1 / 86400)  # one second
    old = publish_ids(lake, KEY, "p1", [1, 2])
    time.sleep(1.5)
    publish_ids(lake, KEY, "p1", [3])
    time.sleep(1.5)
    publish_ids(lake, KEY, "p1", [4])
    assert not list(Path(old.location).glob("*.parquet"))  # expired after one second
    kept = Lake(lake_dir)  # none given: the variable, 7 days, read when used
    assert kept.retention_days == 7.0
    superseded = publish_ids(kept, KEY, "p1", [5])
    time.sleep(1.5)
    publish_ids(kept, KEY, "p1", [6])
    time.sleep(1.5)
    publish_ids(kept, KEY, "p1", [7])  # one second would have expired [5] now
    assert table_ids(kept, KEY, "p1", at=superseded.snapshot) == [5]  # kept for the week
    assert list(Path(superseded.location).glob("*.parquet"))


def test_failure_inside_stage_leaves_the_published_version_untouched(lake_dir: Path):
    lake = Lake(lake_dir)
    before = publish_ids(lake, KEY, "p1", [1, 2, 3])
    with pytest.raises(RuntimeError, match="audit failed"), lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [9, 9])
        raise RuntimeError("audit failed")
    assert not staged.path.exists()  # the unpublished version's folder is removed
    assert table_ids(lake, KEY, "p1") == [1, 2, 3]
    assert lake.manifest(KEY, "p1")["version"] == before.version


def test_a_killed_writers_files_are_never_read_and_old_litter_is_deleted(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1, 2, 3])
    # what a SIGKILLed writer leaves: a version folder nobody registered
    litter = lake_dir / "data" / "fam" / "asset" / "partition=p1" / "20260101T000000Z-dead"
    litter.mkdir()
    write_rows(litter, [666])
    assert table_ids(lake, KEY) == [1, 2, 3]
    lake.delete_orphaned_files()  # young litter may be a running writer's: kept
    assert (litter / "part-00000.parquet").is_file()
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", str(1 / 86400))
    time.sleep(1.5)
    lake.delete_orphaned_files()
    assert not (litter / "part-00000.parquet").exists()
    assert table_ids(lake, KEY) == [1, 2, 3]


def test_the_file_of_a_current_empty_version_outlives_the_orphan_cleanup(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """DuckLake registers no file for 0 rows, so it counts an empty version's file as an
    orphan; readers of that version need it (its schema), so the cleanup keeps it."""
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", str(1 / 86400))
    lake = Lake(lake_dir)
    empty = publish_ids(lake, KEY, "p1", [])
    time.sleep(1.5)
    lake.delete_orphaned_files()
    assert read_ids(lake.parquet_glob(KEY, "p1")) == []  # the glob still finds its file
    assert (Path(empty.location) / "part-00000.parquet").is_file()


def test_new_columns_widen_the_table_and_a_changed_type_is_refused(lake_dir: Path):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1])
    with lake.stage(KEY, "p2") as staged:
        pq.write_table(
            pa.table({"id": [2], "label": ["x"], "score": [0.5]}), staged.path / "p.parquet"
        )
        lake.publish(staged, {"rows": 1})
    with lake.connect(read_only=True) as con:
        rows = con.execute("SELECT partition, id, score FROM fam.asset ORDER BY id").fetchall()
    assert rows == [("p1", 1, None), ("p2", 2, 0.5)]
    with lake.stage(KEY, "p1") as staged:
        pq.write_table(pa.table({"id": ["not a number"]}), staged.path / "p.parquet")
        with pytest.raises(LakeError, match="column id is VARCHAR in the new version"):
            lake.publish(staged, {"rows": 1})
    assert table_ids(lake, KEY, "p1") == [1]  # nothing committed


CONCURRENT_WRITER = """
import sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from kd_pipeline.lake import Lake
lake = Lake(Path(sys.argv[1]))
partition = sys.argv[2]
for round in range(5):
    with lake.stage(("fam", "asset"), partition) as staged:
        ids = list(range(int(partition[1:]) * 100, int(partition[1:]) * 100 + round + 1))
        pq.write_table(pa.table({"id": ids}), staged.path / "part-00000.parquet")
        lake.publish(staged, {"rows": len(ids)})
"""


def test_writers_of_different_partitions_of_one_table_all_commit(lake_dir: Path):
    """DuckLake conflicts per table: four processes replacing their own partition five
    times each collide; the retried short commit lands every one, nothing lost."""
    writers = [python_child(CONCURRENT_WRITER, str(lake_dir), f"p{i}") for i in range(1, 5)]
    for writer in writers:
        assert writer.wait(timeout=240) == 0, writer.stderr.read()
    lake = Lake(lake_dir)
    for i in range(1, 5):
        assert table_ids(lake, KEY, f"p{i}") == list(range(i * 100, i * 100 + 5))
    with lake.connect(read_only=True) as con:
        (commits,) = con.execute(
            "SELECT count(*) FROM snapshots() WHERE commit_message LIKE 'publish fam/asset%'"
        ).fetchone()
    assert commits == 20


READER = """
import sys, time
from pathlib import Path
from kd_pipeline.lake import Lake
lake = Lake(Path(sys.argv[1]))
seen = set()
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    with lake.connect(read_only=True) as con:
        seen.add(con.execute("SELECT count(*), sum(id) FROM fam.asset").fetchone())
print(sorted(seen))
"""


def test_a_reader_sees_only_committed_snapshots_while_a_writer_publishes(lake_dir: Path):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1] * 1000)
    reader = python_child(READER, str(lake_dir), "6")
    allowed = {(1000, 1000)}
    for n in range(2, 8):
        publish_ids(lake, KEY, "p1", [n] * 1000)
        allowed.add((1000, 1000 * n))
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    seen = set(eval(out))
    assert seen and seen <= allowed


def test_a_catalog_that_cannot_be_opened_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KD_PIPELINE_CATALOG", f"sqlite:{blocker}/catalog.sqlite")
    with (
        pytest.raises(CatalogUnreachable, match=r"^KD_PIPELINE_CATALOG: cannot open"),
        Lake(tmp_path / "lake").connect(),
    ):
        pass
    monkeypatch.setenv(
        "KD_PIPELINE_CATALOG", "postgres:dbname=kd host=127.0.0.1 port=1 connect_timeout=2"
    )
    with (
        pytest.raises(CatalogUnreachable, match=r"postgres:dbname=kd host=127\.0\.0\.1 port=1"),
        Lake(tmp_path / "lake").connect(),
    ):
        pass


def test_a_catalog_keeps_its_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KD_PIPELINE_CATALOG", f"sqlite:{tmp_path / 'shared.sqlite'}")
    publish_ids(Lake(tmp_path / "a"), KEY, "p1", [1])
    with (
        pytest.raises(CatalogUnreachable, match=r"^KD_PIPELINE_LAKE: the catalog"),
        Lake(tmp_path / "b").connect(),
    ):
        pass


def test_exports_stay_files_in_version_folders_with_a_view_over_the_current_ones(
    lake_dir: Path,
):
    lake = Lake(lake_dir)
    key = ("exports", "pointwise", "pointwise_x")
    first = publish_ids(lake, key, "p1", [1, 2])
    publish_ids(lake, key, "p2", [3])
    assert first.location == lake_dir / "exports/pointwise/pointwise_x/p1" / first.version
    assert (Path(first.location) / MANIFEST_NAME).is_file()
    with lake.connect(read_only=True) as con:
        assert con.execute(
            "SELECT partition, id FROM exports.pointwise_x ORDER BY id"
        ).fetchall() == [("p1", 1), ("p1", 2), ("p2", 3)]
        tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'exports'"
        ).fetchone()
    assert tables == (0,)  # a view over the files, not a table
    current = lake_dir / "exports/pointwise/pointwise_x/p1/current"
    assert current.resolve() == first.location
    second = publish_ids(lake, key, "p1", [9])
    assert Path(first.location).is_dir()  # kept for the retention period
    assert lake.published_path(key, "p1") == second.location
    assert current.resolve() == second.location  # the one path a trainer loads
    assert read_ids(str(current / "*.parquet")) == [9]
    with lake.connect(read_only=True) as con:
        assert con.execute("SELECT id FROM exports.pointwise_x ORDER BY id").fetchall() == [
            (3,),
            (9,),
        ]


def test_table_names_need_no_quoting(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    keys = [("text", "msmarco-passage", "collection"), ("select", "from"), ("9lives",)]
    for key in keys:
        publish_ids(lake, key, None, [1])
    names = catalog_view_names(keys)
    assert names[("text", "msmarco-passage", "collection")] == (
        "text",
        "msmarco_passage_collection",
    )
    with lake.connect(read_only=True) as con:
        for schema, table in names.values():
            assert con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone() == (1,)


# ---- names ----------------------------------------------------------------------------------
UNSAFE_NAMES = [
    "",
    ".",
    "..",
    "a/b",
    "../x",
    "x/..",
    "/etc",
    "/",
    ".hidden",
    "a\x00b",
    "a..b",
    "-dash-first",
    "a b",
    "a\\b",
    "x" * 201,
    "abc\n",
    "a=b",  # a folder name DuckLake reads as a partition value
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_safe_name_rejects_names_that_are_not_one_plain_path_component(name: str):
    with pytest.raises(LakeError, match="not a safe name"):
        safe_name(name, "partition key")


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_published_path_rejects_unsafe_key_parts_and_partitions(lake_dir: Path, name: str):
    lake = Lake(lake_dir)
    with pytest.raises(LakeError):
        lake.published_path(("fam", name))
    with pytest.raises(LakeError):
        lake.published_path(KEY, name)
    with pytest.raises(LakeError), lake.stage(KEY, name):
        pass
    assert not (lake_dir / "data" / "fam").exists()


@pytest.mark.parametrize("value", [None, 3, b"abc"])
def test_safe_name_rejects_non_strings(value: object):
    with pytest.raises(LakeError):
        safe_name(value, "asset key part")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["raw", "stackexchange_duplicate_questions", "v1.2+x", "A-9", "x" * 200]
)
def test_safe_name_accepts_plain_components(name: str):
    assert safe_name(name, "partition key") == name


def test_empty_asset_key_is_rejected(lake_dir: Path):
    with pytest.raises(LakeError, match="at least one part"):
        Lake(lake_dir).published_path(())


# ---- writer locks -------------------------------------------------------------------------
def test_second_writer_of_a_partition_in_another_thread_is_refused(lake_dir: Path):
    lake = Lake(lake_dir)
    errors: list[BaseException] = []

    def second_writer() -> None:
        try:
            with Lake(lake_dir).stage(KEY, "p1"):
                pass
        except BaseException as exc:
            errors.append(exc)

    with lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [1])
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], PartitionBusyError)
        assert "fam/asset/p1" in str(errors[0])
        assert staged.path.is_dir()  # the refused writer did not clear the holder's folder
        lake.publish(staged, {"rows": 1})

    # the lock is released with the block: the next writer proceeds
    publish_ids(Lake(lake_dir), KEY, "p1", [2])
    assert read_ids(Lake(lake_dir).parquet_glob(KEY, "p1")) == [2]


def test_second_writer_in_the_same_thread_is_refused_too(lake_dir: Path):
    with (
        Lake(lake_dir).stage(KEY, "p1"),
        pytest.raises(PartitionBusyError, match="fam/asset/p1"),
        Lake(lake_dir).stage(KEY, "p1"),
    ):
        pass
    # an unpartitioned asset's lock is named by its key
    with (
        Lake(lake_dir).stage(("fam", "table")),
        pytest.raises(PartitionBusyError, match="fam/table"),
        Lake(lake_dir).stage(("fam", "table")),
    ):
        pass


HOLD_LOCK = """
import sys
from pathlib import Path
from kd_pipeline.lake import Lake
with Lake(Path(sys.argv[1])).stage(("fam", "asset"), sys.argv[2]) as staged:
    print(staged.path, flush=True)
    sys.stdin.readline()
"""


def test_writer_in_another_process_blocks_the_partition_until_it_finishes(lake_dir: Path):
    lake = Lake(lake_dir)
    holder = python_child(HOLD_LOCK, str(lake_dir), "p1")
    try:
        holder_path = Path(holder.stdout.readline().strip())
        assert holder_path.is_dir(), holder.stderr.read()

        with pytest.raises(PartitionBusyError, match="fam/asset/p1"), lake.stage(KEY, "p1"):
            pass
        assert holder_path.is_dir()
        # another partition of the same asset is not blocked
        publish_ids(lake, KEY, "p2", [2])
        assert read_ids(Lake(lake_dir).parquet_glob(KEY, "p2")) == [2]

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=20) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    publish_ids(lake, KEY, "p1", [1])
    assert read_ids(Lake(lake_dir).parquet_glob(KEY)) == [1, 2]


def test_different_partitions_and_assets_do_not_block_each_other(lake_dir: Path):
    with (
        Lake(lake_dir).stage(KEY, "p1") as a,
        Lake(lake_dir).stage(KEY, "p2") as b,
        Lake(lake_dir).stage(("fam", "other"), "p1") as c,
        Lake(lake_dir).stage(("fam", "table")) as d,
    ):
        lake = Lake(lake_dir)
        for i, staged in enumerate((a, b, c, d)):
            write_rows(staged.path, [i])
            lake.publish(staged, {"rows": 1})
    lake = Lake(lake_dir)
    assert read_ids(Lake(lake_dir).parquet_glob(KEY)) == [0, 1]
    assert read_ids(Lake(lake_dir).parquet_glob(("fam", "other"), "p1")) == [2]
    assert read_ids(Lake(lake_dir).parquet_glob(("fam", "table"))) == [3]


def test_partitions_whose_names_contain_double_underscores_do_not_share_a_lock(
    lake_dir: Path,
):
    with Lake(lake_dir).stage(("fam", "a"), "b__c"), Lake(lake_dir).stage(("fam", "a__b"), "c"):
        pass


# ---- engine -----
def test_zstd_level_is_a_knob_and_a_bad_one_is_refused(tmp_path: Path, monkeypatch) -> None:
    from kd_pipeline.engine import copy_parquet

    con = duckdb.connect()
    texts = (
        "SELECT 'doc ' || (i % 977) || ' ' || repeat(md5((i % 131)::VARCHAR), 4) AS t "
        "FROM range(50000) r(i)"
    )
    sizes = {}
    for level in ("1", "19"):
        monkeypatch.setenv("KD_PIPELINE_ZSTD_LEVEL", level)
        out = tmp_path / level
        out.mkdir()
        assert copy_parquet(con, texts, out) == 50_000
        sizes[level] = sum(p.stat().st_size for p in out.glob("*.parquet"))
        codecs = con.execute(
            "SELECT DISTINCT compression FROM parquet_metadata($g)", {"g": str(out / "*.parquet")}
        ).fetchall()
        assert codecs == [("ZSTD",)]
    assert sizes["19"] < sizes["1"]
    monkeypatch.setenv("KD_PIPELINE_ZSTD_LEVEL", "fast")
    with pytest.raises(ValueError, match="KD_PIPELINE_ZSTD_LEVEL='fast'"):
        copy_parquet(con, texts, tmp_path / "bad")


def test_a_writer_waiting_for_the_catalog_goes_before_readers_that_came_after_it(
    lake_dir: Path,
):
    """The catalog turns of this machine: a write waits for the read in flight, and a read
    that asks after the write queued waits for the write (readers never starve a writer);
    the reads in flight share."""
    lake = Lake(lake_dir)
    order: list[str] = []
    reading = threading.Event()

    def take(name: str, exclusive: bool, hold: float) -> None:
        with lake._catalog_turn(exclusive=exclusive):
            order.append(name)
            if name == "first read":
                reading.set()
            time.sleep(hold)

    first = threading.Thread(target=take, args=("first read", False, 0.5))
    first.start()
    reading.wait(5)
    writer = threading.Thread(target=take, args=("write", True, 0.2))
    writer.start()
    time.sleep(0.1)  # the write is queued behind the first read
    late = threading.Thread(target=take, args=("late read", False, 0.0))
    late.start()
    for thread in (first, writer, late):
        thread.join(10)
    assert order == ["first read", "write", "late read"]


def test_an_exports_old_versions_go_at_its_next_publish_whatever_else_published_before(
    lake_dir: Path,
):
    """The snapshot expiry after a publish is spaced out (a quarter of the retention here), but
    an export's publish always removes its own versions replaced longer than the retention
    ago: a table published just before (which took the expiry's turn) does not keep them."""
    lake = Lake(lake_dir, retention_days=4 / 86400)  # 4 s: expiry at most every second
    key = ("exports", "pointwise", "pointwise_old")
    first = publish_ids(lake, key, "p1", [1])
    second = publish_ids(lake, key, "p1", [2])
    time.sleep(4.5)  # `second` replaced `first` longer than the retention ago
    publish_ids(lake, KEY, "p1", [7])  # a table: the spaced-out snapshot expiry runs here
    third = publish_ids(lake, key, "p1", [3])
    assert not Path(first.location).exists()
    assert Path(second.location).is_dir()  # replaced just now: kept for the retention
    assert read_ids(str(Path(third.location) / "*.parquet")) == [3]


def test_the_daily_maintenance_expires_every_exports_old_versions(lake_dir: Path):
    """`expire_export_versions()` without a key (the `lake_maintenance` job) goes through
    every export of the registry; tables are left to the snapshot expiry."""
    lake = Lake(lake_dir, retention_days=1 / 86400)
    olds = []
    for name in ("pointwise_a", "pointwise_b"):
        key = ("exports", "pointwise", name)
        olds.append(publish_ids(lake, key, "p1", [1]))
        publish_ids(lake, key, "p1", [2])
    table = publish_ids(lake, KEY, "p1", [5])
    time.sleep(1.5)
    assert all(Path(old.location).is_dir() for old in olds)
    lake.expire_export_versions()
    assert not any(Path(old.location).exists() for old in olds)
    assert Path(table.location).is_dir()


def test_the_expiry_after_a_publish_is_spaced_out_for_the_whole_machine(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The snapshot expiry a publish makes is due once per interval on the machine, not per
    process: the daemon runs each run in a process of its own, each publishing. Due for the
    first publish; not for another process within the interval; due again once it passed,
    or once a failed expiry gave its turn back; another lake has its own turn, also two
    object-store lakes sharing this machine's work folder."""
    from kd_pipeline.lake import EXPIRY_INTERVAL_SECONDS, _expiry_due, _expiry_failed

    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", "7")  # the interval: 10 minutes
    lake = Lake(lake_dir)
    ask = "import sys; from kd_pipeline.lake import Lake, _expiry_due; "
    ask += "print(_expiry_due(Lake(sys.argv[1])))"

    def due_in_another_process() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", ask, str(lake_dir)], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() == "True"

    assert _expiry_due(lake)
    assert not _expiry_due(lake)
    assert not due_in_another_process()
    (stamp,) = (lake_dir / ".locks").glob("expiry-*.stamp")
    past = time.time() - EXPIRY_INTERVAL_SECONDS - 1
    os.utime(stamp, (past, past))
    assert due_in_another_process()
    assert not _expiry_due(lake)
    _expiry_failed(lake)
    assert _expiry_due(lake)
    assert _expiry_due(Lake(lake_dir.parent / "another-lake"))
    monkeypatch.setenv("KD_PIPELINE_HOME", str(lake_dir.parent / "home"))
    first, second = Lake("s3://bucket/lake-a"), Lake("s3://bucket/lake-b")
    assert first.work_dir == second.work_dir
    assert _expiry_due(first) and _expiry_due(second)
    assert not _expiry_due(first) and not _expiry_due(second)
    # where `.locks/` cannot be made (here: a file in its way), the turn is per process
    unwritable = Lake(lake_dir.parent / "a-third-lake")
    unwritable.work_dir = lake_dir.parent / "a-file"
    unwritable.work_dir.write_text("")
    assert _expiry_due(unwritable)
    assert not _expiry_due(unwritable)


def test_a_pinned_manifest_is_the_one_recorded_at_the_pin(lake_dir: Path):
    """A pinned lake's manifest is the whole record of the version current at the pin (its
    lineage too), even after a newer version replaced it."""
    lake = Lake(lake_dir)
    with lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [1])
        lake.publish(staged, {"rows": 1, "lineage": {"upstream": "first"}})
    step = lake.pinned()
    with lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [2, 3])
        lake.publish(staged, {"rows": 2, "lineage": {"upstream": "second"}})
    assert step.manifest(KEY, "p1")["lineage"] == {"upstream": "first"}
    assert lake.manifest(KEY, "p1")["lineage"] == {"upstream": "second"}
    # what the step read vs the version its publish replaces (the shrink guard's baseline)
    assert step.published_rows(KEY, "p1") == 1 and step.published_rows(KEY, "p1", live=True) == 2
    with pytest.raises(LakeError, match="nothing published for fam/asset \\[p9\\]"):
        step.manifest(KEY, "p9")


def test_version_ids_sort_in_publish_order_within_one_second(lake_dir: Path):
    """Name order is publish order (what the expiry of export folders walks), also for
    versions published within the same second."""
    lake = Lake(lake_dir)
    key = ("exports", "pointwise", "pointwise_fast")
    versions = [publish_ids(lake, key, "p1", [n]).version for n in range(12)]
    assert versions == sorted(versions) and len(set(versions)) == 12
    assert len({v[:15] for v in versions}) < 12  # several shared a second
