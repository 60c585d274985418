"""PyLate knowledge distillation: three tables, as PyLate's KD examples load them.

    train:     query_id, document_ids (list), scores (list, same order, float32)
    queries:   query_id, text          (subfolder queries/)
    documents: document_id, text       (subfolder documents/)

Ids are strings (PyLate maps them to texts through the two other tables); each query's
documents are its scored candidates by descending teacher score, cut at `max_documents`.
The train table sits at the top of the folder (what the lake's catalog shows).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.rules import Rule, Table, not_empty, rows_where, schema_is
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES
from kd_pipeline.exports.format import ExportFormat, ExportRun, Written

TRAIN = {"query_id": "VARCHAR", "document_ids": "VARCHAR[]", "scores": "FLOAT[]"}


@dataclass(frozen=True)
class PylateKnobs:
    """max_documents: at most this many documents per query (the best-scored), or null."""

    max_documents: int | None = None

    def __post_init__(self) -> None:
        if self.max_documents is not None and (
            not isinstance(self.max_documents, int) or self.max_documents < 1
        ):
            raise ValueError(f"max_documents={self.max_documents!r}: expected >= 1 or null")


def write_pylate(run: ExportRun) -> Written:
    cut = (
        ""
        if run.knobs.max_documents is None
        else f"WHERE teacher_rank <= {run.knobs.max_documents}"
    )
    con = run.con
    con.execute(f"CREATE OR REPLACE TEMP TABLE kd_pylate AS SELECT * FROM {CANDIDATES} {cut}")
    rows = copy_parquet(
        con,
        "SELECT query_id, list(doc_id ORDER BY teacher_rank) AS document_ids, "
        "list(CAST(score AS FLOAT) ORDER BY teacher_rank) AS scores FROM kd_pylate "
        "GROUP BY query_id ORDER BY query_id",
        run.out,
        filename_prefix="train-",
    )
    (run.out / "queries").mkdir()
    (run.out / "documents").mkdir()
    queries = copy_parquet(
        con,
        f"SELECT query_id, text FROM {QUERIES} SEMI JOIN kd_pylate USING (query_id) "
        "ORDER BY query_id",
        run.out / "queries",
    )
    documents = copy_parquet(
        con,
        f"SELECT doc_id AS document_id, text FROM {DOCUMENTS} "
        "SEMI JOIN kd_pylate USING (doc_id) ORDER BY document_id",
        run.out / "documents",
    )
    return Written(
        Table.parquet(str(run.out / "*.parquet")),
        {"train-part-*.parquet": rows, "queries/": queries, "documents/": documents},
        {"train_rows": rows, "queries": queries, "documents": documents},
        pylate_rules(run.knobs, str(run.out)),
    )


def pylate_rules(_knobs: object = None, out: str | None = None) -> list[Rule]:
    queries = f"{out}/queries/*.parquet" if out else ""
    documents = f"{out}/documents/*.parquet" if out else ""
    return [
        Rule(
            "schema", "train: query_id, document_ids, scores (float32).", schema_is("schema", TRAIN)
        ),
        Rule(
            "lists_aligned",
            "document_ids and scores have the same length, and neither is empty.",
            rows_where(
                "lists_aligned",
                "len(document_ids) <> len(scores) OR len(document_ids) = 0",
                "query_id",
                "lists of different lengths (or empty)",
            ),
        ),
        Rule(
            "finite_scores",
            "Every score is finite.",
            rows_where(
                "finite_scores",
                "NOT list_bool_and(list_transform(scores, lambda s: isfinite(s)))",
                "query_id",
                "a score is NaN or infinite",
            ),
        ),
        Rule(
            "ids_have_texts",
            "Every query id is in queries/, every document id in documents/.",
            rows_where(
                "ids_have_texts",
                "query_id NOT IN (SELECT query_id FROM read_parquet($queries)) OR query_id IN "
                "(SELECT u.query_id FROM (SELECT query_id, unnest(document_ids) AS document_id "
                "FROM {table}) u ANTI JOIN read_parquet($documents) d USING (document_id))",
                "query_id",
                "an id without a text",
                {"queries": queries, "documents": documents},
            ),
        ),
        Rule("not_empty", "The train table has rows.", not_empty("not_empty")),
    ]


FORMAT = ExportFormat(
    name="pylate_kd",
    title="PyLate knowledge-distillation tables (train, queries, documents; Parquet)",
    kinds=frozenset({"duckdb", "parquet"}),
    knobs=PylateKnobs,
    shapes=frozenset({"pairwise", "listwise", "pointwise"}),
    needs_positives=False,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn("query_id", "VARCHAR", description="query id (queries/ has its text)"),
            dg.TableColumn(
                "document_ids", "VARCHAR[]", description="documents, best teacher score first"
            ),
            dg.TableColumn("scores", "FLOAT[]", description="teacher scores, same order"),
        ]
    ),
    layout="`train-part-N.parquet` (`query_id, document_ids, scores`), "
    "`queries/part-N.parquet` (`query_id, text`), "
    "`documents/part-N.parquet` (`document_id, text`)",
    write=write_pylate,
    rules=pylate_rules,
)
