"""Hofstaetter et al.'s cross-encoder teacher scores for MS MARCO passage train triples.

`hofstaetter/teacher_scores` has one partition per teacher (`bert`: BERT-Base CAT,
`ensemble`: the mean of three CATs). A partition is the Zenodo TSV (md5-verified: the pinned
md5, or the one the run is tagged with), parsed with explicit columns into the canonical
pairwise table with the MarginMSE target `margin = pos_score - neg_score`, and checked
against the MS MARCO texts.
"""

from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline import canonical
from kd_pipeline.checks.candidates import (
    UNRESOLVED_RULE,
    ReadFacts,
    non_empty_ids,
    parsed_rule,
    resolved_rule,
)
from kd_pipeline.checks.rules import Rule, not_empty, rows_where, schema_is, static
from kd_pipeline.families.text import MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY
from kd_pipeline.families.upstream import HOFSTAETTER_FILES, fetch_zenodo_file
from kd_pipeline.lake_asset import Built, LakeAsset, Step, lake_asset
from kd_pipeline.lineage import published_glob, published_versions
from kd_pipeline.metadata import preview
from kd_pipeline.parsers import DelimitedFormat, ParseReport, copy_delimited

TEACHER_SCORES_KEY = dg.AssetKey(["hofstaetter", "teacher_scores"])
hofstaetter_partitions = dg.StaticPartitionsDefinition(list(HOFSTAETTER_FILES))
HOFSTAETTER_JOB = "hofstaetter_teacher_scores"

# The seed's dataset ids (unverified spelling) -> where `kd-pipeline prepare` finds them.
PREPARE_IDS: dict[str, tuple[dg.AssetKey, str | None]] = {
    f"com.github.hofstaetter.distillation.msmarco.{variant}.teacher": (TEACHER_SCORES_KEY, variant)
    for variant in HOFSTAETTER_FILES
}

TEACHER_TSV = DelimitedFormat(
    "teacher-score TSV (pos_score neg_score query_id pos_passage_id neg_passage_id)",
    (
        ("pos_score", "DOUBLE"),
        ("neg_score", "DOUBLE"),
        ("query_id", "VARCHAR"),
        ("pos_id", "VARCHAR"),
        ("neg_id", "VARCHAR"),
    ),
    delimiter="\t",
    any_whitespace=True,  # ids and scores never contain whitespace
)
PAIRWISE_SELECT = (
    "SELECT query_id, pos_id, neg_id, pos_score, neg_score, pos_score - neg_score AS margin "
    "FROM {rows}"
)


def write_pairwise(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str | None = None
) -> ParseReport:
    """Parse one teacher-score TSV into out_dir as the canonical pairwise table."""
    return copy_delimited(con, path, TEACHER_TSV, PAIRWISE_SELECT, out_dir, label=label)


PAIRWISE_RULES: list[Rule[ReadFacts]] = [
    Rule(
        "schema",
        "Columns and types are the canonical pairwise table.",
        static(schema_is(canonical.PAIRWISE)),
    ),
    parsed_rule("Every line of the TSV parsed (malformed ones are reported as file:line)."),
    Rule(
        "ids_present",
        "Query and passage ids are neither null nor empty.",
        static(non_empty_ids(["query_id", "pos_id", "neg_id"], "query_id")),
    ),
    Rule(
        "finite_scores",
        "Both teacher scores are finite numbers.",
        static(
            rows_where(
                "NOT isfinite(pos_score) OR NOT isfinite(neg_score)",
                "query_id",
                "pos_score or neg_score is NaN or infinite",
            )
        ),
    ),
    resolved_rule(
        "Query ids are MS MARCO train queries and passage ids are in the collection "
        "(the share that are not is reported; blocking above 1%)."
    ),
    Rule("not_empty", "The partition has rows.", static(not_empty())),
]

TEACHER_SCORES = LakeAsset(
    key=TEACHER_SCORES_KEY,
    group="hofstaetter",
    description="Cross-encoder teacher scores for MS MARCO passage train triples "
    "(query, positive, negative) with the MarginMSE margin, one partition per teacher.",
    rules=PAIRWISE_RULES,
    partitions_def=hofstaetter_partitions,
    deps=[MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY],
    metadata={
        "dagster/column_schema": canonical.table_schema(canonical.PAIRWISE),
        "upstream": "zenodo.org/record/4068216",
        "teachers": dg.MetadataValue.json({v: f.teacher for v, f in HOFSTAETTER_FILES.items()}),
    },
    reads_upstream=True,
    reported={UNRESOLVED_RULE: "unresolved_ids"},
)


def write_teacher_scores(step: Step) -> Built[ReadFacts]:
    """One teacher's TSV, fetched (md5-verified) and parsed into the pairwise table."""
    teacher = HOFSTAETTER_FILES[step.context.partition_key]
    texts = [MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_COLLECTION_KEY]
    queries_glob, documents_glob = (published_glob(step.lake, k) for k in texts)
    fetched = fetch_zenodo_file(step.fetcher, teacher, step.context.run.tags)
    step.log(
        f"{teacher.variant}: {fetched.path.name} (md5 {fetched.md5}: {fetched.checksum_source})"
    )
    report = write_pairwise(step.con, fetched.path, step.staged.path, teacher.file)
    lineage = {
        **fetched.metadata(),
        "source": step.fetcher.describe(),
        "texts": published_versions(step.lake, texts),
    }
    return Built(
        report.rows,
        ReadFacts(
            [report],
            [
                ("query_id", queries_glob, "query_id"),
                ("pos_id", documents_glob, "doc_id"),
                ("neg_id", documents_glob, "doc_id"),
            ],
        ),
        metadata={
            "teacher": teacher.teacher,
            **lineage,
            **report.metadata(),
            "preview": preview(step.con, step.table, list(canonical.PAIRWISE)),
        },
        manifest={"lineage": lineage, "parse": report.metadata()},
    )


hofstaetter_teacher_scores = lake_asset(TEACHER_SCORES, write_teacher_scores)


hofstaetter_job = dg.define_asset_job(
    HOFSTAETTER_JOB,
    selection=dg.AssetSelection.assets(TEACHER_SCORES_KEY),
    description="Hofstaetter teacher scores, one teacher per run "
    "(needs the MS MARCO texts: job text_collections).",
)
