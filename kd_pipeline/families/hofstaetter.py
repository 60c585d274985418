"""Hofstaetter et al.'s cross-encoder teacher scores for MS MARCO passage train triples.

`hofstaetter/teacher_scores` has one partition per teacher (`bert`: BERT-Base CAT,
`ensemble`: the mean of three CATs). A partition is the Zenodo TSV (md5-verified: the pinned
md5, or the one the run is tagged with), parsed with explicit columns into the canonical
pairwise table with the MarginMSE target `margin = pos_score - neg_score`, and checked
against the MS MARCO texts.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from kd_pipeline import canonical
from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.candidates import (
    evaluate_once,
    ids_resolve,
    malformed_lines,
    non_empty_ids,
)
from kd_pipeline.checks.rules import Rule, Table, not_empty, rows_where, schema_is
from kd_pipeline.engine import engine_connection
from kd_pipeline.families.text import (
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    metadata_value,
    published_glob,
    published_versions,
)
from kd_pipeline.families.upstream import HOFSTAETTER_FILES, fetch_zenodo_file
from kd_pipeline.metadata import preview
from kd_pipeline.parsers import DelimitedFormat, ParseReport, copy_delimited
from kd_pipeline.resources import LakeResource, UpstreamResource

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


def pairwise_rules(
    reports: list[ParseReport] | None = None,
    queries_glob: str = "",
    documents_glob: str = "",
) -> list[Rule]:
    """What a teacher-score partition must satisfy to be published."""
    return [
        Rule(
            "schema",
            "Columns and types are the canonical pairwise table.",
            schema_is("schema", canonical.PAIRWISE),
        ),
        Rule(
            "no_malformed_lines",
            "Every line of the TSV parsed (malformed ones are reported as file:line).",
            malformed_lines("no_malformed_lines", reports or []),
        ),
        Rule(
            "ids_present",
            "Query and passage ids are neither null nor empty.",
            non_empty_ids("ids_present", ["query_id", "pos_id", "neg_id"], "query_id"),
        ),
        Rule(
            "finite_scores",
            "Both teacher scores are finite numbers.",
            rows_where(
                "finite_scores",
                "NOT isfinite(pos_score) OR NOT isfinite(neg_score)",
                "query_id",
                "pos_score or neg_score is NaN or infinite",
            ),
        ),
        Rule(
            "ids_resolve_to_texts",
            "Query ids are MS MARCO train queries and passage ids are in the collection "
            "(the share that are not is reported; blocking above 1%).",
            ids_resolve(
                "ids_resolve_to_texts",
                [
                    ("query_id", queries_glob, "query_id"),
                    ("pos_id", documents_glob, "doc_id"),
                    ("neg_id", documents_glob, "doc_id"),
                ],
            ),
        ),
        Rule("not_empty", "The partition has rows.", not_empty("not_empty")),
    ]


@dg.asset(
    key=TEACHER_SCORES_KEY,
    partitions_def=hofstaetter_partitions,
    deps=[MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY],
    group_name="hofstaetter",
    kinds={"duckdb", "parquet"},
    owners=["team:kd-pipeline"],
    pool="duckdb",
    description="Cross-encoder teacher scores for MS MARCO passage train triples "
    "(query, positive, negative) with the MarginMSE margin, one partition per teacher.",
    metadata={
        "dagster/column_schema": canonical.table_schema(canonical.PAIRWISE),
        "upstream": "zenodo.org/record/4068216",
        "teachers": dg.MetadataValue.json({v: f.teacher for v, f in HOFSTAETTER_FILES.items()}),
    },
    check_specs=check_specs(
        pairwise_rules(),
        TEACHER_SCORES_KEY,
        upstream=True,
        partitions_def=hofstaetter_partitions,
    ),
)
def hofstaetter_teacher_scores(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    upstream: UpstreamResource,
    duckdb: DuckDBResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    teacher = HOFSTAETTER_FILES[context.partition_key]
    the_lake = lake.lake()
    texts = [MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_COLLECTION_KEY]
    queries_glob, documents_glob = (published_glob(the_lake, k) for k in texts)
    fetcher = upstream.fetcher()
    fetched = fetch_zenodo_file(fetcher, teacher, context.run.tags)
    context.log.info(
        f"{teacher.variant}: {fetched.path.name} (md5 {fetched.md5}: {fetched.checksum_source})"
    )
    with (
        engine_connection(duckdb, the_lake) as con,
        the_lake.stage(TEACHER_SCORES_KEY.path, teacher.variant) as staged,
    ):
        report = write_pairwise(con, fetched.path, staged.path, teacher.file)
        out = Table.parquet(staged.parquet_glob())
        lineage = {
            **fetched.metadata(),
            "source": fetcher.describe(),
            "texts": published_versions(the_lake, texts),
        }
        rules, unresolved = evaluate_once(
            pairwise_rules([report], queries_glob, documents_glob), "ids_resolve_to_texts", con, out
        )
        metadata = {
            "dagster/row_count": report.rows,
            "teacher": teacher.teacher,
            **{k: metadata_value(v) for k, v in lineage.items()},
            **report.metadata(),
            "unresolved_ids": unresolved.detail,
            "preview": preview(con, out, list(canonical.PAIRWISE)),
        }
        yield from audit_and_publish(
            con,
            the_lake,
            staged,
            rules,
            metadata,
            {
                "rows": report.rows,
                "lineage": lineage,
                "parse": report.metadata(),
                "unresolved_ids": unresolved.detail,
                "run_id": context.run.run_id,
            },
        )


hofstaetter_job = dg.define_asset_job(
    HOFSTAETTER_JOB,
    selection=dg.AssetSelection.assets(TEACHER_SCORES_KEY),
    description="Hofstaetter teacher scores, one teacher per run "
    "(needs the MS MARCO texts: job text_collections).",
)


def definitions() -> dg.Definitions:
    return dg.Definitions(assets=[hofstaetter_teacher_scores], jobs=[hofstaetter_job])
