"""sentence-transformers MarginMSE: (query, positive, negative, score = the teacher margin).

One row per (query, positive, negative) with `score = T(q, p) - T(q, n)`, or, with
`negatives_per_row: k`, the multi-negative form `query, positive, negative_1..negative_k,
score` where score is the list of the k margins. Parquet, read by
`datasets.load_dataset("parquet", data_files=...)`; the label column is named `score`, the
name sentence-transformers' trainers look for.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.candidates import holds, one_list_length
from kd_pipeline.checks.rules import Rule, RuleFn, Table, not_empty, rows_where, schema_is, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import (
    DOCUMENTS,
    QUERIES,
    NegativeChoice,
    list_candidates,
)
from kd_pipeline.exports.format import (
    ExportFormat,
    ExportRun,
    PartFiles,
    ShortQueries,
    Written,
    rows_of,
)
from kd_pipeline.exports.knobs import check_integer


@dataclass(frozen=True)
class MarginMseKnobs(NegativeChoice, PartFiles):
    """negatives_per_row: 1 = one row per (positive, negative) pair of each query (every
    chosen negative); k > 1 = one row per positive with the first k chosen negatives: every
    row has exactly k (the columns sentence-transformers reads), and a query with fewer is
    dropped and counted, never given a shorter row."""

    negatives_per_row: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        PartFiles.__post_init__(self)
        check_integer("negatives_per_row", self.negatives_per_row, minimum=1)


def columns(k: int) -> dict[str, str]:
    """The columns of rows with k negatives each (k = 1: one negative, a scalar margin)."""
    negatives = ["negative"] if k == 1 else [f"negative_{i}" for i in range(1, k + 1)]
    return {
        "query": "VARCHAR",
        "positive": "VARCHAR",
        **dict.fromkeys(negatives, "VARCHAR"),
        "score": "DOUBLE" if k == 1 else "DOUBLE[]",
    }


def write_margin_mse(run: ExportRun) -> Written:
    knobs: MarginMseKnobs = run.knobs
    listed = list_candidates(run.con, knobs)
    scaled = run.apply_transform(listed)
    negatives = (
        f"(SELECT query_id, doc_id, score, list_rank AS neg_rank FROM {listed} "
        "WHERE NOT is_positive)"
    )
    positives = (
        "(SELECT c.query_id, c.doc_id, c.score, c.list_rank AS teacher_rank, d.text "
        f"FROM {listed} c JOIN {DOCUMENTS} d USING (doc_id) WHERE c.is_positive)"
    )
    k = knobs.negatives_per_row
    if k == 1:
        select = (
            "SELECT q.text AS query, p.text AS positive, nd.text AS negative, "
            f"p.score - n.score AS score FROM {positives} p JOIN {negatives} n USING (query_id) "
            f"JOIN {QUERIES} q USING (query_id) JOIN {DOCUMENTS} nd ON nd.doc_id = n.doc_id "
            "ORDER BY p.query_id, p.teacher_rank, n.neg_rank"
        )
    else:
        lists = (
            "(SELECT n.query_id, list(nd.text ORDER BY n.neg_rank)[1:$k] AS texts, "
            f"list(n.score ORDER BY n.neg_rank)[1:$k] AS scores FROM {negatives} n "
            f"JOIN {DOCUMENTS} nd ON nd.doc_id = n.doc_id GROUP BY n.query_id "
            "HAVING count(*) >= $k)"
        )
        picked = ", ".join(f"l.texts[{i}] AS negative_{i}" for i in range(1, k + 1))
        select = (
            f"SELECT q.text AS query, p.text AS positive, {picked}, "
            "list_transform(l.scores, lambda s: p.score - s) AS score "
            f"FROM {positives} p JOIN {lists} l USING (query_id) JOIN {QUERIES} q "
            "USING (query_id) ORDER BY p.query_id, p.teacher_rank"
        )
    rows = copy_parquet(
        run.con,
        select,
        run.out,
        {"k": k} if k > 1 else None,
        rows_per_file=knobs.rows_per_file,
    )
    counts = {"rows": rows, **scaled}
    short = 0
    if k > 1:
        ((short,),) = run.con.execute(
            f"SELECT count(*) FROM (SELECT q.query_id FROM {QUERIES} q LEFT JOIN {negatives} n "
            f"USING (query_id) GROUP BY q.query_id HAVING count(n.doc_id) < {k})"
        ).fetchall()
        counts["queries_with_too_few_negatives"] = int(short)
    return Written(
        Table.parquet(str(run.out / "*.parquet")),
        {"part-*.parquet": rows},
        counts,
        facts=ShortQueries(run.export, int(short), k),
    )


def _texts_present(short: ShortQueries) -> RuleFn:
    texts = [c for c, t in columns(short.per_row).items() if t == "VARCHAR"]
    return rows_where(
        " OR ".join(f"{c} IS NULL OR {c} = ''" for c in texts),
        "left(query, 40)",
        "a null or empty text",
    )


def _finite_margins(short: ShortQueries) -> RuleFn:
    if short.per_row == 1:
        return rows_where("NOT isfinite(score)", "left(query, 40)", "margin not finite")
    return rows_where(
        "len(score) <> $k OR NOT list_bool_and(list_transform(score, lambda s: isfinite(s)))",
        "left(query, 40)",
        "margin not finite",
        {"k": short.per_row},
    )


def _one_list_length(short: ShortQueries) -> RuleFn:
    if short.per_row == 1:
        return holds("one negative a row: the score is one number")
    return one_list_length(
        "len(score)", short.per_row, "left(query, 40)", short.export, short.dropped
    )


# The checks of a MarginMSE export; facts: the partition's negatives_per_row and the
# queries dropped for too few negatives (a partition may override the knob).
MARGIN_MSE_RULES: list[Rule[ShortQueries]] = [
    Rule(
        "schema",
        "Columns: query, positive, negative(s), score.",
        lambda f: schema_is(columns(f.per_row)),
    ),
    Rule("texts_present", "Every text is present and non-empty.", _texts_present),
    Rule(
        "finite_margins",
        "Every margin is a finite number (and there are as many as negatives).",
        _finite_margins,
    ),
    Rule(
        "one_list_length",
        "Multi-negative rows: every `score` lists exactly `negatives_per_row` margins "
        "(queries with fewer negatives are dropped and counted; none able to fill it fails).",
        _one_list_length,
    ),
    Rule("not_empty", "The export has rows.", static(not_empty())),
]


FORMAT = ExportFormat(
    name="margin_mse",
    title="sentence-transformers MarginMSE rows (Parquet)",
    kinds=frozenset({"duckdb", "parquet"}),
    knobs=MarginMseKnobs,
    shapes=frozenset({"pairwise", "listwise"}),
    needs_positives=True,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn("query", "VARCHAR", description="query text"),
            dg.TableColumn("positive", "VARCHAR", description="relevant passage text"),
            dg.TableColumn(
                "negative", "VARCHAR", description="negative passage text (negative_1..k)"
            ),
            dg.TableColumn(
                "score", "DOUBLE", description="T(q, positive) - T(q, negative) (a list for k)"
            ),
        ]
    ),
    layout="`part-NNNNN.parquet`: `query, positive, negative, score` (or `negative_1..k`, "
    "`score` a list of k margins); `validation/part-NNNNN.parquet` for the source's "
    "validation queries",
    write=write_margin_mse,
    rules=MARGIN_MSE_RULES,
    query_column="query",
    hf_configs={"default": "part-*.parquet"},
    row_count=rows_of("part-*.parquet"),
    preview_columns=lambda knobs, _ordered: (
        ["query", "positive", "negative_1", "score"]
        if knobs.negatives_per_row > 1
        else ["query", "positive", "negative", "score"]
    ),
    consumer=(
        "`datasets.load_dataset(folder)` (splits `train`, and `validation` when the source "
        "has one), then sentence-transformers' `MarginMSELoss` (the label `score` is last)."
    ),
)
