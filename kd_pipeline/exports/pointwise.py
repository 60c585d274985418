"""sentence-transformers pointwise pairs: (query, document, score = the teacher score).

The form for pointwise teacher data (LightOn) and for cross-encoder distillation from any
scored candidates: one row per scored (query, document), Parquet. An ordered source (a
union mixture, whose `position` is its training order) is exported row for row in that
order, every row kept (exact repeats included) and `position` carried; any other source
gives one row per scored pair, by query and teacher rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.candidates import holds, increasing_in_file_order
from kd_pipeline.checks.rules import (
    Rule,
    RuleFn,
    Table,
    finite,
    not_empty,
    row_count_is,
    rows_where,
    schema_is,
    static,
)
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES, ROWS
from kd_pipeline.exports.format import ExportFormat, ExportRun, PartFiles, Written, rows_of

COLUMNS = {"query": "VARCHAR", "document": "VARCHAR", "score": "DOUBLE"}
ORDERED_COLUMNS = {"position": "BIGINT", **COLUMNS}


@dataclass(frozen=True)
class PointwiseKnobs(PartFiles):
    """rows_per_file only: every scored pair (or every row of an ordered source)."""


def write_pointwise(run: ExportRun) -> Written:
    """Write the pairs (scores transformed as the spec asks); rules bound to the count
    and, for an ordered source, to the written files' order."""
    con = run.con
    if run.ordered:
        con.execute(f"CREATE OR REPLACE TEMP TABLE kd_pointwise AS SELECT * FROM {ROWS}")
        order, position = "p.position", "CAST(p.position AS BIGINT) AS position, "
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE kd_pointwise AS SELECT query_id, doc_id, score, "
            f"teacher_rank FROM {CANDIDATES}"
        )
        order, position = "p.query_id, p.teacher_rank", ""
    scaled = run.apply_transform("kd_pointwise")
    rows = copy_parquet(
        con,
        f"SELECT {position}q.text AS query, d.text AS document, p.score "
        f"FROM kd_pointwise p JOIN {QUERIES} q USING (query_id) "
        f"JOIN {DOCUMENTS} d USING (doc_id) ORDER BY {order}",
        run.out,
        rows_per_file=run.knobs.rows_per_file,
    )
    ((expected,),) = con.execute("SELECT count(*) FROM kd_pointwise").fetchall()
    counts = {"rows": rows, "rows_expected": int(expected), **scaled}
    return Written(
        Table.parquet(str(run.out / "*.parquet")),
        {"part-*.parquet": rows},
        counts,
        facts=PointwiseFacts(str(run.out / "*.parquet") if run.ordered else None, int(expected)),
    )


@dataclass(frozen=True)
class PointwiseFacts:
    """ordered_glob: the written files of an ordered source, whose `position` must increase
    across them in name order (the mixture's order, no row twice), else None; expected:
    the source rows or scored pairs."""

    ordered_glob: str | None
    expected: int


def _in_order(facts: PointwiseFacts) -> RuleFn:
    if facts.ordered_glob is None:
        return holds("the source has no order: rows by query and rank")
    return increasing_in_file_order(facts.ordered_glob, "position")


def pointwise_rules() -> list[Rule[PointwiseFacts]]:
    """The checks of a pointwise export (facts: the written files and expected rows)."""
    return [
        Rule(
            "schema",
            "Columns: query, document, score (position first for an ordered source).",
            lambda f: schema_is(ORDERED_COLUMNS if f.ordered_glob else COLUMNS),
        ),
        Rule(
            "texts_present",
            "Every text is present and non-empty.",
            static(
                rows_where(
                    "query IS NULL OR query = '' OR document IS NULL OR document = ''",
                    "left(query, 40)",
                    "a null or empty text",
                )
            ),
        ),
        Rule("finite_scores", "Every score is finite.", static(finite("score", "query"))),
        Rule(
            "every_row_exported",
            "One row per source row (ordered source) or scored pair: none dropped.",
            lambda f: row_count_is(f.expected),
        ),
        Rule(
            "rows_in_source_order",
            "An ordered source's rows are in its `position` order across the part files.",
            _in_order,
        ),
        Rule("not_empty", "The export has rows.", static(not_empty())),
    ]


FORMAT = ExportFormat(
    name="pointwise",
    title="sentence-transformers (query, document, score) pairs (Parquet)",
    kinds=frozenset({"duckdb", "parquet"}),
    knobs=PointwiseKnobs,
    shapes=frozenset({"pairwise", "listwise", "pointwise"}),
    needs_positives=False,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn(
                "position", "BIGINT", description="ordered sources only: the training order"
            ),
            dg.TableColumn("query", "VARCHAR", description="query text"),
            dg.TableColumn("document", "VARCHAR", description="document text"),
            dg.TableColumn("score", "DOUBLE", description="the teacher score of the pair"),
        ]
    ),
    layout="`part-NNNNN.parquet`: `query, document, score` (`position` first for an ordered "
    "source); `validation/part-NNNNN.parquet` when the source has a validation split",
    write=write_pointwise,
    rules=pointwise_rules(),
    query_column="query",
    hf_configs={"default": "part-*.parquet"},
    row_count=rows_of("part-*.parquet"),
    preview_columns=lambda _knobs, ordered: [
        *(["position"] if ordered else []),
        "query",
        "document",
        "score",
    ],
    consumer=(
        '`datasets.load_dataset(folder, split="train")`, then sentence-transformers\' '
        "`CrossEncoder` with an MSE-style loss on `score` (drop `position` first if present: "
        "every column but the label is an input)."
    ),
)
