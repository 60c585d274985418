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

from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline import canonical
from kd_pipeline.checks.candidates import (
    UNRESOLVED_RULE,
    ReadFacts,
    listwise_rules,
    parsed_rule,
)
from kd_pipeline.checks.rules import Rule
from kd_pipeline.families.text import (
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QRELS_TRAIN_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
)
from kd_pipeline.families.upstream import RUN_VARIANTS, fetch_zenodo_file
from kd_pipeline.lake_asset import Built, LakeAsset, Step, lake_asset
from kd_pipeline.lineage import published_glob, published_versions
from kd_pipeline.metadata import preview
from kd_pipeline.parsers import TREC_RUN, ParseReport, append_parquet, copy_delimited

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


# The listwise rules plus: every line of the run parsed. A variant that is not annotated
# has no relevance labels (its facts say so: `every_query_has_positive` then holds).
RUN_RULES: list[Rule[ReadFacts]] = [
    *listwise_rules(canonical.LISTWISE),
    parsed_rule("Every line of the run parsed (malformed ones are reported as file:line)."),
]

RUNS = LakeAsset(
    key=RUNS_KEY,
    group="rank_distillm",
    description="Ranked MS MARCO passage candidates per train query from the Rank-DistiLLM "
    "runs (BM25/ColBERTv2 annotated with qrels, RankZephyr re-rankings), one partition a run.",
    rules=RUN_RULES,
    partitions_def=rank_distillm_partitions,
    deps=[MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_QRELS_TRAIN_KEY],
    metadata={
        "dagster/column_schema": canonical.table_schema(canonical.LISTWISE),
        "upstream": "zenodo.org/records/12528410",
        "top_k": dg.MetadataValue.json({v: r.top_k for v, r in RUN_VARIANTS.items()}),
    },
    reads_upstream=True,
    reported={UNRESOLVED_RULE: "unresolved_ids"},
)


def write_runs(step: Step) -> Built[ReadFacts]:
    """One run, fetched (md5-verified), cut to its top-k, annotated if the variant is."""
    variant = RUN_VARIANTS[step.context.partition_key]
    texts = [MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_COLLECTION_KEY]
    if variant.annotated:
        texts.append(MSMARCO_QRELS_TRAIN_KEY)
    globs = [published_glob(step.lake, k) for k in texts]
    fetched = fetch_zenodo_file(step.fetcher, variant, step.context.run.tags)
    step.log(
        f"{variant.variant}: {fetched.path.name} (md5 {fetched.md5}: "
        f"{fetched.checksum_source}), top {variant.top_k}"
    )
    qrels = globs[2] if variant.annotated else None
    report = write_run(step.con, fetched.path, step.staged.path, variant.top_k, qrels, variant.file)
    rows = report.rows + report.extra.get("unretrieved_positives", 0)
    lineage = {
        **fetched.metadata(),
        "source": step.fetcher.describe(),
        "texts": published_versions(step.lake, texts),
    }
    parse = {**report.metadata(), **report.extra}
    return Built(
        rows,
        ReadFacts(
            [report],
            [("query_id", globs[0], "query_id"), ("doc_id", globs[1], "doc_id")],
            None if variant.annotated else "not an annotated variant: no relevance labels",
        ),
        metadata={
            "top_k": variant.top_k,
            "annotated": variant.annotated,
            **lineage,
            **parse,
            "preview": preview(step.con, step.table, list(canonical.LISTWISE)),
        },
        manifest={"top_k": variant.top_k, "lineage": lineage, "parse": parse},
    )


rank_distillm_runs = lake_asset(RUNS, write_runs)


rank_distillm_job = dg.define_asset_job(
    RANK_DISTILLM_JOB,
    selection=dg.AssetSelection.assets(RUNS_KEY),
    description="Rank-DistiLLM runs, one variant per run "
    "(needs the MS MARCO texts and qrels: job text_collections).",
)
