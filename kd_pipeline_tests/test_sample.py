"""The sample mirror must look like the real LightOn repository and be reproducible."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import re
import zipfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS
from kd_pipeline.fetch import SAMPLE_LAYOUT_VERSION
from kd_pipeline.sample import DEFAULT_ROWS_PER_CONFIG, lighton_sample_dir, write_sample_mirror

EXPECTED_COLUMNS = ["query", "document", "similarity", "drop", "duplicate"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default-size sample shared by the read-only tests."""
    return write_sample_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="module")
def big_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger sample, where shares are measurable."""
    return write_sample_mirror(tmp_path_factory.mktemp("big"), rows_per_config=1000)


def _files(mirror: Path, config: str) -> list[Path]:
    return sorted((lighton_sample_dir(mirror) / config).glob("*.parquet"))


def _read(mirror: Path, config: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in _files(mirror, config)])


def _front_matter(mirror: Path) -> dict:
    text = (lighton_sample_dir(mirror) / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.DOTALL)
    assert match, "README.md has no YAML front matter"
    assert match.group(2).strip(), "card has no markdown body"
    return yaml.safe_load(match.group(1))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_returns_out_and_layout(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert write_sample_mirror(out, rows_per_config=5) == out
    root = lighton_sample_dir(out)
    assert root == out / "hf" / "datasets" / "lightonai" / "embeddings-pre-training"
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == sorted(LIGHTON_CONFIGS)
    assert len(dirs) == 73
    for config in LIGHTON_CONFIGS:
        names = [p.name for p in _files(out, config)]
        if config == "msmarco":
            assert names == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
        else:
            assert names == ["train-00000-of-00001.parquet"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temp files left"


def test_card_configs_block(mirror: Path) -> None:
    card = _front_matter(mirror)
    assert card["license"]
    assert {"en", "fr", "zh", "ru", "no"} <= set(card["language"])  # "no" must stay a string
    configs = card["configs"]
    assert [c["config_name"] for c in configs] == list(LIGHTON_CONFIGS)
    root = lighton_sample_dir(mirror)
    all_files = [str(p.relative_to(root)) for p in root.rglob("*.parquet")]
    for entry in configs:
        (data_file,) = entry["data_files"]
        assert data_file["split"] == "train"
        matched = fnmatch.filter(all_files, data_file["path"])
        assert matched, f"glob {data_file['path']} matches nothing"
        assert all(m.startswith(entry["config_name"] + "/") for m in matched)
    infos = {i["config_name"]: i for i in card["dataset_info"]}
    assert infos["msmarco"]["splits"][0]["num_examples"] == DEFAULT_ROWS_PER_CONFIG
    hf_dtypes = {"float64", "float32", "int64", "int32", "string", "bool"}
    for config in LIGHTON_CONFIGS:
        schema = pq.read_schema(_files(mirror, config)[0])
        features = {f["name"]: f["dtype"] for f in infos[config]["features"]}
        assert list(features) == schema.names
        assert set(features.values()) <= hf_dtypes
        width = "32" if schema.field("similarity").type == pa.float32() else "64"
        assert features["similarity"] == "float" + width


def test_byte_identical_and_argument_sensitive(tmp_path: Path) -> None:
    a = _tree(write_sample_mirror(tmp_path / "a", rows_per_config=30))
    b = _tree(write_sample_mirror(tmp_path / "b", rows_per_config=30))
    assert a.keys() == b.keys()
    assert a == b
    c = _tree(write_sample_mirror(tmp_path / "c", rows_per_config=31))
    # rows_per_config sizes LightOn only; the other families' sample files are fixed-size
    parquet = [k for k in a if k.endswith(".parquet") and k.startswith("hf/datasets/lightonai/")]
    assert parquet and all(a[k] != c[k] for k in parquet)


def test_rewrite_in_place_is_stable(tmp_path: Path) -> None:
    out = write_sample_mirror(tmp_path / "m", rows_per_config=7)
    first = _tree(out)
    write_sample_mirror(out, rows_per_config=7)
    assert _tree(out) == first


def test_row_counts_and_msmarco_shards(mirror: Path) -> None:
    for config in LIGHTON_CONFIGS:
        assert _read(mirror, config).num_rows == DEFAULT_ROWS_PER_CONFIG, config
    shard_rows = [pq.ParquetFile(p).metadata.num_rows for p in _files(mirror, "msmarco")]
    assert sum(shard_rows) == DEFAULT_ROWS_PER_CONFIG
    assert max(shard_rows) - min(shard_rows) <= 1


def test_row_counts_via_duckdb_glob(mirror: Path) -> None:
    root = lighton_sample_dir(mirror)
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM read_parquet('{root}/msmarco/train-*.parquet')")
    assert n.fetchone()[0] == DEFAULT_ROWS_PER_CONFIG
    total = con.execute(
        f"SELECT count(*) FROM read_parquet('{root}/*/train-*.parquet', union_by_name=true)"
    ).fetchone()[0]
    assert total == 73 * DEFAULT_ROWS_PER_CONFIG


def test_columns_and_dtypes(mirror: Path) -> None:
    widths = set()
    with_index = 0
    combos = set()
    for config in LIGHTON_CONFIGS:
        schemas = [pq.read_schema(p) for p in _files(mirror, config)]
        assert all(s == schemas[0] for s in schemas), config
        schema = schemas[0]
        names = schema.names
        has_index = names[0] == "index"
        if has_index:
            with_index += 1
            assert schema.field("index").type == pa.int64()
            assert names[1:] == EXPECTED_COLUMNS
        else:
            assert names == EXPECTED_COLUMNS, config
        assert schema.field("query").type == pa.string()
        assert schema.field("document").type == pa.string()
        assert schema.field("drop").type == pa.bool_()
        width = (schema.field("similarity").type, schema.field("duplicate").type)
        assert width in {(pa.float64(), pa.int64()), (pa.float32(), pa.int32())}, config
        widths.add(width)
        combos.add((width, has_index))
        assert b"huggingface" in (schema.metadata or {})
    assert len(widths) == 2
    assert len(combos) == 4, "every width/index combination should occur"
    assert 25 <= with_index <= 48
    narrow = sum(
        pq.read_schema(_files(mirror, c)[0]).field("similarity").type == pa.float32()
        for c in LIGHTON_CONFIGS
    )
    assert 14 <= narrow <= 24


def test_index_column_is_global_row_number(mirror: Path) -> None:
    for config in LIGHTON_CONFIGS:
        table = _read(mirror, config)
        if "index" in table.column_names:
            assert table["index"].to_pylist() == list(range(table.num_rows)), config


def test_texts_never_null_or_empty(mirror: Path) -> None:
    for config in LIGHTON_CONFIGS:
        table = _read(mirror, config)
        for column in ("query", "document", "similarity", "drop"):
            assert table[column].null_count == 0, (config, column)
        for column in ("query", "document"):
            assert all(s.strip() for s in table[column].to_pylist()), (config, column)
        queries = [len(q.split()) for q in table["query"].to_pylist()]
        if not config.startswith(("fw2-cmn", "fw2-jpn")):
            assert min(queries) >= 3 and max(queries) <= 12, config


def test_shares_in_band(big_mirror: Path) -> None:
    drop_shares = []
    dup_shares = []
    for config in LIGHTON_CONFIGS:
        table = _read(big_mirror, config)
        assert table.num_rows == 1000
        drop = sum(table["drop"].to_pylist()) / 1000
        dup = (1000 - table["duplicate"].null_count) / 1000
        assert 0.05 <= drop <= 0.78, (config, drop)
        assert 0.005 <= dup <= 0.2, (config, dup)
        drop_shares.append(drop)
        dup_shares.append(dup)
        if config == "fw-edu":
            assert 0.44 <= drop <= 0.56
    assert max(drop_shares) - min(drop_shares) > 0.3, "drop shares should vary across configs"
    assert max(dup_shares) - min(dup_shares) > 0.05


def test_duplicates_copy_an_earlier_row(big_mirror: Path) -> None:
    zero_seen = False
    for config in LIGHTON_CONFIGS:
        table = _read(big_mirror, config)
        queries = table["query"].to_pylist()
        documents = table["document"].to_pylist()
        dups = table["duplicate"].to_pylist()
        for i, target in enumerate(dups):
            if target is None:
                continue
            zero_seen |= target == 0
            assert 0 <= target < i, (config, i, target)
            assert dups[target] is None, "pointer should name the first occurrence"
            assert (queries[i], documents[i]) == (queries[target], documents[target])
        originals = [(q, d) for q, d, t in zip(queries, documents, dups, strict=True) if t is None]
        assert len(set(originals)) == len(originals), f"{config}: unflagged exact duplicate"
    assert zero_seen, "some duplicate must point at row 0"


def test_duplicate_zero_is_not_null_in_duckdb(mirror: Path) -> None:
    root = lighton_sample_dir(mirror)
    con = duckdb.connect()
    zeros = con.execute(
        f"SELECT count(*) FROM read_parquet('{root}/*/train-*.parquet', union_by_name=true) "
        "WHERE duplicate = 0"
    ).fetchone()[0]
    assert zeros > 0


def test_similarity_ties_range_and_rounding(mirror: Path) -> None:
    around_three = 0
    for config in LIGHTON_CONFIGS:
        sims = _read(mirror, config)["similarity"].to_pylist()
        assert min(sims) >= 0.0 and max(sims) <= 5.0
        assert all(abs(s * 100 - round(s * 100)) < 1e-3 for s in sims), "two decimals"
        assert len(set(sims)) < len(sims), f"{config}: no tied scores"
        around_three += min(sims) <= 3.0 <= max(sims)
    assert around_three >= 0.8 * len(LIGHTON_CONFIGS)
    means = []
    for config in ("agnews", "quora", "fw-edu", "msmarco"):
        sims = _read(mirror, config)["similarity"].to_pylist()
        means.append(sum(sims) / len(sims))
    assert len({round(m, 1) for m in means}) > 1, "distributions should differ across configs"


def test_scripts(mirror: Path) -> None:
    def text(config: str) -> str:
        table = _read(mirror, config)
        return " ".join(table["query"].to_pylist() + table["document"].to_pylist())

    assert re.search(r"[\u4e00-\u9fff]", text("fw2-cmn_Hani"))
    assert re.search(r"[\u0400-\u04ff]", text("fw2-rus_Cyrl"))
    assert re.search(r"[\u0370-\u03ff]", text("fw2-ell_Grek"))
    assert re.search(r"[\u0600-\u06ff]", text("fw2-arb_Arab"))
    jpn = text("fw2-jpn_Jpan")
    assert re.search(r"[\u3040-\u309f]", jpn) and re.search(r"[\u30a0-\u30ff]", jpn)
    assert re.search(r"[\u4e00-\u9fff]", jpn)
    flavours = {"fw2-deu_Latn": "äöüß", "fw2-pol_Latn": "ąęłż", "fw2-tur_Latn": "ğış"}
    for config, letters in flavours.items():
        assert set(letters) & set(text(config)), config
    assert re.fullmatch(r"[A-Za-z ?.]+", text("agnews"))


def test_zero_rows(tmp_path: Path) -> None:
    out = write_sample_mirror(tmp_path / "empty", rows_per_config=0)
    assert len(_front_matter(out)["configs"]) == 73
    for config in LIGHTON_CONFIGS:
        files = _files(out, config)
        assert len(files) == (3 if config == "msmarco" else 1)
        table = _read(out, config)
        assert table.num_rows == 0
        assert set(EXPECTED_COLUMNS) <= set(table.column_names)
    root = lighton_sample_dir(out)
    count = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{root}/*/train-*.parquet', union_by_name=true)"
    )
    assert count.fetchone()[0] == 0


def test_negative_rows_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows_per_config"):
        write_sample_mirror(tmp_path, rows_per_config=-1)


# What a 5-rows sample holds, per SAMPLE_LAYOUT_VERSION: a finished sample in a data home
# is reused as long as the version is the same (fetch.sample_mirror_path), so a change of
# the generated content must come with a new version. Recorded from the sample as generated
# at that version (the split of kd_pipeline.sample into a package kept it byte-identical).
# Content, not bytes: the Parquet writer's version stamp and zlib's output may change with
# the libraries, the sample's layout does not.
SAMPLE_FINGERPRINTS = {3: "38a8971f3b99bfd155a586df70c39417a03f56f3e51b606ad6f2d3c6cb8081df"}


def _content(path: Path) -> bytes:
    """What a sample file holds, independent of the library versions that wrote it."""
    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        table = parquet.read()
        shape = f"{table.schema.to_string(show_schema_metadata=True)}\n{parquet.num_row_groups}"
        return shape.encode() + repr(table.to_pylist()).encode()
    if path.name.endswith(".tar.gz"):
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return b"".join(
                info.filename.encode() + b"\0" + archive.read(info) for info in archive.infolist()
            )
    return path.read_bytes()


def test_the_generated_content_changes_only_with_the_layout_version(tmp_path: Path) -> None:
    out = write_sample_mirror(tmp_path / "m", rows_per_config=5)
    digest = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.relative_to(out).as_posix()
        digest.update(name.encode() + b"\0" + hashlib.sha256(_content(path)).digest())
    assert digest.hexdigest() == SAMPLE_FINGERPRINTS.get(SAMPLE_LAYOUT_VERSION), (
        "the sample's content changed: bump fetch.SAMPLE_LAYOUT_VERSION (a data home keeps "
        "the old sample under the old version) and record the new fingerprint here"
    )
