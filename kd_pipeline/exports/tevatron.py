"""Tevatron distillation JSONL: one query a line with its scored positive and negative
passages, `{"query_id", "query", "positive_passages": [{"docid", "title", "text",
"score"}], "negative_passages": [...]}`.

Tevatron samples its training negatives from `negative_passages` and fails on an empty
list, so every line must have both kinds (blocking). It draws `train_group_size - 1` of
them per step (with replacement when a line has fewer), so lines need not all have the same
number: no fixed length is imposed here. The lines are audited as written (DuckDB reads the
JSONL back); `index-part-00000.parquet` (per query: how many of each) is the table the
lake's catalog shows. The file is `train.jsonl`; the source's validation queries go to
`validation/validation.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kd_pipeline.checks.rules import Rule, Table, not_empty, rows_where, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import (
    DOCUMENTS,
    QUERIES,
    NegativeChoice,
    list_candidates,
)
from kd_pipeline.exports.compression import gzip_file
from kd_pipeline.exports.format import ExportFormat, ExportRun, Written
from kd_pipeline.exports.knobs import check_integer
from kd_pipeline.lake import quote_literal


@dataclass(frozen=True)
class TevatronKnobs(NegativeChoice):
    """max_negatives / negative_selection / seed: which negatives each line lists;
    gzip_level: 1-9 for `train.jsonl.gz`, null for plain JSONL."""

    gzip_level: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("gzip_level", self.gzip_level, minimum=1, maximum=9, optional=True)


def _passages(relation: str, order: str) -> str:
    return (
        f"list({{'docid': c.doc_id, 'title': d.title, 'text': d.text, 'score': c.score}} "
        f"ORDER BY {order}) FROM {relation} c JOIN {DOCUMENTS} d USING (doc_id) "
        "WHERE c.query_id = q.query_id"
    )


def write_tevatron(run: ExportRun) -> Written:
    knobs: TevatronKnobs = run.knobs
    con = run.con
    listed = list_candidates(con, knobs)
    scaled = run.apply_transform(listed)
    file = f"{run.split}.jsonl"
    positives = f"(SELECT * FROM {listed} WHERE is_positive)"
    negatives = f"(SELECT * FROM {listed} WHERE NOT is_positive)"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE kd_tevatron AS SELECT q.query_id, q.text AS query, "
        f"coalesce((SELECT {_passages(positives, 'c.list_rank')}), []) AS positive_passages, "
        f"coalesce((SELECT {_passages(negatives, 'c.list_rank')}), []) "
        f"AS negative_passages FROM {QUERIES} q ORDER BY q.query_id"
    )
    plain = run.out / file if knobs.gzip_level is None else run.scratch / file
    ((rows,),) = con.execute(
        f"COPY kd_tevatron TO {quote_literal(str(plain))} (FORMAT json)"
    ).fetchall()
    written = plain
    if knobs.gzip_level is not None:
        written = run.out / f"{file}.gz"
        gzip_file(plain, written, knobs.gzip_level, run.threads)
        plain.unlink()
    copy_parquet(
        con,
        "SELECT query_id, len(positive_passages) AS positive_passages, "
        "len(negative_passages) AS negative_passages FROM kd_tevatron ORDER BY query_id",
        run.out,
        filename_prefix="index-",
    )
    table = Table(
        "read_json($jsonl, format = 'newline_delimited', columns = {'query_id': 'VARCHAR', "
        "'query': 'VARCHAR', 'positive_passages': 'STRUCT(docid VARCHAR, title VARCHAR, "
        "text VARCHAR, score DOUBLE)[]', 'negative_passages': 'STRUCT(docid VARCHAR, "
        "title VARCHAR, text VARCHAR, score DOUBLE)[]'})",
        {"jsonl": str(written)},
    )
    return Written(table, {written.name: int(rows)}, {"lines": int(rows), **scaled})


def _passage_problem(column: str) -> str:
    return (
        f"len({column}) = 0 OR NOT list_bool_and(list_transform({column}, lambda p: "
        "p.docid IS NOT NULL AND p.text IS NOT NULL AND p.text <> '' AND "
        "p.score IS NOT NULL AND isfinite(p.score)))"
    )


def tevatron_rules() -> list[Rule[None]]:
    """The checks of a Tevatron export (they need no facts of the run)."""
    return [
        Rule(
            "every_line_has_positive",
            "Every line lists a positive passage.",
            static(
                rows_where(
                    "len(positive_passages) = 0",
                    "query_id",
                    "no positive passage",
                )
            ),
        ),
        Rule(
            "every_line_has_negative",
            "Every line lists a negative passage (Tevatron samples from them).",
            static(
                rows_where(
                    "len(negative_passages) = 0",
                    "query_id",
                    "no negative passage",
                )
            ),
        ),
        Rule(
            "passages_complete",
            "Every passage has a docid, a text and a finite score; every query a text.",
            static(
                rows_where(
                    "query IS NULL OR query = '' OR "
                    f"({_passage_problem('positive_passages')} AND len(positive_passages) > 0) OR "
                    f"({_passage_problem('negative_passages')} AND len(negative_passages) > 0)",
                    "query_id",
                    "a passage without docid, text or finite score (or a query without text)",
                )
            ),
        ),
        Rule("not_empty", "The file has lines.", static(not_empty())),
    ]


FORMAT = ExportFormat(
    name="tevatron",
    title="Tevatron distillation JSONL",
    kinds=frozenset({"duckdb", "json"}),
    knobs=TevatronKnobs,
    shapes=frozenset({"pairwise", "listwise"}),
    needs_positives=True,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn("query_id", "VARCHAR", description="query id"),
            dg.TableColumn("positive_passages", "BIGINT", description="positives listed"),
            dg.TableColumn("negative_passages", "BIGINT", description="negatives listed"),
        ]
    ),
    layout='`train.jsonl[.gz]`: `{"query_id", "query", "positive_passages": [{"docid", '
    '"title", "text", "score"}], "negative_passages": [...]}`; `index-part-00000.parquet`; '
    "`validation/validation.jsonl[.gz]` for the source's validation queries",
    write=write_tevatron,
    rules=tevatron_rules(),
    query_column="query_id",
    hf_configs={"default": "{split}.jsonl*"},
    row_count=lambda written: int(written.counts["lines"]),
    consumer=(
        "Tevatron: `--dataset_name json --dataset_path <folder>/train.jsonl` (its legacy "
        'distillation format), or `datasets.load_dataset(folder, split="train")`.'
    ),
)
