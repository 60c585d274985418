"""Exports end to end on the sample, through Dagster: every family's exports publish with
their checks passing, load in the consumers' own readers (light-splade, `datasets`), are
reproducible, carry their lineage; an invalid export is refused and never replaces the
published one; a pointwise source asked for SPLADE is refused by rule 5, saying why."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import dagster as dg
import datasets  # a test dependency: the consumer of the Parquet and JSONL exports
import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from kd_pipeline.checks.candidates import increasing_in_file_order, one_split_per_query
from kd_pipeline.checks.rules import Table
from kd_pipeline.checks.splade import resolve_layout, validate_folder
from kd_pipeline.cli import main
from kd_pipeline.definitions import defs
from kd_pipeline.engine import copy_parquet, default_duckdb_resource
from kd_pipeline.exports import factory
from kd_pipeline.exports.card import licence_header, licences_for, write_card
from kd_pipeline.exports.compression import gzip_file
from kd_pipeline.exports.format import SpecError
from kd_pipeline.exports.lightning_ir import dataset_from_file_name
from kd_pipeline.exports.sources import known_sources
from kd_pipeline.exports.specs import load_export_specs, parse_spec
from kd_pipeline.families.fiqa import MINED_KEY
from kd_pipeline.families.upstream import RUN_VARIANTS
from kd_pipeline.lake import Lake
from kd_pipeline.resources import LakeResource
from kd_pipeline_tests.family_runs import checks
from kd_pipeline_tests.helpers import failures
from kd_pipeline_tests.sample_exports import EXPORT_RUNS, LIGHTON_CONFIG, BuiltExports
from kd_pipeline_tests.splade_folders import light_splade_data

RANKZEPHYR = "rankzephyr.bm25_10000.sampled100"


@dataclass
class SampleExports:
    lake: Path
    results: dict[tuple[str, str | None], dg.ExecuteInProcessResult] = field(default_factory=dict)
    first_hashes: dict[str, str] = field(default_factory=dict)

    def path(self, key: str, partition: str | None = None) -> Path:
        return Lake(self.lake).published_path(key.split("/"), partition)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under a published folder (the manifest, which carries the
    version and run id, left out)."""
    root = root.resolve()
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "_manifest.json"
    }


def run(job: str, partition: str | None, instance: dg.DagsterInstance):
    return defs.resolve_job_def(job).execute_in_process(
        partition_key=partition, instance=instance, raise_on_error=False
    )


@pytest.fixture(scope="module")
def sample(sample_exports: BuiltExports) -> SampleExports:
    """The session's sample exports (conftest `sample_exports`: every family, then every
    export job), with hofstaetter/bert's export job run once more to show a second build
    is byte-identical."""
    out = SampleExports(sample_exports.lake, dict(sample_exports.results))
    for key in (
        "exports/splade/splade_hofstaetter",
        "exports/splade_triplets/splade_triplets_hofstaetter",
    ):
        out.first_hashes[key] = json.dumps(tree_hashes(out.path(key, "bert")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_PIPELINE_LAKE", str(sample_exports.lake))
        again = run("exports_hofstaetter_teacher_scores", "bert", dg.DagsterInstance.ephemeral())
    assert again.success, failures(again)
    return out


def test_every_export_publishes_with_every_check_passing(sample: SampleExports) -> None:
    specs = load_export_specs()
    for (job, partition), result in sample.results.items():
        assert result.success, (job, partition, failures(result))
        evaluations = result.get_asset_check_evaluations()
        assert evaluations and all(e.passed for e in evaluations), [
            (e.asset_key.to_user_string(), e.check_name) for e in evaluations if not e.passed
        ]
        for spec in specs:
            if factory.export_job_name(spec) == job:
                assert Lake(sample.lake).is_published(spec.key.path, partition), spec.key


def test_a_second_build_is_byte_identical(sample: SampleExports) -> None:
    for key, first in sample.first_hashes.items():
        assert json.dumps(tree_hashes(sample.path(key, "bert"))) == first, key


# ---- SPLADE -------------------------------------------------------------------------------
SPLADE_FOLDERS = [
    ("exports/splade/splade_hofstaetter", "bert"),
    ("exports/splade/splade_hofstaetter", "ensemble"),
    *(("exports/splade/splade_rank_distillm", v) for v in RUN_VARIANTS),
    ("exports/splade/splade_fiqa", None),
]


@pytest.mark.parametrize(("key", "partition"), SPLADE_FOLDERS)
def test_splade_exports_pass_validate_splade(
    sample: SampleExports, key: str, partition: str | None
) -> None:
    assert main(["validate-splade", str(sample.path(key, partition))]) == 0


@pytest.mark.parametrize(("key", "partition"), SPLADE_FOLDERS)
def test_splade_exports_load_in_light_splade(
    sample: SampleExports, key: str, partition: str | None
) -> None:
    data = light_splade_data()
    root = sample.path(key, partition)
    layout = resolve_layout(root)
    for split, files in layout.splits.items():
        dataset = data.TripletDistilDataset(
            files["queries"][0],
            files["documents"][0],
            files["positives"][0],
            layout.scores[0],
            is_validation_set=split == "validation",
        )
        assert len(dataset) > 0
        if split == "train":
            query, pos, neg, pos_score, neg_score = dataset[0]
            assert query and pos and neg and pos != neg
            assert isinstance(pos_score, float) and isinstance(neg_score, float)


def test_splade_rows_are_exactly_the_consumer_keys_with_integer_ids(sample: SampleExports) -> None:
    root = sample.path("exports/splade/splade_hofstaetter", "bert")
    first = json.loads((root / "train" / "query_master.ndjson").read_text().splitlines()[0])
    assert set(first) == {"qid", "text"} and type(first["qid"]) is int
    positives = json.loads((root / "train" / "positive_lists.ndjson").read_text().splitlines()[0])
    assert set(positives) == {"qid", "positive_doc_ids"}
    assert all(type(d) is int for d in positives["positive_doc_ids"])
    with gzip.open(root / "hard-negatives-cross-encoder-scores.ndjson.gz", "rt") as handle:
        row = json.loads(handle.readline())
    assert set(row) == {"qid", "scores"} and all(k.isdigit() for k in row["scores"])
    assert list(row["scores"].values()) == sorted(row["scores"].values(), reverse=True)


def test_splade_validation_split_is_seeded_and_disjoint(sample: SampleExports) -> None:
    root = sample.path("exports/splade/splade_hofstaetter", "bert")
    qids = {
        split: {json.loads(line)["qid"] for line in (root / split / "query_master.ndjson").open()}
        for split in ("train", "validation")
    }
    assert qids["train"] and qids["validation"] and not qids["train"] & qids["validation"]
    assert len(qids["train"] | qids["validation"]) == 60  # every sample train query
    manifest = Lake(sample.lake).manifest(["exports", "splade", "splade_hofstaetter"], "bert")
    assert manifest["written"]["split_queries"] == {
        "train": len(qids["train"]),
        "validation": len(qids["validation"]),
    }


def test_splade_id_map_leads_back_to_upstream_ids(sample: SampleExports) -> None:
    root = sample.path("exports/splade/splade_fiqa")
    id_map = duckdb.execute(
        "SELECT kind, id, upstream_id FROM read_parquet($g)", {"g": str(root / "*.parquet")}
    ).fetchall()
    assert {k for k, _, _ in id_map} == {"query", "document"}
    assert all(str(i) == u for _, i, u in id_map)  # FiQA ids are integers: kept as they are
    manifest = Lake(sample.lake).manifest(["exports", "splade", "splade_fiqa"])
    assert manifest["written"]["query_ids"] == "upstream"
    # the source's card licence, as fiqa/mined_scores recorded it, and the texts' terms
    (mined,) = manifest["lineage"]["upstream"]["fiqa/mined_scores"]
    recorded = Lake(sample.lake).manifest(["fiqa", "mined_scores"])["lineage"]
    assert mined["card_license"] == recorded["card_license"] == "cc-by-nc-4.0"
    assert mined["revision"] == recorded["revision"]
    assert manifest["lineage"]["licence"] == {
        "license": "other",
        "license_name": "terms-of-every-source",
        "license_link": "README.md#licence",
    }


def test_rankzephyr_positives_are_the_teachers_top_passage(sample: SampleExports) -> None:
    root = sample.path("exports/splade/splade_rank_distillm", RANKZEPHYR)
    positives = {
        row["qid"]: row["positive_doc_ids"]
        for row in map(json.loads, (root / "train" / "positive_lists.ndjson").open())
    }
    with gzip.open(root / "hard-negatives-cross-encoder-scores.ndjson.gz", "rt") as handle:
        scores = {row["qid"]: row["scores"] for row in map(json.loads, handle)}
    assert len(positives) == 20
    for qid, docs in positives.items():
        best = max(scores[qid], key=scores[qid].get)
        assert docs == [int(best)]


def test_selection_counts_what_was_dropped(sample: SampleExports) -> None:
    result = sample.results[("exports_hofstaetter_teacher_scores", "bert")]
    key = dg.AssetKey(["exports", "splade", "splade_hofstaetter"])
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["selection"]["pairs_without_text"] == 2  # the sample's missing passages
    assert meta["rule_violations"] == dict.fromkeys(meta["rule_violations"], 0)
    assert set(meta["rule_violations"]) >= {"queries_have_negative", "rows_well_formed"}
    run = Lake(sample.lake).manifest(
        ["exports", "splade", "splade_rank_distillm"], "msmarco.bm25.annotated"
    )
    assert run["selection"]["positives_without_teacher_score"] > 0  # unretrieved positives
    assert run["selection"]["queries_without_positive"] > 0


# ---- Parquet formats in `datasets` ---------------------------------------------------------
def load_parquet(folder: Path, pattern: str = "*.parquet"):
    return datasets.load_dataset(
        "parquet", data_files=str(folder.resolve() / pattern), split="train"
    )


def test_margin_mse_single_rows_hold_the_teacher_margin(sample: SampleExports) -> None:
    rows = load_parquet(sample.path("exports/margin_mse/margin_mse_hofstaetter", "bert"))
    assert rows.column_names == ["query", "positive", "negative", "score"]
    assert rows.features["score"].dtype == "float64" and len(rows) > 0
    con = duckdb.connect()
    teacher = sample.path("hofstaetter/teacher_scores", "bert")
    queries = sample.path("text/msmarco_passage/queries_train")
    passages = sample.path("text/msmarco_passage/collection")
    expected = con.execute(
        "WITH pairs AS (SELECT query_id, doc_id, avg(s) AS s FROM (SELECT query_id, pos_id "
        "AS doc_id, pos_score AS s FROM read_parquet($t) UNION ALL SELECT query_id, neg_id, "
        "neg_score FROM read_parquet($t)) GROUP BY ALL), "
        "texts AS (SELECT p.query_id, q.text AS query, d.text AS doc, p.s FROM pairs p "
        "JOIN read_parquet($q) q USING (query_id) JOIN read_parquet($d) d USING (doc_id)) "
        "SELECT a.query, a.doc, b.doc, a.s - b.s FROM texts a JOIN texts b USING (query_id) "
        "JOIN (SELECT DISTINCT query_id, pos_id, neg_id FROM read_parquet($t)) t "
        "ON t.query_id = a.query_id",
        {
            "t": str(teacher / "*.parquet"),
            "q": str(queries / "*.parquet"),
            "d": str(passages / "*.parquet"),
        },
    ).fetchall()
    margins = {(q, p, n): m for q, p, n, m in expected}
    for row in rows.select(range(min(len(rows), 50))):
        key = (row["query"], row["positive"], row["negative"])
        assert row["score"] == pytest.approx(margins[key])


def test_margin_mse_multi_negative_form(sample: SampleExports) -> None:
    rows = load_parquet(sample.path("exports/margin_mse/margin_mse_fiqa"))
    assert rows.column_names == [
        "query",
        "positive",
        "negative_1",
        "negative_2",
        "negative_3",
        "negative_4",
        "score",
    ]
    assert len(rows) == 40 and all(len(s) == 4 for s in rows["score"])
    assert all(s == sorted(s) for s in rows["score"])  # hardest negative: smallest margin


def test_pylate_tables_load_and_resolve(sample: SampleExports) -> None:
    root = sample.path("exports/pylate_kd/pylate_kd_fiqa")
    train = load_parquet(root, "train-*.parquet")
    queries = load_parquet(root / "queries")
    documents = load_parquet(root / "documents")
    assert train.column_names == ["query_id", "document_ids", "scores"]
    assert str(train.features["scores"].feature.dtype) == "float32"
    assert isinstance(train[0]["query_id"], str) and len(train[0]["document_ids"]) == 16
    assert set(queries.column_names) == {"query_id", "text"}
    assert set(documents.column_names) == {"document_id", "text"}
    known = set(documents["document_id"])
    assert all(set(ids) <= known for ids in train["document_ids"])
    capped = load_parquet(
        sample.path("exports/pylate_kd/pylate_kd_rank_distillm", "msmarco.bm25.annotated"),
        "train-*.parquet",
    )
    assert max(len(ids) for ids in capped["document_ids"]) <= 32


@pytest.mark.parametrize("mode", ["hofstaetter", "hofstaetter_pos"])
def test_splade_triplets_both_sampling_modes(sample: SampleExports, mode: str) -> None:
    """One row per query (or per query and positive) of each split, in that split only
    (issue 11: the triplets used to hold the 7 validation queries in their training rows)."""
    folder = sample.path(f"exports/splade_triplets/splade_triplets_{mode}", "bert")
    splits = datasets.load_dataset(str(folder.resolve()))
    assert sorted(splits) == ["train", "validation"]
    splade = sample.path("exports/splade/splade_hofstaetter", "bert")
    for split, rows in splits.items():
        assert rows.column_names == [
            "query_text",
            "pos_text",
            "neg_text",
            "pos_score",
            "neg_score",
        ]
        queries = sum(1 for _ in (splade / split / "query_master.ndjson").open())
        pairs = sum(
            len(json.loads(line)["positive_doc_ids"])
            for line in (splade / split / "positive_lists.ndjson").open()
        )
        assert len(rows) == (queries if mode == "hofstaetter" else pairs), split
        assert all(p != n for p, n in zip(rows["pos_text"], rows["neg_text"], strict=True))
    assert len(splits["train"]) + len(splits["validation"]) >= 60  # every sample query


def test_pointwise_lighton_pairs(sample: SampleExports) -> None:
    rows = load_parquet(
        sample.path("exports/pointwise/pointwise_lighton_recommended", LIGHTON_CONFIG)
    )
    assert rows.column_names == ["query", "document", "score"]
    ((pairs, source_rows),) = duckdb.execute(
        "SELECT count(DISTINCT (query_id, doc_id)), count(*) FROM read_parquet($g)",
        {"g": str(sample.path("lighton/recommended", LIGHTON_CONFIG) / "*.parquet")},
    ).fetchall()
    assert len(rows) == pairs
    # an unordered source: a repeated pair is one row, and every merged repeat is counted
    manifest = Lake(sample.lake).manifest(
        ["exports", "pointwise", "pointwise_lighton_recommended"], LIGHTON_CONFIG
    )
    assert manifest["selection"]["source_rows"] == source_rows
    assert manifest["selection"]["repeats_merged"] == source_rows - pairs


def test_tevatron_jsonl_loads_with_a_score_on_every_passage(sample: SampleExports) -> None:
    root = sample.path("exports/tevatron/tevatron_fiqa")
    rows = datasets.load_dataset(
        "json", data_files=str(root.resolve() / "train.jsonl"), split="train"
    )
    assert set(rows.column_names) == {"query_id", "query", "positive_passages", "negative_passages"}
    first = rows[0]
    assert len(first["positive_passages"]) == 1 and len(first["negative_passages"]) >= 14
    for passage in first["positive_passages"] + first["negative_passages"]:
        assert set(passage) == {"docid", "title", "text", "score"} and passage["text"]


def test_lightning_ir_file_names_name_the_collection(sample: SampleExports) -> None:
    root = sample.path("exports/lightning_ir/lightning_ir_hofstaetter", "bert")
    names = sorted(p.name for p in root.iterdir() if p.is_file() and p.name.startswith("__"))
    assert names == [
        "__hofstaetter-bert__msmarco-passage-train.parquet",
        "__hofstaetter-bert__msmarco-passage-train.run",
    ]
    validation = sorted(p.name for p in (root / "validation").iterdir())
    assert validation == names  # the same names: lightning-ir reads the collection from them
    assert dataset_from_file_name(names[0]) == "msmarco-passage-train"
    zephyr = sample.path("exports/lightning_ir/lightning_ir_rank_distillm", RANKZEPHYR)
    (run_file,) = zephyr.glob("*.parquet")
    assert run_file.name == (
        "__rank-distillm-rankzephyr-bm25-10000-sampled100__msmarco-passage-train.parquet"
    )
    assert dataset_from_file_name(run_file.name) == "msmarco-passage-train"
    assert run_file.suffixes[0] == ".parquet"
    fiqa = next(sample.path("exports/lightning_ir/lightning_ir_fiqa").glob("*.parquet"))
    assert dataset_from_file_name(fiqa.name) == "beir-fiqa-train"
    rows = load_parquet(root, names[0])
    assert rows.column_names == ["query_id", "doc_id", "rank", "score"]
    trec = (root / names[1]).read_text().splitlines()
    fields = trec[0].split()
    assert len(fields) == 6 and fields[1] == "Q0" and fields[3] == "1"


# ---- refusals ------------------------------------------------------------------------------
def test_pointwise_source_asked_for_splade_is_refused_by_rule_5(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    spec = parse_spec(
        {"name": "lighton_recommended", "format": "splade", "source": "lighton/recommended"},
        "test",
        known_sources(),
    )
    result = dg.materialize(
        [factory.build_export_asset(spec)],
        partition_key=LIGHTON_CONFIG,
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    rule5 = checks(result)[(spec.key.to_user_string(), "queries_have_negative")]
    assert not rule5.passed and rule5.severity == dg.AssetCheckSeverity.ERROR
    detail = rule5.metadata["detail"].value
    assert "no scored negatives" in detail and "pointwise" in detail
    assert "exports/pointwise/pointwise_lighton_recommended" in detail
    failed = {k for k, e in checks(result).items() if not e.passed}
    assert failed == {(spec.key.to_user_string(), "queries_have_negative")}
    assert "not published" in failures(result)
    assert not Lake(sample.lake).is_published(spec.key.path, LIGHTON_CONFIG)


def test_an_invalid_export_never_replaces_the_published_one(lake_dir: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    for job in ("fiqa_mined", "exports_fiqa_mined_scores"):
        result = run(job, None, instance)
        assert result.success, failures(result)
    lake = Lake(lake_dir)
    key = ["exports", "splade", "splade_fiqa"]
    before = (lake.manifest(key)["version"], tree_hashes(lake.published_path(key)))
    # a new upstream version in which one query kept only its positive
    source_glob = lake.parquet_glob(MINED_KEY.path)
    ((victim,),) = duckdb.execute(
        "SELECT min(query_id) FROM read_parquet($g)", {"g": source_glob}
    ).fetchall()
    with lake.stage(MINED_KEY.path) as staged:
        duckdb.execute(
            f"COPY (SELECT * FROM read_parquet($g) WHERE query_id <> $q OR is_positive) "
            f"TO '{staged.path}/part-0.parquet' (FORMAT parquet)",
            {"g": source_glob, "q": victim},
        )
        lake.publish(staged, {"rows": 0})
    result = run("exports_fiqa_mined_scores", None, instance)
    assert not result.success
    evaluation = checks(result)[("exports/splade/splade_fiqa", "queries_have_negative")]
    assert not evaluation.passed
    assert f"qid {victim}" in evaluation.metadata["first_offenders"].value
    assert evaluation.metadata["violations"].value == 1
    assert (lake.manifest(key)["version"], tree_hashes(lake.published_path(key))) == before
    verdicts = dict(
        (r.name, o) for r, o in validate_folder(duckdb.connect(), lake.published_path(key))
    )
    assert all(o.passed for o in verdicts.values())


# ---- specs ---------------------------------------------------------------------------------
BAD_SPECS = {
    "unknown format": ({"format": "nope"}, "format 'nope'"),
    "unknown source": ({"source": "nope/x"}, "source 'nope/x'"),
    "unknown knob": ({"knobs": {"gzip": 3}}, "unknown knob(s) ['gzip']"),
    "bad knob value": ({"knobs": {"validation_fraction": 1.5}}, "validation_fraction"),
    "bad selection": ({"knobs": {"positives": "all"}}, "positives='all'"),
    "texts missing": ({"texts": None}, "`texts` must name"),
    "unknown text": (
        {"texts": {"queries": "text/x", "documents": "text/msmarco_passage/collection"}},
        "unknown queries table",
    ),
    "partition pattern": ({"partitions": {"nothing*": {}}}, "matches none"),
    "pointwise to lightning_ir": (
        {"format": "lightning_ir", "source": "lighton/recommended", "texts": None},
        "needs a listwise or pairwise source",
    ),
    "bad name": ({"name": "../up"}, "not a safe name"),
    "unknown transform": ({"knobs": {"score_transform": "zscore"}}, "score_transform='zscore'"),
    "temperature without softmax": (
        {"knobs": {"score_transform": "minmax", "temperature": 2.0}},
        "temperature applies to score_transform: softmax only",
    ),
    "bad temperature": (
        {"knobs": {"score_transform": "softmax", "temperature": 0}},
        "temperature=0",
    ),
    "bad rows_per_file": ({"format": "margin_mse", "knobs": {"rows_per_file": 0}}, "rows_per_file"),
    # YAML `true` is a bool, which Python counts as 1: refused by every integer knob
    "bool negatives_per_row": (
        {"format": "margin_mse", "knobs": {"negatives_per_row": True}},
        "negatives_per_row=True: expected an integer >= 1",
    ),
    "bool max_negatives": (
        {"format": "tevatron", "knobs": {"max_negatives": True}},
        "max_negatives=True: expected an integer >= 1 or null",
    ),
    "bool seed": (
        {"format": "tevatron", "knobs": {"negative_selection": "random", "seed": False}},
        "seed=False: expected an integer",
    ),
    "bool positive_top_k": (
        {"knobs": {"positives": "teacher_top", "positive_top_k": True}},
        "positive_top_k=True: expected an integer >= 1",
    ),
    "float gzip_level": ({"knobs": {"gzip_level": 2.0}}, "gzip_level=2.0: expected an integer"),
    "label too long": ({"name": "a_source_name_far_too_long"}, "the lineage graph shows 31"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_fail_when_loaded_naming_the_problem(case: str) -> None:
    base = {
        "name": "x",
        "format": "splade",
        "source": "hofstaetter/teacher_scores",
        "texts": {
            "queries": "text/msmarco_passage/queries_train",
            "documents": "text/msmarco_passage/collection",
        },
    }
    change, message = BAD_SPECS[case]
    with pytest.raises(SpecError) as error:
        parse_spec({**base, **change}, "spec", known_sources())
    assert message in str(error.value)


def test_duplicate_export_keys_are_refused(tmp_path: Path) -> None:
    entry = "  - {name: x, format: pointwise, source: lighton/recommended}\n"
    (tmp_path / "exports.yaml").write_text("exports:\n" + entry * 2)
    with pytest.raises(SpecError, match="defined twice"):
        load_export_specs(tmp_path / "exports.yaml")


TEXTS = "{queries: text/msmarco_passage/queries_train, documents: text/msmarco_passage/collection}"


def test_export_labels_that_would_read_the_same_are_refused(tmp_path: Path) -> None:
    """splade + `triplets_x` and splade_triplets + `x` are two keys with one last part
    (`splade_triplets_x`), which the UI and the lake catalog show alone."""
    (tmp_path / "exports.yaml").write_text(
        "exports:\n"
        "  - {name: triplets_x, format: splade, source: hofstaetter/teacher_scores, texts: "
        f"{TEXTS}}}\n"
        "  - {name: x, format: splade_triplets, source: hofstaetter/teacher_scores, texts: "
        f"{TEXTS}}}\n"
    )
    with pytest.raises(SpecError) as error:
        load_export_specs(tmp_path / "exports.yaml")
    assert str(error.value) == (
        f"{tmp_path / 'exports.yaml'}: exports/splade_triplets/splade_triplets_x clashes with "
        "exports/splade/splade_triplets_x (both read splade_triplets_x)"
    )


# ---- parallel gzip -------------------------------------------------------------------------
def test_parallel_gzip_is_one_stream_to_every_reader_and_deterministic(tmp_path: Path) -> None:
    source = tmp_path / "rows.ndjson"
    source.write_text(
        "".join(json.dumps({"qid": i, "text": f"t{i}" * 20}) + "\n" for i in range(20000))
    )
    outputs = []
    for threads in (1, 4):
        target = tmp_path / f"rows-{threads}.ndjson.gz"
        gzip_file(source, target, level=1, threads=threads, member_bytes=64 << 10)
        outputs.append(target.read_bytes())
        assert gzip.decompress(target.read_bytes()) == source.read_bytes()
        ((rows,),) = duckdb.execute(
            "SELECT count(*) FROM read_json($f, format = 'newline_delimited')", {"f": str(target)}
        ).fetchall()
        assert rows == 20000
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b"\x1f\x8b\x08") > 5  # several members
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    gzip_file(empty, tmp_path / "empty.gz")
    assert gzip.decompress((tmp_path / "empty.gz").read_bytes()) == b""
    with pytest.raises(ValueError, match="gzip level"):
        gzip_file(source, tmp_path / "x.gz", level=11)


# ---- one split per source, honoured by every export (issue 11, fault 1) --------------------
def split_query_texts(sample: SampleExports, key: str, partition: str | None) -> dict[str, set]:
    """The query texts in each split of an export, read from its files the way its consumer
    reads them (`datasets` over the folder's card; SPLADE's query masters; lightning-ir's
    ids mapped back to their texts)."""
    folder = sample.path(key, partition)
    fmt = key.split("/")[1]
    if fmt == "splade":
        return {
            split: {
                json.loads(line)["text"] for line in (folder / split / "query_master.ndjson").open()
            }
            for split in ("train", "validation")
            if (folder / split).is_dir()
        }
    splits = datasets.load_dataset(str(folder.resolve()))
    if fmt == "lightning_ir":
        texts = dict(
            duckdb.execute(
                "SELECT query_id, text FROM read_parquet($g)",
                {"g": str(sample.path("text/msmarco_passage/queries_train") / "*.parquet")},
            ).fetchall()
        )
        return {s: {texts[q] for q in rows["query_id"]} for s, rows in splits.items()}
    column = {"splade_triplets": "query_text", "tevatron": "query"}.get(fmt, "query")
    return {s: set(rows[column]) for s, rows in splits.items()}


HOFSTAETTER_EXPORTS = [
    "exports/splade_triplets/splade_triplets_hofstaetter",
    "exports/splade_triplets/splade_triplets_hofstaetter_pos",
    "exports/margin_mse/margin_mse_hofstaetter",
    "exports/tevatron/tevatron_hofstaetter",
    "exports/lightning_ir/lightning_ir_hofstaetter",
]


@pytest.mark.parametrize("partition", ["bert", "ensemble"])
def test_a_query_is_in_one_split_across_every_export_of_the_source(
    sample: SampleExports, partition: str
) -> None:
    splade = split_query_texts(sample, "exports/splade/splade_hofstaetter", partition)
    held_out = splade["validation"]
    assert 0 < len(held_out) < len(splade["train"])
    for key in HOFSTAETTER_EXPORTS:
        splits = split_query_texts(sample, key, partition)
        assert not splits["train"] & held_out, key  # no validation query trains
        assert splits["validation"] == held_out, key  # the same held-out queries everywhere
        assert splits["train"] == splade["train"], key
    # the other partition holds out the same queries (the split is per source, by text)
    other = "ensemble" if partition == "bert" else "bert"
    assert (
        split_query_texts(sample, "exports/splade/splade_hofstaetter", other)["validation"]
        == held_out
    )


def test_every_export_has_the_split_check_and_it_passed(sample: SampleExports) -> None:
    for (job, partition), result in sample.results.items():
        evaluations = [
            e for e in result.get_asset_check_evaluations() if e.check_name == "one_split_per_query"
        ]
        keys = {s.key for s in load_export_specs() if factory.export_job_name(s) == job}
        assert {e.asset_key for e in evaluations} == keys, (job, partition)
        assert all(e.passed for e in evaluations)


def test_the_split_check_fails_on_a_leaked_query(sample: SampleExports, tmp_path: Path) -> None:
    """A validation query copied into the training files is caught, and named."""
    folder = sample.path("exports/margin_mse/margin_mse_hofstaetter", "bert").resolve()
    con = duckdb.connect()
    ((leaked,),) = con.execute(
        "SELECT min(query) FROM read_parquet($g)", {"g": str(folder / "validation" / "*.parquet")}
    ).fetchall()
    con.execute(
        f"COPY (SELECT * FROM read_parquet($t) UNION ALL SELECT * FROM read_parquet($v) "
        f"WHERE query = $q) TO '{tmp_path}/part-00000.parquet' (FORMAT parquet)",
        {
            "t": str(folder / "*.parquet"),
            "v": str(folder / "validation" / "*.parquet"),
            "q": leaked,
        },
    )
    tables = {
        "train": Table.parquet(str(tmp_path / "*.parquet")),
        "validation": Table.parquet(str(folder / "validation" / "*.parquet")),
    }
    outcome = one_split_per_query(tables, "query")(con, tables["train"])
    assert not outcome.passed and outcome.violations == 1
    assert outcome.examples == (leaked[:40],)
    honest = {**tables, "train": Table.parquet(str(folder / "*.parquet"))}
    assert one_split_per_query(honest, "query")(con, tables["train"]).passed


def test_a_split_knob_on_a_format_is_refused_pointing_to_the_source_split() -> None:
    with pytest.raises(SpecError, match="decided once per source"):
        parse_spec(
            {
                "name": "x",
                "format": "margin_mse",
                "source": "hofstaetter/teacher_scores",
                "texts": {
                    "queries": "text/msmarco_passage/queries_train",
                    "documents": "text/msmarco_passage/collection",
                },
                "knobs": {"validation_fraction": 0.1},
            },
            "spec",
            known_sources(),
        )


# ---- one list length per export (fault 2) --------------------------------------------------
def fiqa_tables(sample: SampleExports) -> dict[str, str]:
    """The published FiQA mined scores (`m`), corpus (`c`) and queries (`q`) as globs."""
    return {
        "m": str(sample.path("fiqa/mined_scores") / "*.parquet"),
        "c": str(sample.path("text/fiqa/corpus") / "*.parquet"),
        "q": str(sample.path("text/fiqa/queries") / "*.parquet"),
    }


def fiqa_candidates_with_text(sample: SampleExports) -> dict[str, int]:
    """Per FiQA query: its scored candidates whose document has a text (computed from the
    source and the corpus, independently of the export code)."""
    return dict(
        duckdb.execute(
            "SELECT m.query_id, count(*) FROM read_parquet($m) m "
            "SEMI JOIN read_parquet($c) c USING (doc_id) "
            "SEMI JOIN read_parquet($q) q USING (query_id) "
            "WHERE m.score IS NOT NULL GROUP BY m.query_id",
            fiqa_tables(sample),
        ).fetchall()
    )


def test_pylate_rows_have_one_length_and_short_queries_are_dropped_and_counted(
    sample: SampleExports,
) -> None:
    root = sample.path("exports/pylate_kd/pylate_kd_fiqa")
    train = datasets.load_dataset(str(root.resolve()), "train", split="train")
    assert {len(ids) for ids in train["document_ids"]} == {16}
    assert {len(s) for s in train["scores"]} == {16}
    candidates = fiqa_candidates_with_text(sample)
    short = sorted(q for q, n in candidates.items() if n < 16)
    assert short  # the sample has candidates without text: the case of the fault
    assert sorted(set(candidates) - set(train["query_id"])) == short
    written = Lake(sample.lake).manifest(["exports", "pylate_kd", "pylate_kd_fiqa"])["written"]
    assert written["queries_dropped_too_few_documents"] == len(short)
    for variant in RUN_VARIANTS:
        rows = datasets.load_dataset(
            str(sample.path("exports/pylate_kd/pylate_kd_rank_distillm", variant).resolve()),
            "train",
            split="train",
        )
        expected = 8 if variant.endswith("sampled10") else 16
        assert {len(ids) for ids in rows["document_ids"]} == {expected}, variant


def test_multi_negative_margin_mse_rows_have_one_length(sample: SampleExports) -> None:
    rows = datasets.load_dataset(
        str(sample.path("exports/margin_mse/margin_mse_fiqa").resolve()), split="train"
    )
    assert {len(s) for s in rows["score"]} == {4}
    negatives = fiqa_negatives_with_text(sample)
    # 4 per row: every sample query has enough; 15 per row (a spec of its own, published
    # under its own key): the query whose negative has no text falls short
    margin_mse_15 = parse_spec(
        {
            "name": "fiqa_15",
            "format": "margin_mse",
            "source": "fiqa/mined_scores",
            "texts": {"queries": "text/fiqa/queries", "documents": "text/fiqa/corpus"},
            "knobs": {"negatives_per_row": 15, "negative_selection": "hardest"},
        },
        "test",
        known_sources(),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_PIPELINE_LAKE", str(sample.lake))
        built = dg.materialize(
            [factory.build_export_asset(margin_mse_15)],
            resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    assert built.success, failures(built)
    for k, key in [(4, "exports/margin_mse/margin_mse_fiqa"), (15, margin_mse_15.key)]:
        path = key.split("/") if isinstance(key, str) else key.path
        written = Lake(sample.lake).manifest(path)["written"]
        short = sorted(q for q, n in negatives.items() if n < k)
        assert written["queries_with_too_few_negatives"] == len(short), k
        kept = duckdb.execute(
            "SELECT count(DISTINCT query) FROM read_parquet($g)",
            {"g": str(Lake(sample.lake).published_path(path) / "*.parquet")},
        ).fetchall()[0][0]
        assert kept == len(negatives) - len(short) > 0, k
        if k == 15:
            assert short  # the case of the count: some query falls short


def test_a_partition_override_of_the_list_length_is_what_its_rules_judge(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition's knobs (exports.yaml `partitions:`) may change the list length a
    fixed-shape format writes; its checks judge that partition by its own length, not the
    spec's (the fault: rules bound to the spec's knobs failed every row of an override)."""
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    spec = parse_spec(
        {
            "name": "runs_override",
            "format": "margin_mse",
            "source": "rank_distillm/runs",
            "texts": {
                "queries": "text/msmarco_passage/queries_train",
                "documents": "text/msmarco_passage/collection",
            },
            "knobs": {"negatives_per_row": 1},
            "partitions": {
                "rankzephyr.*": {"positives": "teacher_top", "negatives_per_row": 3},
            },
        },
        "test",
        known_sources(),
    )
    lengths = {}
    for partition in ("msmarco.bm25.annotated", "rankzephyr.colbert10000.sampled100"):
        result = dg.materialize(
            [factory.build_export_asset(spec)],
            resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
            instance=dg.DagsterInstance.ephemeral(),
            partition_key=partition,
            raise_on_error=False,
        )
        assert result.success, failures(result)
        assert all(c.passed for c in checks(result).values())
        glob = str(Lake(sample.lake).published_path(spec.key.path, partition) / "*.parquet")
        scores = duckdb.execute("SELECT score FROM read_parquet($g)", {"g": glob}).fetchall()
        lengths[partition] = {1 if isinstance(v, float) else len(v) for (v,) in scores}
    assert lengths == {"msmarco.bm25.annotated": {1}, "rankzephyr.colbert10000.sampled100": {3}}


def fiqa_negatives_with_text(sample: SampleExports) -> dict[str, int]:
    """Per FiQA query with a text and a scored positive that has a text: its scored
    non-positive candidates whose document has a text (from the source and the texts,
    independently of the export code)."""
    return dict(
        duckdb.execute(
            "WITH m AS (SELECT * FROM read_parquet($m) m "
            "SEMI JOIN read_parquet($c) c USING (doc_id) WHERE m.score IS NOT NULL), "
            "q AS (SELECT query_id FROM m SEMI JOIN read_parquet($q) USING (query_id) "
            "WHERE is_positive) "
            "SELECT q.query_id, count(*) FILTER (WHERE NOT m.is_positive) "
            "FROM (SELECT DISTINCT query_id FROM q) q JOIN m USING (query_id) "
            "GROUP BY q.query_id",
            fiqa_tables(sample),
        ).fetchall()
    )


UNFILLABLE = {
    "pylate_kd": ({"documents_per_query": 17}, "exports/pylate_kd/pylate_kd_fiqa"),
    "margin_mse": (
        {"negatives_per_row": 40, "negative_selection": "hardest"},
        "exports/margin_mse/margin_mse_fiqa",
    ),
}


@pytest.mark.parametrize("fmt", sorted(UNFILLABLE))
def test_a_shape_no_query_can_fill_fails_naming_the_export_and_keeps_the_published_one(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    knobs, key = UNFILLABLE[fmt]
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    spec = parse_spec(
        {
            "name": "fiqa",
            "format": fmt,
            "source": "fiqa/mined_scores",
            "texts": {"queries": "text/fiqa/queries", "documents": "text/fiqa/corpus"},
            "knobs": knobs,
        },
        "test",
        known_sources(),
    )
    lake = Lake(sample.lake)
    before = (
        lake.manifest(spec.key.path)["version"],
        tree_hashes(lake.published_path(spec.key.path)),
    )
    result = dg.materialize(
        [factory.build_export_asset(spec)],
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    length = checks(result)[(key, "one_list_length")]
    assert not length.passed and length.severity == dg.AssetCheckSeverity.ERROR
    queries = len(fiqa_candidates_with_text(sample))
    assert length.metadata["violations"].value == queries
    detail = length.metadata["detail"].value
    assert key in detail and f"none of the {queries} queries" in detail
    assert "not published" in failures(result)
    after = (
        lake.manifest(spec.key.path)["version"],
        tree_hashes(lake.published_path(spec.key.path)),
    )
    assert after == before


# ---- every folder is a Hugging Face dataset (fault 3) --------------------------------------
def card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


PUBLISHED = [
    (spec.key.to_user_string(), partition)
    for spec in load_export_specs()
    for job, partition in EXPORT_RUNS
    if factory.export_job_name(spec) == job
]


def test_one_datasets_cache_never_serves_another_export_or_an_old_version(
    sample: SampleExports, tmp_path: Path
) -> None:
    """A user keeps one `datasets` cache and loads the published paths. Two exports of the
    partition `bert` must each load their own rows, and an export rewritten in place (a user
    copying a version to a folder of their own) must load its new rows, not the cached
    old ones."""
    cache = str(tmp_path / "shared_cache")
    margin = sample.path("exports/margin_mse/margin_mse_hofstaetter", "bert")
    triplets = sample.path("exports/splade_triplets/splade_triplets_hofstaetter", "bert")
    assert margin.parent.name == triplets.parent.name == "bert"
    first = datasets.load_dataset(str(margin), split="train", cache_dir=cache)
    second = datasets.load_dataset(str(triplets), split="train", cache_dir=cache)
    assert "margin" not in second.column_names and "query_text" in second.column_names
    assert len(second) == pq_rows(triplets, "part-*.parquet") != len(first)

    # a republish: same path, fewer rows, the card written again as the factory writes it
    published = tmp_path / "lake" / "bert"
    shutil.copytree(margin.resolve(), published)
    before = datasets.load_dataset(str(published), split="train", cache_dir=cache)
    (part,) = sorted(published.glob("part-*.parquet"))
    pq.write_table(pq.read_table(part).slice(0, 7), part)
    card_text = (published / "README.md").read_text(encoding="utf-8")
    header_end = card_text.index("\ndataset_info:")
    body = card_text[card_text.index("\n---", header_end) :]
    write_card(published, card_text[:header_end] + body)
    after = datasets.load_dataset(str(published), split="train", cache_dir=cache)
    assert len(before) == len(first) != 7 and len(after) == 7


def pq_rows(folder: Path, pattern: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob(pattern))


@pytest.mark.parametrize(("key", "partition"), PUBLISHED)
def test_every_export_folder_loads_by_its_card(
    sample: SampleExports, key: str, partition: str | None
) -> None:
    """`load_dataset(folder, config)` for every config the card names, with its splits and
    every row the manifest counted; the licence and provenance are on the card."""
    folder = sample.path(key, partition).resolve()
    header = card_header(folder)
    manifest = Lake(sample.lake).manifest(key.split("/"), partition)
    names = [c["config_name"] for c in header["configs"]]
    for config in header["configs"]:
        loaded = datasets.load_dataset(str(folder), config["config_name"])
        assert sorted(loaded) == sorted(f["split"] for f in config["data_files"]), config
        for entry in config["data_files"]:
            counted = [
                n
                for name, n in manifest["files"].items()
                # a file, a glob, or a folder (`queries/`) the manifest counted
                if fnmatch(name, entry["path"])
                or name == entry["path"]
                or (name.endswith("/") and entry["path"].startswith(name))
            ]
            assert counted, (entry, manifest["files"])
            assert len(loaded[entry["split"]]) == sum(counted) > 0, (entry, manifest["files"])
    assert [c["config_name"] for c in header["configs"] if c.get("default")] == names[:1] or (
        len(names) == 1
    )
    licence = {k: v for k, v in header.items() if k.startswith("license")}
    if key.startswith("exports/pointwise/"):  # LightOn alone: the sample card's Hub id
        assert licence == {"license": "apache-2.0"}
    else:  # a family and its text collections: each one's terms, listed in the card
        assert licence == {
            "license": "other",
            "license_name": "terms-of-every-source",
            "license_link": "README.md#licence",
        }
    body = (folder / "README.md").read_text(encoding="utf-8")
    source = manifest["lineage"]["source"]
    recorded = Lake(sample.lake).manifest(source.split("/"), partition)
    if "lineage" in recorded:  # a family: its revision or md5 is carried into the card
        for field in ("revision", "md5"):
            if field in recorded["lineage"]:
                assert str(recorded["lineage"][field]) in body, field
        if "card_license" in recorded["lineage"]:
            assert f"card_license: {recorded['lineage']['card_license']}" in body
    for upstream, version in manifest["lineage"]["versions"].items():
        assert upstream in body and str(version) in body
    assert f"format: {manifest['format']}" in body


def test_pylate_loads_as_its_documentation_says(sample: SampleExports) -> None:
    folder = str(sample.path("exports/pylate_kd/pylate_kd_fiqa").resolve())
    train = datasets.load_dataset(folder, "train", split="train")
    queries = datasets.load_dataset(folder, "queries", split="train")
    documents = datasets.load_dataset(folder, "documents", split="train")
    assert train.column_names == ["query_id", "document_ids", "scores"]
    assert set(queries["query_id"]) == set(train["query_id"])
    known = set(documents["document_id"])
    assert all(set(ids) <= known for ids in train["document_ids"])
    assert len(datasets.load_dataset(folder, split="train")) == len(train)  # train is the default


# ---- ordered exports keep their order (fault 4) --------------------------------------------
def test_the_mixture_export_is_the_mixture_row_for_row_across_12_part_files(
    mixture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(mixture))
    (spec,) = [s for s in load_export_specs() if s.name == "denseon_lateon"]
    ((rows,),) = duckdb.execute(
        "SELECT count(*) FROM read_parquet($g)",
        {"g": str(Lake(mixture).published_path(["lighton", "denseon_lateon"]) / "*.parquet")},
    ).fetchall()
    small = parse_spec(
        {
            "name": spec.name,
            "format": "pointwise",
            "source": spec.source.name,
            "knobs": {"rows_per_file": rows // 13},
        },
        "test",
        known_sources(),
    )
    result = dg.materialize(
        [factory.build_export_asset(small)],
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, failures(result)
    folder = Lake(mixture).published_path(small.key.path).resolve()
    parts = sorted(p.name for p in folder.glob("*.parquet"))
    assert len(parts) >= 12 and parts[:2] == ["part-00000.parquet", "part-00001.parquet"]
    exported = datasets.load_dataset(str(folder), split="train")
    assert exported.column_names == ["position", "query", "document", "score"]
    source = duckdb.execute(
        "SELECT position, query, document, similarity FROM read_parquet($g) ORDER BY position",
        {"g": str(Lake(mixture).published_path(["lighton", "denseon_lateon"]) / "*.parquet")},
    ).fetchall()
    assert len(exported) == len(source) == rows  # nothing dropped, repeats included
    assert [tuple(r.values()) for r in exported] == [tuple(r) for r in source]
    manifest = Lake(mixture).manifest(small.key.path)
    assert manifest["selection"]["source_rows"] == rows
    assert manifest["written"]["rows"] == rows
    assert manifest["selection"]["repeats_merged"] > 0  # counted, and still exported
    order = checks(result)[(small.key.to_user_string(), "rows_in_source_order")]
    assert order.passed


def test_part_file_names_sort_in_reading_order(tmp_path: Path) -> None:
    con = duckdb.connect()
    written = copy_parquet(
        con,
        "SELECT range AS i FROM range(1000) ORDER BY md5(CAST(range AS VARCHAR))",
        tmp_path,
        rows_per_file=70,
    )
    names = [p.name for p in sorted(tmp_path.glob("*.parquet"))]
    assert written == 1000 and len(names) == 15 and names[-1] == "part-00014.parquet"
    expected = con.execute(
        "SELECT range FROM range(1000) ORDER BY md5(CAST(range AS VARCHAR))"
    ).fetchall()
    assert con.execute(f"SELECT i FROM read_parquet('{tmp_path}/*.parquet')").fetchall() == expected
    with pytest.raises(ValueError, match="rows_per_file"):
        copy_parquet(con, "SELECT 1", tmp_path / "x", rows_per_file=0)


def test_an_ordered_export_out_of_order_fails_its_check(tmp_path: Path) -> None:
    con = duckdb.connect()
    for number, (low, high) in enumerate([(0, 10), (20, 30), (10, 20)]):  # a part misplaced
        con.execute(
            f"COPY (SELECT range AS position FROM range({low}, {high})) "
            f"TO '{tmp_path}/part-{number:05d}.parquet' (FORMAT parquet)"
        )
    rule = increasing_in_file_order(str(tmp_path / "*.parquet"), "position")
    outcome = rule(con, Table.parquet(str(tmp_path / "*.parquet")))
    assert not outcome.passed and outcome.violations == 1
    assert outcome.examples == ("position 10 after 29",)


# ---- scores on the consumer's scale (fault 5) ----------------------------------------------
def fiqa_teacher_scores(sample: SampleExports) -> dict[tuple[str, str], float]:
    return {
        (q, d): s
        for q, d, s in duckdb.execute(
            "SELECT query_id, doc_id, score FROM read_parquet($g) WHERE score IS NOT NULL",
            {"g": str(sample.path("fiqa/mined_scores") / "*.parquet")},
        ).fetchall()
    }


def test_pylate_scores_are_min_max_scaled_per_query_list(sample: SampleExports) -> None:
    folder = str(sample.path("exports/pylate_kd/pylate_kd_fiqa").resolve())
    train = datasets.load_dataset(folder, "train", split="train")
    teacher = fiqa_teacher_scores(sample)
    for row in train:
        raw = [teacher[(row["query_id"], d)] for d in row["document_ids"]]
        low, high = min(raw), max(raw)
        assert row["scores"] == pytest.approx([(r - low) / (high - low) for r in raw], abs=1e-6)
    manifest = Lake(sample.lake).manifest(["exports", "pylate_kd", "pylate_kd_fiqa"])
    assert manifest["knobs"]["score_transform"] == "minmax"
    card = card_header(Path(folder))
    assert card["configs"][0]["config_name"] == "train"
    assert "score_transform: minmax" in (Path(folder) / "README.md").read_text()


def test_softmax_with_temperature_over_each_exported_list(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    spec = parse_spec(
        {
            "name": "fiqa_softmax",
            "format": "tevatron",
            "source": "fiqa/mined_scores",
            "texts": {"queries": "text/fiqa/queries", "documents": "text/fiqa/corpus"},
            "knobs": {"score_transform": "softmax", "temperature": 2.0, "max_negatives": 5},
        },
        "test",
        known_sources(),
    )
    result = dg.materialize(
        [factory.build_export_asset(spec)],
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, failures(result)
    folder = Lake(sample.lake).published_path(spec.key.path).resolve()
    teacher = fiqa_teacher_scores(sample)
    for row in datasets.load_dataset(str(folder), split="train"):
        passages = row["positive_passages"] + row["negative_passages"]
        scores = [p["score"] for p in passages]
        assert sum(scores) == pytest.approx(1.0)
        raw = [teacher[(row["query_id"], p["docid"])] for p in passages]
        # softmax at T = 2: score ratios are exp((s_i - s_j) / 2) of the raw scores
        assert scores[0] / scores[-1] == pytest.approx(math.exp((raw[0] - raw[-1]) / 2.0))
    knobs = Lake(sample.lake).manifest(spec.key.path)["knobs"]
    assert (knobs["score_transform"], knobs["temperature"]) == ("softmax", 2.0)


def test_min_max_over_the_whole_export_for_pointwise_pairs(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    spec = parse_spec(
        {
            "name": "lighton_cosine",
            "format": "pointwise",
            "source": "lighton/recommended",
            "knobs": {"score_transform": "minmax", "score_scope": "export"},
        },
        "test",
        known_sources(),
    )
    result = dg.materialize(
        [factory.build_export_asset(spec)],
        partition_key=LIGHTON_CONFIG,
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, failures(result)
    scaled = load_parquet(Lake(sample.lake).published_path(spec.key.path, LIGHTON_CONFIG))
    raw = load_parquet(
        sample.path("exports/pointwise/pointwise_lighton_recommended", LIGHTON_CONFIG)
    )
    low, high = min(raw["score"]), max(raw["score"])
    assert (min(scaled["score"]), max(scaled["score"])) == (0.0, 1.0)
    assert scaled["score"] == pytest.approx([(s - low) / (high - low) for s in raw["score"]])


def test_min_max_over_the_whole_export_spans_its_splits(
    sample: SampleExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_scope: export on a source with a validation split: one min and max for the
    whole export (taken before the split), so a score maps to one value in both splits."""
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(sample.lake))
    specs = [
        parse_spec(
            {
                "name": name,
                "format": "pointwise",
                "source": "hofstaetter/teacher_scores",
                "texts": {
                    "queries": "text/msmarco_passage/queries_train",
                    "documents": "text/msmarco_passage/collection",
                },
                "knobs": knobs,
            },
            "test",
            known_sources(),
            {s.source.name: s.split for s in load_export_specs()},  # the file's splits
        )
        for name, knobs in [
            ("hof_raw", {}),
            ("hof_scaled", {"score_transform": "minmax", "score_scope": "export"}),
        ]
    ]
    result = dg.materialize(
        [factory.build_export_asset(spec) for spec in specs],
        partition_key="bert",
        resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, failures(result)
    raw, scaled = (
        {
            split: {
                "score": list(
                    load_parquet(Lake(sample.lake).published_path(s.key.path, "bert"), pattern)[
                        "score"
                    ]
                )
            }
            for split, pattern in [("train", "*.parquet"), ("validation", "validation/*.parquet")]
        }
        for s in specs
    )
    everything = raw["train"]["score"] + raw["validation"]["score"]
    low, high = min(everything), max(everything)
    for split in ("train", "validation"):
        assert scaled[split]["score"] == pytest.approx(
            [(s - low) / (high - low) for s in raw[split]["score"]]
        ), split
    union = scaled["train"]["score"] + scaled["validation"]["score"]
    assert (min(union), max(union)) == (0.0, 1.0)
    # the case of the fault: the validation split alone does not span the whole range
    own = raw["validation"]["score"]
    assert (min(own), max(own)) != (low, high)


# ---- the card's licence comes from the recorded lineage --------------------------------------
FIQA_LINEAGE = {"repo_id": "stefan-jo/fiqa-train-mined-reranker-scores", "revision": "abc123"}


@pytest.mark.parametrize(
    ("reads", "expected"),
    [
        # one source whose card names a Hub licence id: that id, alone
        (
            {"lighton/recommended": [{"repo_id": "l/e", "revision": "r", "card_license": "mit"}]},
            {"license": "mit"},
        ),
        # one source whose card says other: its own name and link
        (
            {
                "fiqa/mined_scores": [
                    {
                        **FIQA_LINEAGE,
                        "card_license": "other",
                        "card_license_name": "fiqa-2018-non-commercial",
                        "card_license_link": "https://example.org/fiqa-terms",
                    }
                ]
            },
            {
                "license": "other",
                "license_name": "fiqa-2018-non-commercial",
                "license_link": "https://example.org/fiqa-terms",
            },
        ),
        # a Hub source and a text collection under other terms: never two ids joined
        (
            {
                "fiqa/mined_scores": [{**FIQA_LINEAGE, "card_license": "cc-by-nc-4.0"}],
                "text/fiqa/queries": [{"url": "u", "md5": "m"}],
            },
            {
                "license": "other",
                "license_name": "terms-of-every-source",
                "license_link": "README.md#licence",
            },
        ),
        # a source whose card states no licence falls back to the table's terms
        (
            {"fiqa/mined_scores": [FIQA_LINEAGE]},
            {
                "license": "other",
                "license_name": "fiqa-mined-non-commercial",
                "license_link": "README.md#licence",
            },
        ),
    ],
)
def test_card_licence_is_one_hub_id_or_other_with_name_and_link(reads, expected) -> None:
    assert licence_header(licences_for(reads)) == expected


def test_card_body_names_each_recorded_licence_with_its_revision() -> None:
    reads = {
        "fiqa/mined_scores": [
            {
                **FIQA_LINEAGE,
                "card_license": "other",
                "card_license_name": "fiqa-2018-non-commercial",
                "card_license_link": "https://example.org/fiqa-terms",
            }
        ],
        "text/fiqa/corpus": [{"url": "u", "md5": "m"}],
    }
    [hub, texts] = licences_for(reads)
    assert hub.terms == (
        "stefan-jo/fiqa-train-mined-reranker-scores (revision abc123): its dataset card's "
        "licence `fiqa-2018-non-commercial`, https://example.org/fiqa-terms."
    )
    assert texts.name == "fiqa-2018"


# ---- dagster/row_count is the rows a trainer iterates -----------------------------------------
# per format, the train file(s) counted independently of the export code: the PyLate
# query/document tables, the lightning-ir `.run` copy and the validation files are not rows
TRAIN_ROWS = {
    "splade": ("train/query_master.ndjson*", "json"),
    "splade_triplets": ("part-*.parquet", "parquet"),
    "margin_mse": ("part-*.parquet", "parquet"),
    "pointwise": ("part-*.parquet", "parquet"),
    "pylate_kd": ("train-part-*.parquet", "parquet"),
    "lightning_ir": ("*.parquet", "parquet"),
    "tevatron": ("train.jsonl*", "json"),
}


def test_row_count_is_the_train_rows_of_each_format(sample: SampleExports) -> None:
    reported = {
        (e.asset_key.to_user_string(), e.partition): e.materialization.metadata
        for result in sample.results.values()
        for e in result.get_asset_materialization_events()
    }
    assert {k.split("/")[1] for k, _ in reported} == set(TRAIN_ROWS)
    for (key, partition), metadata in reported.items():
        pattern, kind = TRAIN_ROWS[key.split("/")[1]]
        glob = str(sample.path(key, partition).resolve() / pattern)
        reader = "read_parquet" if kind == "parquet" else "read_json_objects"
        ((rows,),) = duckdb.execute(f"SELECT count(*) FROM {reader}($g)", {"g": glob}).fetchall()
        if key.startswith("exports/lightning_ir/"):  # one Parquet run file besides the id map
            assert len(list(sample.path(key, partition).glob("*.parquet"))) == 1
        assert metadata["dagster/row_count"].value == rows > 0, (key, partition)
