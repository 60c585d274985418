"""Text collections: archives unpacked safely, MS MARCO's mojibake repaired, BEIR's layout
read, and every table published through Dagster with blocking checks."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import duckdb
import pytest

from kd_pipeline.families.text import (
    FIQA_CORPUS_KEY,
    FIQA_QRELS_TRAIN_KEY,
    MOJIBAKE_RE2,
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    TEXT_JOB,
    TEXT_TABLES,
    repair_mojibake,
)
from kd_pipeline.families.upstream import (
    MSMARCO_COLLECTION_URL,
    MSMARCO_QUERIES_URL,
    all_upstream_urls,
    declared_stand_in_md5s,
    url_key,
)
from kd_pipeline.fetch import file_md5
from kd_pipeline.lake import Lake
from kd_pipeline.parsers import ArchiveError, unpacked
from kd_pipeline.resources import sample_mirror
from kd_pipeline_tests.family_runs import (
    checks,
    materialized,
    redeclare,
    rows,
    run_job,
    stand_in_mirror,
    url_path,
)
from kd_pipeline_tests.helpers import failures


def _baked(text: str, codec: str = "cp1252") -> str:
    """text after its UTF-8 bytes were read as codec (undefined cp1252 bytes as latin-1)."""
    return "".join(bytes([b]).decode(codec, "ignore") or chr(b) for b in text.encode())


# ---- the sample mirror ----------------------------------------------------------------------
def test_sample_holds_every_upstream_file_with_declared_md5s() -> None:
    mirror = sample_mirror()
    declared = declared_stand_in_md5s(mirror)
    assert sorted(declared) == sorted(url_key(u) for u in all_upstream_urls())
    for url in all_upstream_urls():
        path = url_path(mirror, url)
        assert path.is_file() and path.stat().st_size < 200_000, url
        assert declared[url_key(url)] == file_md5(path), url
    with tarfile.open(url_path(mirror, MSMARCO_QUERIES_URL)) as tar:
        assert tar.getnames() == ["queries.train.tsv", "queries.dev.tsv", "queries.eval.tsv"]
        assert {m.mtime for m in tar.getmembers()} == {1_546_300_800}  # fixed: reproducible
    zipped = next((mirror / "url").rglob("fiqa.zip"))
    with zipfile.ZipFile(zipped) as zf:
        assert [n for n in zf.namelist() if not n.endswith("/")] == [
            "fiqa/corpus.jsonl",
            "fiqa/queries.jsonl",
            "fiqa/qrels/train.tsv",
            "fiqa/qrels/dev.tsv",
            "fiqa/qrels/test.tsv",
        ]
        assert zf.read("fiqa/qrels/train.tsv").startswith(b"query-id\tcorpus-id\tscore\n")


# ---- mojibake ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("damaged", "expected"),
    [
        (_baked("café"), "café"),
        (_baked("don’t — “quoted” €5"), "don’t — “quoted” €5"),
        (_baked("Ángel ¿qué?", "latin-1"), "Ángel ¿qué?"),  # C1 controls from latin-1
        (_baked(_baked("résumé")), "résumé"),  # damaged twice
        (_baked("東京 😀"), "東京 😀"),  # 3- and 4-byte sequences
        ("naïve " + _baked("café") + " Zürich", "naïve café Zürich"),  # genuine text kept
        ("naïve café, 東京, Â alone, ü", "naïve café, 東京, Â alone, ü"),  # nothing to repair
    ],
)
def test_repair_mojibake(damaged: str, expected: str) -> None:
    assert repair_mojibake(damaged) == expected
    # DuckDB's pre-filter selects exactly the texts the repair changes
    (matches,) = duckdb.execute("SELECT regexp_matches($1, $2)", [damaged, MOJIBAKE_RE2]).fetchone()
    assert matches == (damaged != expected)


# ---- archives --------------------------------------------------------------------------------
def _unpack(archive: Path, wanted: list[str], scratch: Path) -> None:
    with unpacked(archive, wanted, scratch):
        pass


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info


@pytest.mark.parametrize(
    "bad",
    [
        _info("../escape.tsv"),
        _info("/abs/collection.tsv"),
        _info("a/../../collection.tsv"),
        _info("link.tsv", tarfile.SYMTYPE),
        _info("hard.tsv", tarfile.LNKTYPE),
        _info("fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "hardlink", "fifo"],
)
def test_tar_members_that_could_escape_refuse_the_archive(tmp_path: Path, bad) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [bad, _info("collection.tsv")])
    with pytest.raises(ArchiveError, match=r"a\.tar\.gz: member .*(escape|link|special)"):
        _unpack(archive, ["collection.tsv"], tmp_path / "scratch")
    assert not list((tmp_path / "scratch").iterdir())  # nothing left behind


@pytest.mark.parametrize("name", ["../x.tsv", "/x.tsv", "C:/x.tsv", "a\\..\\x.tsv"])
def test_zip_members_that_could_escape_refuse_the_archive(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(name, "x")
        zf.writestr("fiqa/corpus.jsonl", "{}")
    with pytest.raises(ArchiveError, match="would escape"):
        _unpack(archive, ["fiqa/corpus.jsonl"], tmp_path / "scratch")


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("fiqa/corpus.jsonl")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="is a link"):
        _unpack(archive, ["fiqa/corpus.jsonl"], tmp_path / "scratch")


def test_members_are_found_nested_and_missing_ones_named(tmp_path: Path) -> None:
    root = _info("./", tarfile.DIRTYPE)  # what `tar czf a.tgz .` puts first
    archive = _tar(tmp_path / "a.tar.gz", [root, _info("./top/collection.tsv", size=3)])
    with unpacked(archive, ["collection.tsv"], tmp_path / "s") as members:
        assert members["collection.tsv"].read_bytes() == b"xxx"
    with pytest.raises(ArchiveError, match=r"'queries.train.tsv' is missing.*top/collection.tsv"):
        _unpack(archive, ["queries.train.tsv"], tmp_path / "s")


@pytest.mark.parametrize("name", ["collection.tar.gz", "fiqa.zip"])
def test_truncated_archives_are_a_clear_error(tmp_path: Path, name: str) -> None:
    source = url_path(stand_in_mirror(tmp_path / "m"), MSMARCO_COLLECTION_URL)
    if name == "fiqa.zip":
        source = next((tmp_path / "m" / "url").rglob("fiqa.zip"))
    archive = tmp_path / name
    archive.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    wanted = "collection.tsv" if name.endswith("gz") else "fiqa/corpus.jsonl"
    with pytest.raises(ArchiveError, match=f"{name}: truncated or corrupt"):
        _unpack(archive, [wanted], tmp_path / "scratch")


# ---- the assets, through Dagster ---------------------------------------------------------------
def test_text_job_publishes_every_table_on_the_sample(lake_dir: Path) -> None:
    result = run_job(TEXT_JOB)
    assert result.success, failures(result)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    lake = Lake(lake_dir)
    for table in TEXT_TABLES:
        glob = lake.parquet_glob(table.key.path)
        schema = duckdb.execute("DESCRIBE SELECT * FROM read_parquet($g)", {"g": glob}).fetchall()
        assert {name: dtype for name, dtype, *_ in schema} == table.columns, table.key

    passages = dict(rows(lake_dir, MSMARCO_COLLECTION_KEY))
    assert len(passages) == 240
    assert "The café’s crème brûlée costs €5 — “worth it”." in passages["7"]
    assert passages["42"].endswith("Ángel said: ¿qué pasa?")
    assert passages["150"].endswith("Double-damaged naïve résumé.")
    assert passages["3"].endswith("A naïve café in Zürich.")  # genuine text untouched
    assert passages["11"].endswith('He said "fine" \\ ok.')  # no quoting, no escapes
    assert not any("Ã" in p or "â€" in p for p in passages.values())
    meta = materialized(result, MSMARCO_COLLECTION_KEY)
    assert meta["mojibake_repaired"] == 3 and meta["checksum_source"].startswith("stand-in")
    assert meta["member"] == "collection.tsv" and meta["malformed_lines"] == 0

    assert len(rows(lake_dir, MSMARCO_QUERIES_TRAIN_KEY)) == 60  # train only, not dev/eval
    qrels = rows(lake_dir, FIQA_QRELS_TRAIN_KEY)
    assert qrels and all(r[2] == 1 for r in qrels)  # the BEIR header line is not a row
    assert materialized(result, FIQA_QRELS_TRAIN_KEY)["header_skipped"] is True
    corpus = rows(lake_dir, FIQA_CORPUS_KEY, query="title")
    assert len(corpus) == 150 and {t for (t,) in corpus} == {""}
    catalog = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
    (count,) = catalog.execute("SELECT count(*) FROM text.msmarco_passage_collection").fetchone()
    assert count == 240


def test_bad_lines_and_truncated_archives_keep_the_published_version(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    keys = [MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY]
    assert run_job(TEXT_JOB, selection=keys).success
    lake = Lake(lake_dir)
    good = {k: lake.manifest(k.path)["version"] for k in keys}

    # a queries file with a line of three fields: blocked, reported as archive:member:line
    queries = url_path(mirror, MSMARCO_QUERIES_URL)
    with tarfile.open(queries) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    lines = members["queries.train.tsv"].decode().splitlines(keepends=True)
    lines[4] = lines[4].rstrip("\n") + "\textra field\n"
    members["queries.train.tsv"] = "".join(lines).encode()
    with tarfile.open(queries, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    # and a collection archive cut in half
    collection = url_path(mirror, MSMARCO_COLLECTION_URL)
    collection.write_bytes(collection.read_bytes()[: collection.stat().st_size // 2])
    redeclare(mirror)

    result = run_job(TEXT_JOB, selection=keys)
    assert not result.success
    message = failures(result)
    assert "collection.tar.gz: truncated or corrupt archive" in message
    assert "queries.tar.gz:queries.train.tsv:5: Expected Number of Columns: 2 Found: 3" in message
    failed = checks(result)[(MSMARCO_QUERIES_TRAIN_KEY.to_user_string(), "no_malformed_lines")]
    assert not failed.passed and failed.metadata["violations"].value == 1
    assert {k: lake.manifest(k.path)["version"] for k in keys} == good
