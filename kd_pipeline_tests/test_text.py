"""Text collections: archives unpacked safely, MS MARCO's mojibake repaired, BEIR's layout
read, and every table published through Dagster with blocking checks."""

from __future__ import annotations

import gzip
import io
import itertools
import stat
import tarfile
import zipfile
from pathlib import Path

import duckdb
import pytest

from kd_pipeline.families.text import (
    FIQA_CORPUS_KEY,
    FIQA_QRELS_TRAIN_KEY,
    FIQA_QUERIES_KEY,
    MOJIBAKE_RE2,
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    TEXT_JOB,
    TEXT_TABLES,
    read_msmarco_collection,
    repair_mojibake,
)
from kd_pipeline.families.upstream import (
    BEIR_FIQA_URL,
    MSMARCO_COLLECTION_URL,
    MSMARCO_QUERIES_URL,
    all_upstream_urls,
    declared_stand_in_md5s,
    url_key,
)
from kd_pipeline.fetch import file_md5, sample_mirror
from kd_pipeline.lake import Lake
from kd_pipeline.parsers import ArchiveError, unpacked
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
GENUINE_PHRASES = (
    (Path(__file__).parent / "data" / "genuine_multilingual.txt")
    .read_text(encoding="utf-8")
    .splitlines()
)
# typographic quotes, dashes, x, euro, trademark, registered, no-break spaces around them
FRAMES = ("{}", "„{}“", "“{}”", "«\u00a0{}\u00a0»", "‘{}’ – ok", "{} — 2×\u00a03 = 6 €…", "{}™ ®")
ISSUE_CASES = ("„Fuß“", "NESCAFÉ®", "2×\u00a03", "café…”")  # damaged by the old repair
GENUINE = [frame.format(p) for p in GENUINE_PHRASES for frame in FRAMES] + list(ISSUE_CASES)


def test_genuine_multilingual_text_is_never_changed() -> None:
    assert len(GENUINE) > 300
    changed = [(g, repair_mojibake(g)) for g in GENUINE if repair_mojibake(g) != g]
    assert changed == []


@pytest.mark.parametrize("codec", ["cp1252", "latin-1"])
def test_real_mojibake_of_the_same_texts_is_fixed(codec: str) -> None:
    damaged = [(g, _baked(g, codec)) for g in GENUINE]
    assert all(d != g for g, d in damaged)
    assert [g for g, d in damaged if repair_mojibake(d) != g] == []
    twice = [(g, _baked(_baked(g))) for g in GENUINE[:: len(FRAMES)]]  # damaged twice
    assert [g for g, d in twice if repair_mojibake(d) != g] == []


@pytest.mark.parametrize(
    ("damaged", "expected"),
    [
        (_baked("café"), "café"),
        (_baked("don’t — “quoted” €5"), "don’t — “quoted” €5"),
        (_baked("Ángel ¿qué?", "latin-1"), "Ángel ¿qué?"),  # C1 controls from latin-1
        (_baked(_baked("résumé")), "résumé"),  # damaged twice
        (_baked("東京 😀"), "東京 😀"),  # 3- and 4-byte sequences
        ("naïve café, 東京, Â alone, ü", "naïve café, 東京, Â alone, ü"),  # nothing to repair
        # genuine and damaged text in one passage: the damage repaired, the rest kept
        ("naïve " + _baked("café") + " Zürich", "naïve café Zürich"),
        ("Grüße aus " + _baked("Straße") + " – „gut“", "Grüße aus Straße – „gut“"),
        ("Ελλάδα " + _baked("€5") + " Zürich", "Ελλάδα €5 Zürich"),
    ],
)
def test_repair_mojibake(damaged: str, expected: str) -> None:
    assert repair_mojibake(damaged) == expected
    # DuckDB's pre-filter passes every text the repair changes (and may pass more)
    (matches,) = duckdb.execute("SELECT regexp_matches($1, $2)", [damaged, MOJIBAKE_RE2]).fetchone()
    assert matches or damaged == expected


def test_collection_counts_repairs_with_examples(tmp_path: Path) -> None:
    genuine = GENUINE[:40]
    damaged = [_baked(g) for g in GENUINE[40:45]]
    lines = [f"{i}\t{t}" for i, t in enumerate(genuine + damaged)]
    path = tmp_path / "collection.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    con = duckdb.connect()
    report = read_msmarco_collection(con, path, out, "collection.tsv")
    assert report.rows == 45
    assert report.extra["mojibake_repaired"] == 5
    assert len(report.extra["mojibake_examples"]) == 3
    texts = con.execute(f"SELECT text FROM read_parquet('{out}/*.parquet') ORDER BY doc_id::INT")
    assert [t for (t,) in texts.fetchall()] == genuine + GENUINE[40:45]


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


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _unpacked_bytes(archive: Path, wanted: str, scratch: Path) -> bytes:
    with unpacked(archive, [wanted], scratch) as members:
        return members[wanted].read_bytes()


QUERIES = b"".join(b"%d\tquery number %d\n" % (i, i) for i in range(300))


@pytest.mark.parametrize("cuts", [[0.5], [0.1, 0.2, 0.9], [0.999]])
def test_multi_member_gzip_archives_are_read_whole(tmp_path: Path, cuts: list[float]) -> None:
    """What pigz, `cat a.gz b.gz` and parallel exporters write: several gzip members."""
    raw = _tar_bytes({"queries.train.tsv": QUERIES, "queries.dev.tsv": QUERIES[:100]})
    bounds = [0, *(int(len(raw) * c) for c in cuts), len(raw)]
    archive = tmp_path / "queries.tar.gz"
    archive.write_bytes(b"".join(gzip.compress(raw[a:b]) for a, b in itertools.pairwise(bounds)))
    for member, data in (("queries.train.tsv", QUERIES), ("queries.dev.tsv", QUERIES[:100])):
        assert _unpacked_bytes(archive, member, tmp_path / "s") == data


@pytest.mark.parametrize("where", [-8, -5, -4, -1], ids=["crc", "crc-high", "size", "size-high"])
def test_gzip_trailer_is_checked_even_when_the_wanted_member_comes_first(
    tmp_path: Path, where: int
) -> None:
    raw = _tar_bytes({"queries.train.tsv": QUERIES, "other.tsv": b"x" * 50_000})
    data = bytearray(gzip.compress(raw))
    data[where] ^= 0x01
    archive = tmp_path / "queries.tar.gz"
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        _unpacked_bytes(archive, "queries.train.tsv", tmp_path / "s")


def test_no_single_byte_flip_changes_text_silently(tmp_path: Path) -> None:
    """Every byte of a small queries.tar.gz flipped in turn: the archive is refused, or
    (a flip in a header field such as the gzip mtime) the text read is unchanged."""
    good = gzip.compress(_tar_bytes({"queries.train.tsv": QUERIES[:600]}), mtime=0)
    silent = []
    for position in range(len(good)):
        data = bytearray(good)
        data[position] ^= 0x10
        archive = tmp_path / f"flip{position}.tar.gz"
        archive.write_bytes(bytes(data))
        try:
            text = _unpacked_bytes(archive, "queries.train.tsv", tmp_path / "s")
        except ArchiveError:
            continue
        if text != QUERIES[:600]:
            silent.append(position)
    assert silent == []


def test_zip_entries_with_permission_only_modes_are_files(tmp_path: Path) -> None:
    archive = tmp_path / "fiqa.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fiqa/corpus.jsonl", '{"_id": "1"}\n')  # external_attr 0o600 << 16
        plain = zipfile.ZipInfo("fiqa/queries.jsonl")
        plain.external_attr = 0o644 << 16  # permission bits, no type bits
        zf.writestr(plain, '{"_id": "q"}\n')
        regular = zipfile.ZipInfo("fiqa/qrels/train.tsv")
        regular.external_attr = (stat.S_IFREG | 0o644) << 16
        zf.writestr(regular, "query-id\tcorpus-id\tscore\n")
    assert _unpacked_bytes(archive, "fiqa/corpus.jsonl", tmp_path / "s") == b'{"_id": "1"}\n'
    assert _unpacked_bytes(archive, "fiqa/queries.jsonl", tmp_path / "s") == b'{"_id": "q"}\n'
    assert _unpacked_bytes(archive, "fiqa/qrels/train.tsv", tmp_path / "s").startswith(b"query")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_zip_device_and_fifo_entries_are_refused(tmp_path: Path, kind: int) -> None:
    archive = tmp_path / "fiqa.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        special = zipfile.ZipInfo("fiqa/corpus.jsonl")
        special.external_attr = (kind | 0o644) << 16
        zf.writestr(special, "")
    with pytest.raises(ArchiveError, match="is a link or special file"):
        _unpack(archive, ["fiqa/corpus.jsonl"], tmp_path / "scratch")


def test_zip_crc_of_every_entry_is_checked(tmp_path: Path) -> None:
    archive = tmp_path / "fiqa.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("fiqa/corpus.jsonl", '{"_id": "1"}\n')
        zf.writestr("fiqa/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    data = bytearray(archive.read_bytes())
    at = data.index(b"q1\td1")
    data[at] ^= 0x01  # a byte of another entry than the one wanted
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"'fiqa/qrels/test\.tsv' fails its CRC check"):
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
    with Lake(lake_dir).connect(read_only=True) as catalog:
        (count,) = catalog.execute(
            "SELECT count(*) FROM text.msmarco_passage_collection"
        ).fetchone()
    assert count == 240


def test_multi_member_gzip_and_writestr_zip_archives_load_every_row(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 items 3-4 through the assets: queries.tar.gz rewritten as three gzip members
    and fiqa.zip rewritten with `zipfile.writestr` (permission bits only, no file type) load
    with the same row counts as the originals."""
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    keys = [MSMARCO_QUERIES_TRAIN_KEY, FIQA_CORPUS_KEY, FIQA_QUERIES_KEY, FIQA_QRELS_TRAIN_KEY]
    queries = url_path(mirror, MSMARCO_QUERIES_URL)
    raw = gzip.decompress(queries.read_bytes())
    thirds = [raw[: len(raw) // 3], raw[len(raw) // 3 : len(raw) // 2], raw[len(raw) // 2 :]]
    queries.write_bytes(b"".join(gzip.compress(part) for part in thirds))
    zipped = url_path(mirror, BEIR_FIQA_URL)
    with zipfile.ZipFile(zipped) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    assert {i.external_attr >> 16 for i in zipfile.ZipFile(zipped).infolist()} == {0o600}
    redeclare(mirror)
    result = run_job(TEXT_JOB, selection=keys)
    assert result.success, failures(result)
    assert len(rows(lake_dir, MSMARCO_QUERIES_TRAIN_KEY)) == 60
    assert len(rows(lake_dir, FIQA_CORPUS_KEY, query="title")) == 150
    expected_queries = entries["fiqa/queries.jsonl"].count(b"\n")
    assert materialized(result, FIQA_QUERIES_KEY)["dagster/row_count"] == expected_queries
    expected_qrels = entries["fiqa/qrels/train.tsv"].count(b"\n") - 1  # the header
    assert materialized(result, FIQA_QRELS_TRAIN_KEY)["dagster/row_count"] == expected_qrels


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
