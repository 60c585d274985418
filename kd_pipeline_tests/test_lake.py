"""The lake: staging, atomic publication, litter removal, writer locks and the catalog."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd_pipeline.lake import (
    CATALOG_NAME,
    MANIFEST_NAME,
    Lake,
    LakeError,
    PartitionBusyError,
    StagedVersion,
    catalog_view_names,
    safe_name,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = ("fam", "asset")


# ---- helpers ------------------------------------------------------------------------------
def write_rows(folder: Path, ids: Sequence[int], name: str = "part-0.parquet") -> None:
    table = pa.table(
        {"id": pa.array(ids, pa.int64()), "label": pa.array([f"row-{i}" for i in ids])}
    )
    pq.write_table(table, folder / name)


def read_ids(glob: str) -> list[int]:
    with duckdb.connect() as con:
        rows = con.execute("SELECT id FROM read_parquet(?)", [glob]).fetchall()
    return sorted(row[0] for row in rows)


def publish_ids(
    lake: Lake, key: Sequence[str], partition: str | None, ids: Sequence[int]
) -> StagedVersion:
    with lake.stage(key, partition) as staged:
        write_rows(staged.path, ids)
        lake.publish(staged, {"rows": len(ids)})
    return staged


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder (links resolved) with the sha256 of its bytes."""
    folder = folder.resolve()
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def versions_of(lake: Lake, key: Sequence[str], partition: str | None) -> set[str]:
    folder = lake.root / ".versions" / Path(*key) / (partition or "_")
    return {p.name for p in folder.iterdir()}


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


# ---- publish ------------------------------------------------------------------------------
def test_publish_makes_the_version_readable_through_a_link_into_versions(lake_dir: Path):
    lake = Lake(lake_dir)
    assert not lake.is_published(KEY, "p1")

    staged = publish_ids(lake, KEY, "p1", [3, 1, 2])

    published = lake.published_path(KEY, "p1")
    assert published == lake.root / "fam" / "asset" / "p1"
    assert published.is_symlink()
    assert published.resolve() == lake.root / ".versions" / "fam" / "asset" / "p1" / staged.version
    assert lake.is_published(KEY, "p1")
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [1, 2, 3]
    # the partition-wide glob of a partitioned asset reads every partition
    publish_ids(lake, KEY, "p2", [10])
    assert read_ids(lake.parquet_glob(KEY)) == [1, 2, 3, 10]
    # nothing left behind: no staging folder, no temporary link next to the published one
    assert not staged.path.exists()
    assert sorted(p.name for p in published.parent.iterdir()) == ["p1", "p2"]


def test_unpartitioned_asset_is_a_link_at_the_key_path(lake_dir: Path):
    lake = Lake(lake_dir)
    staged = publish_ids(lake, ("fam", "table"), None, [7, 8])

    published = lake.published_path(("fam", "table"))
    assert published == lake.root / "fam" / "table"
    assert published.is_symlink()
    assert published.resolve().parent == lake.root / ".versions" / "fam" / "table" / "_"
    assert read_ids(lake.parquet_glob(("fam", "table"))) == [7, 8]
    assert lake.manifest(("fam", "table")) == {"version": staged.version, "rows": 2}


def test_manifest_written_by_publish_is_read_back(lake_dir: Path):
    lake = Lake(lake_dir)
    with lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [1, 2])
        lake.publish(staged, {"rows": 2, "lineage": {"revision": "abc123"}, "when": Path("x")})

    manifest = lake.manifest(KEY, "p1")
    assert manifest == {
        "version": staged.version,
        "rows": 2,
        "lineage": {"revision": "abc123"},
        "when": "x",  # non-JSON values are written as their str()
    }
    assert (lake.published_path(KEY, "p1") / MANIFEST_NAME).is_file()
    with pytest.raises(LakeError, match="nothing published"):
        lake.manifest(KEY, "never")


def test_republish_swaps_the_link_and_keeps_exactly_one_previous_generation(lake_dir: Path):
    lake = Lake(lake_dir)
    v1 = publish_ids(lake, KEY, "p1", [1])
    old_files = lake.published_path(KEY, "p1").resolve()  # a reader resolved the link

    v2 = publish_ids(lake, KEY, "p1", [2, 2])
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [2, 2]
    assert lake.manifest(KEY, "p1")["version"] == v2.version
    assert versions_of(lake, KEY, "p1") == {v1.version, v2.version}
    # the reader that resolved the link before the swap can still finish on the old files
    assert read_ids(str(old_files / "*.parquet")) == [1]

    v3 = publish_ids(lake, KEY, "p1", [3, 3, 3])
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [3, 3, 3]
    assert versions_of(lake, KEY, "p1") == {v2.version, v3.version}
    assert not old_files.exists()
    assert sorted(p.name for p in lake.published_path(KEY).iterdir()) == ["p1"]


def test_previous_version_is_kept_when_publishes_fall_in_the_same_second(lake_dir: Path):
    lake = Lake(lake_dir)
    previous = publish_ids(lake, KEY, "p1", [0])
    # Fast republishes (small partitions, retries): each must keep the one before it.
    for i in range(1, 30):
        current = publish_ids(lake, KEY, "p1", [i])
        assert versions_of(lake, KEY, "p1") == {previous.version, current.version}
        previous = current


def test_failure_inside_stage_leaves_the_published_version_untouched(lake_dir: Path):
    lake = Lake(lake_dir)
    v1 = publish_ids(lake, KEY, "p1", [1, 2, 3])
    before = snapshot(lake.published_path(KEY, "p1"))
    manifest_before = lake.manifest(KEY, "p1")

    with pytest.raises(RuntimeError, match="audit failed"), lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [99])
        assert staged.path.is_dir()
        raise RuntimeError("audit failed")

    assert not staged.path.exists()
    assert snapshot(lake.published_path(KEY, "p1")) == before
    assert lake.manifest(KEY, "p1") == manifest_before
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [1, 2, 3]
    assert versions_of(lake, KEY, "p1") == {v1.version}

    # leaving the block without publishing (no exception) discards the version as well
    with lake.stage(KEY, "p1") as unpublished:
        write_rows(unpublished.path, [98])
    assert not unpublished.path.exists()
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [1, 2, 3]


def test_litter_of_a_killed_run_is_never_read_and_is_removed_by_the_next_stage(
    lake_dir: Path,
):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1, 2])
    publish_ids(lake, KEY, "p2", [5])
    # a run killed mid-write in both partitions: half-written versions under .staging
    litter = {}
    for partition in ("p1", "p2"):
        folder = lake.root / ".staging" / "fam" / "asset" / partition / "20200101T000000Z-dead"
        folder.mkdir(parents=True)
        write_rows(folder, [666])
        litter[partition] = folder

    assert read_ids(lake.parquet_glob(KEY, "p1")) == [1, 2]
    assert read_ids(lake.parquet_glob(KEY)) == [1, 2, 5]
    with duckdb.connect(str(lake.rebuild_catalog()), read_only=True) as con:
        assert con.execute('SELECT list(id ORDER BY id) FROM fam."asset"').fetchone()[0] == [
            1,
            2,
            5,
        ]

    with lake.stage(KEY, "p1") as staged:
        assert not litter["p1"].exists()  # cleared as soon as the writer lock is held
        assert litter["p2"].exists()  # another partition's litter is not this writer's
        write_rows(staged.path, [3])
        lake.publish(staged, {"rows": 1})

    assert not litter["p1"].exists()
    assert litter["p2"].exists()
    assert read_ids(lake.parquet_glob(KEY)) == [3, 5]


def test_publish_refuses_to_replace_a_real_directory(lake_dir: Path):
    lake = Lake(lake_dir)
    squatter = lake.published_path(KEY, "p1")
    squatter.mkdir(parents=True)
    (squatter / "notes.txt").write_text("hand-made")

    with pytest.raises(LakeError, match="is not a lake link"), lake.stage(KEY, "p1") as staged:
        write_rows(staged.path, [1])
        lake.publish(staged, {"rows": 1})

    assert not squatter.is_symlink()
    assert sorted(p.name for p in squatter.iterdir()) == ["notes.txt"]
    assert (squatter / "notes.txt").read_text() == "hand-made"
    assert not lake.is_published(KEY, "p1")


# ---- names ---------------------------------------------------------------------------------
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
    assert not (lake.root / ".staging").exists()


@pytest.mark.parametrize("value", [None, 3, b"abc"])
def test_safe_name_rejects_non_strings(value: object):
    with pytest.raises(LakeError):
        safe_name(value, "asset key part")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["raw", "stackexchange_duplicate_questions", "a=b", "v1.2+x", "A-9", "x" * 200]
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
    assert read_ids(lake.parquet_glob(KEY, "p1")) == [2]


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
        assert read_ids(lake.parquet_glob(KEY, "p2")) == [2]

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=20) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    publish_ids(lake, KEY, "p1", [1])
    assert read_ids(lake.parquet_glob(KEY)) == [1, 2]


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
    assert read_ids(lake.parquet_glob(KEY)) == [0, 1]
    assert read_ids(lake.parquet_glob(("fam", "other"), "p1")) == [2]
    assert read_ids(lake.parquet_glob(("fam", "table"))) == [3]


def test_partitions_whose_names_contain_double_underscores_do_not_share_a_lock(
    lake_dir: Path,
):
    with Lake(lake_dir).stage(("fam", "a"), "b__c"), Lake(lake_dir).stage(("fam", "a__b"), "c"):
        pass


# ---- catalog ------------------------------------------------------------------------------
def test_catalog_has_one_view_per_asset_with_partition_column_for_partitioned_ones(
    lake_dir: Path,
):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1, 2])
    publish_ids(lake, KEY, "p2", [3, 4, 5])
    publish_ids(lake, ("fam", "table"), None, [7])
    publish_ids(lake, ("solo",), None, [8, 9])
    assert lake.published_assets() == {KEY: True, ("fam", "table"): False, ("solo",): False}

    catalog = lake.rebuild_catalog()
    assert catalog == lake.root / CATALOG_NAME
    with duckdb.connect(str(catalog), read_only=True) as con:
        per_partition = con.execute(
            "SELECT partition, list(id ORDER BY id) FROM fam.asset GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert per_partition == [("p1", [1, 2]), ("p2", [3, 4, 5])]
        assert [c[0] for c in con.execute("DESCRIBE fam.asset").fetchall()] == [
            "id",
            "label",
            "partition",
        ]
        assert con.execute("SELECT id, label FROM fam.table_").fetchall() == [(7, "row-7")]
        assert [c[0] for c in con.execute("DESCRIBE fam.table_").fetchall()] == ["id", "label"]
        assert sorted(r[0] for r in con.execute("SELECT id FROM solo.solo").fetchall()) == [8, 9]
    assert not list(lake.root.glob(f".{CATALOG_NAME}.*.tmp"))


def test_catalog_view_names_need_no_quoting(lake_dir: Path) -> None:
    """Plain SQL reaches every view: multi-part keys joined by `_`, an export by its key's
    last part (`exports/splade/splade_hofstaetter` -> `exports.splade_hofstaetter`), unsafe
    characters and reserved words made plain, two keys that would collide kept apart."""
    from kd_pipeline.exports.specs import load_export_specs

    lake = Lake(lake_dir)
    specs = load_export_specs()
    for number, spec in enumerate(specs):
        publish_ids(lake, tuple(spec.key.path), None, [100 + number])
    publish_ids(lake, ("text", "msmarco_passage", "collection"), None, [1])
    publish_ids(lake, ("lighton", "custom", "v-0a1b"), None, [3])
    publish_ids(lake, ("lighton", "custom_v_0a1b"), None, [4])
    publish_ids(lake, ("fam", "select"), None, [5])
    with duckdb.connect(str(lake.rebuild_catalog()), read_only=True) as con:
        for number, spec in enumerate(specs):
            view = f"exports.{spec.label}"
            assert con.execute(f"SELECT id FROM {view}").fetchall() == [(100 + number,)], view
        for view, expected in [
            ("exports.splade_hofstaetter", specs_id(specs, "exports/splade/splade_hofstaetter")),
            ("exports.pylate_kd_fiqa", specs_id(specs, "exports/pylate_kd/pylate_kd_fiqa")),
            ("text.msmarco_passage_collection", 1),
            ("lighton.custom_v_0a1b", 3),
            ("fam.select_", 5),
        ]:
            assert con.execute(f"SELECT id FROM {view}").fetchall() == [(expected,)], view
        export_views = con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'exports'"
        ).fetchall()
        views = con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'lighton'"
        ).fetchall()
    assert sorted(v[0] for v in export_views) == sorted(spec.label for spec in specs)
    names = sorted(v[0] for v in views)
    assert names[0] == "custom_v_0a1b" and names[1].startswith("custom_v_0a1b_")
    assert catalog_view_names([("2024", "a.b")]) == {("2024", "a.b"): ("_2024", "a_b")}


def specs_id(specs: Sequence, key: str) -> int:
    """The id published for the export spec whose key reads `key`."""
    (number,) = [n for n, s in enumerate(specs) if s.key.to_user_string() == key]
    return 100 + number


def test_catalog_follows_republished_partitions(lake_dir: Path):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1])
    lake.rebuild_catalog()
    publish_ids(lake, KEY, "p1", [4, 5])
    publish_ids(lake, KEY, "p2", [6])
    with duckdb.connect(str(lake.rebuild_catalog()), read_only=True) as con:
        rows = con.execute("SELECT partition, id FROM fam.asset ORDER BY id").fetchall()
    assert rows == [("p1", 4), ("p1", 5), ("p2", 6)]


READ_CATALOG = """
import sys
import duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
def views():
    return sorted(r[0] + "." + r[1] for r in con.execute(
        "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall())
print(views(), flush=True)
sys.stdin.readline()
print(views(), con.execute('SELECT count(*) FROM fam."asset"').fetchone()[0], flush=True)
"""


def test_a_reader_holding_the_old_catalog_does_not_block_a_rebuild(lake_dir: Path):
    lake = Lake(lake_dir)
    publish_ids(lake, KEY, "p1", [1, 2])
    catalog = lake.rebuild_catalog()

    # Someone browses the catalog (another process, as a person with the DuckDB CLI would).
    reader = python_child(READ_CATALOG, str(catalog))
    try:
        assert reader.stdout.readline().strip() == "['fam.asset']", reader.stderr.read()

        publish_ids(lake, ("fam", "table"), None, [7])
        done = threading.Event()
        threading.Thread(target=lambda: (lake.rebuild_catalog(), done.set())).start()
        assert done.wait(timeout=20), "rebuild_catalog blocked on an open reader"

        with duckdb.connect(str(catalog), read_only=True) as con:
            assert con.execute("SELECT id FROM fam.table_").fetchall() == [(7,)]

        # the reader keeps its consistent (old) catalog until it reconnects
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "['fam.asset'] 2"
        assert reader.wait(timeout=20) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


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
