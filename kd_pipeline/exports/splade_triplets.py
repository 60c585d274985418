"""Materialised SPLADE triplets: what light-splade's dataset would sample, written out.

`(query_text, pos_text, neg_text, pos_score, neg_score)` rows, Parquet, seeded:
`query_based` gives one row per query per epoch (a random positive and a random
negative, as the consumer's query-based sampling), `positive_pair_based` one row per
(query, positive) per epoch. Negatives are drawn from the scored non-positives. Each draw
is the smallest md5 of (seed, epoch, ids): reproducible, uniform, and no Python in the
loop; rows are shuffled within an epoch the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from kd_pipeline.checks.rules import (
    Rule,
    Table,
    not_empty,
    row_count_is,
    rows_where,
    schema_is,
    static,
)
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES, seeded_order
from kd_pipeline.exports.format import ExportFormat, ExportRun, PartFiles, Written, rows_of
from kd_pipeline.exports.knobs import check_integer

COLUMNS = {
    "query_text": "VARCHAR",
    "pos_text": "VARCHAR",
    "neg_text": "VARCHAR",
    "pos_score": "DOUBLE",
    "neg_score": "DOUBLE",
}


@dataclass(frozen=True)
class TripletKnobs(PartFiles):
    """sampling_mode: query_based | positive_pair_based; epochs: how many draws; seed."""

    sampling_mode: Literal["query_based", "positive_pair_based"] = "query_based"
    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling_mode not in ("query_based", "positive_pair_based"):
            raise ValueError(
                f"sampling_mode={self.sampling_mode!r}: expected query_based or positive_pair_based"
            )
        check_integer("epochs", self.epochs, minimum=1)
        check_integer("seed", self.seed)


def write_triplets(run: ExportRun) -> Written:
    knobs: TripletKnobs = run.knobs
    con, seed = run.con, knobs.seed
    scaled = run.apply_transform(CANDIDATES)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE kd_epochs AS SELECT CAST(range AS INTEGER) AS epoch "
        f"FROM range({knobs.epochs})"
    )
    positives = f"(SELECT query_id, doc_id, score FROM {CANDIDATES} WHERE is_positive)"
    negatives = f"(SELECT query_id, doc_id, score FROM {CANDIDATES} WHERE NOT is_positive)"
    if knobs.sampling_mode == "query_based":
        draw_positive = seeded_order(seed, "e.epoch", "p.query_id", "p.doc_id", "'positive'")
        anchors = (
            f"SELECT e.epoch, p.query_id, arg_min(p.doc_id, {draw_positive}) AS pos_id "
            f"FROM kd_epochs e, {positives} p GROUP BY e.epoch, p.query_id"
        )
    else:
        anchors = f"SELECT e.epoch, p.query_id, p.doc_id AS pos_id FROM kd_epochs e, {positives} p"
    con.execute(f"CREATE OR REPLACE TEMP TABLE kd_anchors AS {anchors}")
    draw = seeded_order(seed, "a.epoch", "a.query_id", "a.pos_id", "n.doc_id")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE kd_triplets AS SELECT a.epoch, a.query_id, a.pos_id, "
        f"arg_min(n.doc_id, {draw}) AS neg_id FROM kd_anchors a JOIN {negatives} n "
        "USING (query_id) GROUP BY a.epoch, a.query_id, a.pos_id"
    )
    shuffle = seeded_order(seed, "t.epoch", "t.query_id", "t.pos_id")
    select = (
        "SELECT q.text AS query_text, pd.text AS pos_text, nd.text AS neg_text, "
        "ps.score AS pos_score, ns.score AS neg_score FROM kd_triplets t "
        f"JOIN {QUERIES} q ON q.query_id = t.query_id "
        f"JOIN {DOCUMENTS} pd ON pd.doc_id = t.pos_id JOIN {DOCUMENTS} nd ON nd.doc_id = t.neg_id "
        f"JOIN {CANDIDATES} ps ON ps.query_id = t.query_id AND ps.doc_id = t.pos_id "
        f"JOIN {CANDIDATES} ns ON ns.query_id = t.query_id AND ns.doc_id = t.neg_id "
        f"ORDER BY t.epoch, {shuffle}"
    )
    rows = copy_parquet(con, select, run.out, rows_per_file=knobs.rows_per_file)
    ((expected,),) = con.execute("SELECT count(*) FROM kd_anchors").fetchall()
    ((unsampled,),) = con.execute(
        "SELECT count(DISTINCT query_id) FROM kd_anchors ANTI JOIN "
        f"(SELECT DISTINCT query_id FROM {negatives}) USING (query_id)"
    ).fetchall()
    counts = {
        "rows": rows,
        "rows_expected": int(expected),
        "queries_without_negative": int(unsampled),
        **scaled,
    }
    return Written(
        Table.parquet(str(run.out / "*.parquet")),
        {"part-*.parquet": rows},
        counts,
        facts=int(expected),
    )


def triplet_rules() -> list[Rule[int]]:
    """The checks of a triplet export (facts: the rows one epoch samples)."""
    return [
        Rule("schema", "Columns: the consumer's 5-tuple.", static(schema_is(COLUMNS))),
        Rule(
            "every_anchor_sampled",
            "One row per query (or per query and positive) per epoch: a query without a "
            "negative to draw makes this fail.",
            row_count_is,
        ),
        Rule(
            "texts_present",
            "Every text is present and non-empty.",
            static(
                rows_where(
                    " OR ".join(
                        f"{c} IS NULL OR {c} = ''" for c in ("query_text", "pos_text", "neg_text")
                    ),
                    "left(query_text, 40)",
                    "a null or empty text",
                )
            ),
        ),
        Rule(
            "finite_scores",
            "Both scores are finite.",
            static(
                rows_where(
                    "NOT isfinite(pos_score) OR NOT isfinite(neg_score)",
                    "left(query_text, 40)",
                    "a score is NaN or infinite",
                )
            ),
        ),
        Rule("not_empty", "The export has rows.", static(not_empty())),
    ]


FORMAT = ExportFormat(
    name="splade_triplets",
    title="materialised SPLADE triplets (query, positive, negative texts + teacher scores)",
    kinds=frozenset({"duckdb", "parquet"}),
    knobs=TripletKnobs,
    shapes=frozenset({"pairwise", "listwise", "pointwise"}),
    needs_positives=True,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn(name, dtype, description=desc)
            for (name, dtype), desc in zip(
                COLUMNS.items(),
                [
                    "query text",
                    "a positive's text",
                    "a scored non-positive's text",
                    "teacher score of (query, positive)",
                    "teacher score of (query, negative)",
                ],
                strict=True,
            )
        ]
    ),
    layout="`part-NNNNN.parquet`: `query_text, pos_text, neg_text, pos_score, neg_score`; "
    "`validation/part-NNNNN.parquet` for the source's validation queries",
    write=write_triplets,
    rules=triplet_rules(),
    query_column="query_text",
    hf_configs={"default": "part-*.parquet"},
    row_count=rows_of("part-*.parquet"),
    preview_columns=lambda _knobs, _ordered: list(COLUMNS),
    consumer=(
        "`datasets.load_dataset(folder)` (splits `train`, and `validation` when the source "
        "has one): rows as light-splade's dataset yields them, `(query_text, pos_text, "
        "neg_text, pos_score, neg_score)`."
    ),
)
