"""Rank-DistiLLM: ranked candidate lists for MS MARCO passage train queries (Zenodo).

`rank_distillm/runs` has one partition per published run: two first-stage runs (BM25 and
ColBERTv2, top 500) that are *annotated* with the MS MARCO train qrels, and four RankZephyr
re-rankings of 10,000 sampled queries (top 100, 50 or 10). A partition is the TREC run
(md5-verified, split on any whitespace: the BM25 runs use spaces and `Q0`, the ColBERT ones
tabs and `0`), cut to the variant's top-k, in the canonical listwise table.

Annotated variants mark each ranked passage `is_positive` from the qrels and add the
relevant passages the top-k misses as rows with a null rank and score, so every judged
query keeps its positives; the other variants leave `is_positive` null (not annotated).
"""

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from kd_pipeline import canonical
from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.candidates import evaluate_once, listwise_rules, malformed_lines
from kd_pipeline.checks.rules import Rule, Table
from kd_pipeline.engine import engine_connection
from kd_pipeline.families.text import (
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QRELS_TRAIN_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    metadata_value,
    published_glob,
    published_versions,
)
from kd_pipeline.families.upstream import RUN_VARIANTS, RunVariant, fetch_zenodo_file
from kd_pipeline.metadata import preview
from kd_pipeline.parsers import TREC_RUN, ParseReport, append_parquet, copy_delimited
from kd_pipeline.resources import LakeResource, UpstreamResource

RUNS_KEY = dg.AssetKey(["rank_distillm", "runs"])
rank_distillm_partitions = dg.StaticPartitionsDefinition(list(RUN_VARIANTS))
RANK_DISTILLM_JOB = "rank_distillm_runs"

# The seed's dataset ids are unverified; the scheme here is `com.github.webis-de.
# rank-distillm.<variant>` with the partition key as the variant, for all six runs.
PREPARE_IDS: dict[str, tuple[dg.AssetKey, str | None]] = {
    f"com.github.webis-de.rank-distillm.{variant}": (RUNS_KEY, variant) for variant in RUN_VARIANTS
}

_POSITIVES = "(SELECT DISTINCT query_id, doc_id FROM read_parquet($qrels) WHERE relevance > 0)"


def write_run(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    out_dir: Path,
    top_k: int,
    qrels_glob: str | None = None,
    label: str | None = None,
) -> ParseReport:
    """Parse a TREC run into out_dir as the canonical listwise table, ranks <= top_k.

    The run is parsed, filtered and reconciled in one pass (`parsers.copy_delimited` with
    `keep`); `extra["lines_beyond_top_k"]` counts the rows ranked below top_k. With qrels,
    annotate `is_positive` and append the relevant documents of each ranked query that the
    kept list misses (`extra["unretrieved_positives"]` rows, rank null).
    """
    keep = "rank <= $top_k"
    if qrels_glob is None:
        select = (
            "SELECT query_id, doc_id, rank, score, CAST(NULL AS BOOLEAN) AS is_positive FROM {rows}"
        )
        params: dict[str, object] = {"top_k": top_k}
    else:
        select = (
            "SELECT r.query_id, r.doc_id, r.rank, r.score, p.doc_id IS NOT NULL AS is_positive "
            f"FROM {{rows}} r LEFT JOIN {_POSITIVES} p "
            "ON r.query_id = p.query_id AND r.doc_id = p.doc_id"
        )
        params = {"top_k": top_k, "qrels": qrels_glob}
    report = copy_delimited(
        con, path, TREC_RUN, select, out_dir, label=label, params=params, keep=keep
    )
    extra = dict(report.extra)
    extra["lines_beyond_top_k"] = extra.pop("rows_filtered_out")
    report = replace(report, extra=extra)
    if qrels_glob is None:
        return report
    kept = "read_parquet($kept)"
    unretrieved = append_parquet(
        con,
        "SELECT p.query_id, p.doc_id, CAST(NULL AS INTEGER) AS rank, "
        f"CAST(NULL AS DOUBLE) AS score, true AS is_positive FROM {_POSITIVES} p "
        f"WHERE p.query_id IN (SELECT query_id FROM {kept}) AND NOT EXISTS "
        f"(SELECT 1 FROM {kept} k WHERE k.query_id = p.query_id AND k.doc_id = p.doc_id)",
        out_dir,
        "unretrieved-positives",
        {"qrels": qrels_glob, "kept": str(out_dir / "*.parquet")},
    )
    return replace(report, extra={**report.extra, "unretrieved_positives": unretrieved})


def run_rules(
    variant: RunVariant | None = None,
    reports: list[ParseReport] | None = None,
    queries_glob: str = "",
    documents_glob: str = "",
) -> list[Rule]:
    """The listwise rules plus: every line of the run parsed."""
    annotated = variant is None or variant.annotated
    references = [("query_id", queries_glob, "query_id"), ("doc_id", documents_glob, "doc_id")]
    return [
        *listwise_rules(
            canonical.LISTWISE,
            references,
            None if annotated else "not an annotated variant: no relevance labels",
        ),
        Rule(
            "no_malformed_lines",
            "Every line of the run parsed (malformed ones are reported as file:line).",
            malformed_lines("no_malformed_lines", reports or []),
        ),
    ]


@dg.asset(
    key=RUNS_KEY,
    partitions_def=rank_distillm_partitions,
    deps=[MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_QRELS_TRAIN_KEY],
    group_name="rank_distillm",
    kinds={"duckdb", "parquet"},
    owners=["team:kd-pipeline"],
    pool="duckdb",
    description="Ranked MS MARCO passage candidates per train query from the Rank-DistiLLM "
    "runs (BM25/ColBERTv2 annotated with qrels, RankZephyr re-rankings), one partition a run.",
    metadata={
        "dagster/column_schema": canonical.table_schema(canonical.LISTWISE),
        "upstream": "zenodo.org/records/12528410",
        "top_k": dg.MetadataValue.json({v: r.top_k for v, r in RUN_VARIANTS.items()}),
    },
    check_specs=check_specs(
        run_rules(), RUNS_KEY, upstream=True, partitions_def=rank_distillm_partitions
    ),
)
def rank_distillm_runs(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    upstream: UpstreamResource,
    duckdb: DuckDBResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    variant = RUN_VARIANTS[context.partition_key]
    the_lake = lake.lake()
    texts = [MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_COLLECTION_KEY]
    if variant.annotated:
        texts.append(MSMARCO_QRELS_TRAIN_KEY)
    globs = [published_glob(the_lake, k) for k in texts]
    fetcher = upstream.fetcher()
    fetched = fetch_zenodo_file(fetcher, variant, context.run.tags)
    context.log.info(
        f"{variant.variant}: {fetched.path.name} (md5 {fetched.md5}: "
        f"{fetched.checksum_source}), top {variant.top_k}"
    )
    with (
        engine_connection(duckdb, the_lake) as con,
        the_lake.stage(RUNS_KEY.path, variant.variant) as staged,
    ):
        qrels = globs[2] if variant.annotated else None
        report = write_run(con, fetched.path, staged.path, variant.top_k, qrels, variant.file)
        rows = report.rows + report.extra.get("unretrieved_positives", 0)
        out = Table.parquet(staged.parquet_glob())
        lineage = {
            **fetched.metadata(),
            "source": fetcher.describe(),
            "texts": published_versions(the_lake, texts),
        }
        rules, unresolved = evaluate_once(
            run_rules(variant, [report], globs[0], globs[1]), "ids_resolve_to_texts", con, out
        )
        metadata = {
            "dagster/row_count": rows,
            "top_k": variant.top_k,
            "annotated": variant.annotated,
            **{k: metadata_value(v) for k, v in lineage.items()},
            **report.metadata(),
            **{k: metadata_value(v) for k, v in report.extra.items()},
            "unresolved_ids": unresolved.detail,
            "preview": preview(con, out, list(canonical.LISTWISE)),
        }
        yield from audit_and_publish(
            con,
            the_lake,
            staged,
            rules,
            metadata,
            {
                "rows": rows,
                "top_k": variant.top_k,
                "lineage": lineage,
                "parse": {**report.metadata(), **report.extra},
                "unresolved_ids": unresolved.detail,
                "run_id": context.run.run_id,
            },
        )


rank_distillm_job = dg.define_asset_job(
    RANK_DISTILLM_JOB,
    selection=dg.AssetSelection.assets(RUNS_KEY),
    description="Rank-DistiLLM runs, one variant per run "
    "(needs the MS MARCO texts and qrels: job text_collections).",
)


def definitions() -> dg.Definitions:
    return dg.Definitions(assets=[rank_distillm_runs], jobs=[rank_distillm_job])
