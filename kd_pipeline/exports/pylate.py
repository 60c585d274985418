"""PyLate knowledge distillation: three tables, as PyLate's KD examples load them.

    train:     query_id, document_ids (list), scores (list, same order, float32)
    queries:   query_id, text          (subfolder queries/)
    documents: document_id, text       (subfolder documents/)

Ids are strings (PyLate maps them to texts through the two other tables); each query's
documents are its `documents_per_query` best-scored candidates, by descending teacher
score. Every row has exactly that many: PyLate's collator stacks a batch's scores with
`torch.tensor`, which fails on lists of different lengths, so a query with fewer scored
candidates (with texts) is dropped and counted, never shortened. The train table sits at
the top of the folder (what the lake's catalog shows); the validation split's three tables
under `validation/`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.candidates import one_list_length
from kd_pipeline.checks.rules import Rule, Table, not_empty, rows_where, schema_is, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES
from kd_pipeline.exports.format import (
    ExportFormat,
    ExportRun,
    PartFiles,
    ShortQueries,
    Written,
    rows_of,
)
from kd_pipeline.exports.knobs import check_integer

TRAIN = {"query_id": "VARCHAR", "document_ids": "VARCHAR[]", "scores": "FLOAT[]"}


@dataclass(frozen=True)
class PylateKnobs(PartFiles):
    """documents_per_query: the one list length of every row (the best-scored documents);
    a query with fewer scored candidates is dropped and counted."""

    documents_per_query: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("documents_per_query", self.documents_per_query, minimum=1)


def write_pylate(run: ExportRun) -> Written:
    """Write the three tables: only queries with at least `documents_per_query` scored
    candidates, each cut to exactly that many (the rest dropped and counted)."""
    n = run.knobs.documents_per_query
    con = run.con
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE kd_pylate AS SELECT * FROM {CANDIDATES} "
        f"WHERE teacher_rank <= {n} AND query_id IN "
        f"(SELECT query_id FROM {CANDIDATES} GROUP BY query_id HAVING count(*) >= {n})"
    )
    ((short,),) = con.execute(
        f"SELECT count(*) FROM (SELECT query_id FROM {CANDIDATES} GROUP BY query_id "
        f"HAVING count(*) < {n})"
    ).fetchall()
    scaled = run.apply_transform("kd_pylate")
    rows = copy_parquet(
        con,
        "SELECT query_id, list(doc_id ORDER BY teacher_rank) AS document_ids, "
        "list(CAST(score AS FLOAT) ORDER BY teacher_rank) AS scores FROM kd_pylate "
        "GROUP BY query_id ORDER BY query_id",
        run.out,
        filename_prefix="train-",
        rows_per_file=run.knobs.rows_per_file,
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
    counts = {
        "train_rows": rows,
        "queries": queries,
        "documents": documents,
        "documents_per_query": n,
        "queries_dropped_too_few_documents": int(short),
        **scaled,
    }
    return Written(
        Table.parquet(str(run.out / "*.parquet")),
        {"train-part-*.parquet": rows, "queries/": queries, "documents/": documents},
        counts,
        facts=PylateFacts(str(run.out), ShortQueries(run.export, int(short), n)),
    )


@dataclass(frozen=True)
class PylateFacts:
    """What the PyLate rules read besides the train table: the export folder (its
    queries/ and documents/ tables) and the queries dropped for too few documents."""

    out: str
    short: ShortQueries


def pylate_rules() -> list[Rule[PylateFacts]]:
    """The checks of a PyLate export."""
    return [
        Rule(
            "schema",
            "train: query_id, document_ids, scores (float32).",
            static(schema_is(TRAIN)),
        ),
        Rule(
            "lists_aligned",
            "document_ids and scores have the same length, and neither is empty.",
            static(
                rows_where(
                    "len(document_ids) <> len(scores) OR len(document_ids) = 0",
                    "query_id",
                    "lists of different lengths (or empty)",
                )
            ),
        ),
        Rule(
            "finite_scores",
            "Every score is finite.",
            static(
                rows_where(
                    "NOT list_bool_and(list_transform(scores, lambda s: isfinite(s)))",
                    "query_id",
                    "a score is NaN or infinite",
                )
            ),
        ),
        Rule(
            "ids_have_texts",
            "Every query id is in queries/, every document id in documents/.",
            lambda f: rows_where(
                "query_id NOT IN (SELECT query_id FROM read_parquet($queries)) OR query_id IN "
                "(SELECT u.query_id FROM (SELECT query_id, unnest(document_ids) AS document_id "
                "FROM {table}) u ANTI JOIN read_parquet($documents) d USING (document_id))",
                "query_id",
                "an id without a text",
                {
                    "queries": f"{f.out}/queries/*.parquet",
                    "documents": f"{f.out}/documents/*.parquet",
                },
            ),
        ),
        Rule(
            "one_list_length",
            "Every row lists exactly `documents_per_query` documents (PyLate batches them "
            "with torch.tensor); a source where no query can fill it fails, naming the count.",
            lambda f: one_list_length(
                "len(document_ids)", f.short.per_row, "query_id", f.short.export, f.short.dropped
            ),
        ),
        Rule("not_empty", "The train table has rows.", static(not_empty())),
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
    layout="`train-part-NNNNN.parquet` (`query_id, document_ids, scores`), "
    "`queries/part-NNNNN.parquet` (`query_id, text`), "
    "`documents/part-NNNNN.parquet` (`document_id, text`); the same three under "
    "`validation/` for the source's validation queries",
    write=write_pylate,
    rules=pylate_rules(),
    query_column="query_id",
    hf_configs={
        "train": "train-part-*.parquet",
        "queries": "queries/*.parquet",
        "documents": "documents/*.parquet",
    },
    hf_default="train",
    row_count=rows_of("train-part-*.parquet"),
    consumer=(
        'PyLate\'s knowledge-distillation example: `load_dataset(folder, "train", '
        'split="train")`, `load_dataset(folder, "queries", split="train")`, '
        '`load_dataset(folder, "documents", split="train")`, then '
        "`pylate.utils.KDProcessing(queries=..., documents=...)` on the train set."
    ),
)
