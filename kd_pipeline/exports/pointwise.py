"""sentence-transformers pointwise pairs: (query, document, score = the teacher score).

The form for pointwise teacher data (LightOn) and for cross-encoder distillation from any
scored candidates: one row per scored (query, document), Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.rules import Rule, Table, finite, not_empty, rows_where, schema_is
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES
from kd_pipeline.exports.format import ExportFormat, ExportRun, Written

COLUMNS = {"query": "VARCHAR", "document": "VARCHAR", "score": "DOUBLE"}


@dataclass(frozen=True)
class PointwiseKnobs:
    """No knobs: every scored pair, in the source's order of queries and teacher rank."""


def write_pointwise(run: ExportRun) -> Written:
    rows = copy_parquet(
        run.con,
        "SELECT q.text AS query, d.text AS document, c.score "
        f"FROM {CANDIDATES} c JOIN {QUERIES} q USING (query_id) "
        f"JOIN {DOCUMENTS} d USING (doc_id) ORDER BY c.query_id, c.teacher_rank",
        run.out,
    )
    return Written(Table.parquet(str(run.out / "*.parquet")), {"part-*.parquet": rows}, {})


def pointwise_rules(_knobs: object = None) -> list[Rule]:
    return [
        Rule("schema", "Columns: query, document, score.", schema_is("schema", COLUMNS)),
        Rule(
            "texts_present",
            "Every text is present and non-empty.",
            rows_where(
                "texts_present",
                "query IS NULL OR query = '' OR document IS NULL OR document = ''",
                "left(query, 40)",
                "a null or empty text",
            ),
        ),
        Rule("finite_scores", "Every score is finite.", finite("finite_scores", "score", "query")),
        Rule("not_empty", "The export has rows.", not_empty("not_empty")),
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
            dg.TableColumn("query", "VARCHAR", description="query text"),
            dg.TableColumn("document", "VARCHAR", description="document text"),
            dg.TableColumn("score", "DOUBLE", description="the teacher score of the pair"),
        ]
    ),
    layout="`part-N.parquet`: `query, document, score`",
    write=write_pointwise,
    rules=pointwise_rules,
)
