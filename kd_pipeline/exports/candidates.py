"""One preparation for every format: the source's scored pairs joined to their texts, with
positives decided and unusable queries set aside, as three temp tables.

    kd_candidates(query_id, doc_id, score, is_positive, teacher_rank)
    kd_queries(query_id, text, split)
    kd_documents(doc_id, text, title)
    kd_rows(position, query_id, doc_id, score)     ordered sources only: every row, in order

Formats then only lay these out (SPLADE NDJSON, MarginMSE rows, PyLate lists, ...), so a
choice such as "a pair without a text is dropped" is made once, and counted once. The
same holds for the train/validation split: it is decided here, once per source
(`SourceSplit`), and every format of that source writes each query into that split only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import duckdb

from kd_pipeline.exports.knobs import check_integer
from kd_pipeline.exports.sources import ExportSource

CANDIDATES = "kd_candidates"
QUERIES = "kd_queries"
DOCUMENTS = "kd_documents"
ROWS = "kd_rows"
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SourceSplit:
    """The train/validation split of one source, shared by every export of it.

    A query goes to `validation` when a uniform number drawn from md5(seed, query text)
    is below `validation_fraction`: the same query (and two ids with the same text) lands
    in the same split in every format, every partition and every rebuild, and stays there
    as the source grows. 0 = every query is in `train`.
    """

    validation_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.validation_fraction, bool) or not isinstance(
            self.validation_fraction, int | float
        ):
            raise ValueError(f"validation_fraction={self.validation_fraction!r}: expected [0, 1)")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction!r}: expected [0, 1)")
        check_integer("seed", self.seed)

    def split_sql(self, text_column: str) -> str:
        """SQL: 'train' or 'validation' for a query with this text."""
        if self.validation_fraction <= 0:
            return "'train'"
        draw = uniform_draw(self.seed, text_column)
        fraction = float(self.validation_fraction)
        return f"CASE WHEN {draw} < {fraction!r} THEN 'validation' ELSE 'train' END"


def uniform_draw(seed: int, column: str) -> str:
    """SQL: a uniform number in [0, 1) from (seed, value): md5, so it is stable across
    DuckDB versions and machines (DuckDB's hash() is not)."""
    return (
        f"CAST(('0x' || md5({int(seed)} || ':' || {column})[1:13]) AS BIGINT) / 4503599627370496.0"
    )


@dataclass(frozen=True)
class Selection:
    """Knobs shared by every format: which candidates are positives, which queries stay.

    positives: `labels` = the source's relevance labels (Hofstaetter's positive passage,
      qrels-annotated runs, FiQA's `positive`); `teacher_top` = the `positive_top_k`
      best-scored candidates of each query (pseudo-labels, for unlabelled runs such as
      the RankZephyr re-rankings).
    drop_queries_without_negatives: false = such a query stays, and a format that needs
      negatives refuses the export (SPLADE rule 5 names it); true = dropped and counted.
    """

    positives: Literal["labels", "teacher_top"] = "labels"
    positive_top_k: int = 1
    drop_queries_without_negatives: bool = False

    def __post_init__(self) -> None:
        if self.positives not in ("labels", "teacher_top"):
            raise ValueError(f"positives={self.positives!r}: expected labels or teacher_top")
        check_integer("positive_top_k", self.positive_top_k, minimum=1)
        if not isinstance(self.drop_queries_without_negatives, bool):
            raise ValueError("drop_queries_without_negatives: expected true or false")


SELECTION_KNOBS = frozenset(f.name for f in fields(Selection))


@dataclass(frozen=True)
class TextGlobs:
    """The published Parquet of the query and document texts (pinned for the run)."""

    queries: str
    documents: str
    documents_have_titles: bool


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, str]) -> None:
    """Execute sql with the params it names (DuckDB refuses unused ones)."""
    con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})


def prepare_candidates(
    con: duckdb.DuckDBPyConnection,
    source: ExportSource,
    source_glob: str,
    texts: TextGlobs | None,
    selection: Selection,
    needs_positives: bool,
    split: SourceSplit | None = None,
) -> dict[str, Any]:
    """Create the tables on con; return the counts of what was kept and dropped."""
    split = split or SourceSplit()
    params = {"source": source_glob}
    con.execute(f"CREATE OR REPLACE TEMP TABLE kd_raw AS {source.candidates_select()}", params)
    if texts is None:  # pointwise: the texts are in the source itself
        _run(
            con,
            "CREATE OR REPLACE TEMP TABLE kd_query_texts AS SELECT query_id, "
            "any_value(query) AS text FROM read_parquet($source) GROUP BY query_id",
            params,
        )
        _run(
            con,
            "CREATE OR REPLACE TEMP TABLE kd_doc_texts AS SELECT doc_id, "
            "any_value(document) AS text, '' AS title FROM read_parquet($source) GROUP BY doc_id",
            params,
        )
        query_texts, doc_texts = "kd_query_texts", "kd_doc_texts"
    else:
        query_texts = "(SELECT query_id, text FROM read_parquet($queries))"
        title = "title" if texts.documents_have_titles else "''"
        doc_texts = f"(SELECT doc_id, text, {title} AS title FROM read_parquet($documents))"
        params = {**params, "queries": texts.queries, "documents": texts.documents}
    # the text tables' own blocking checks guarantee a text per id: read the ids only
    kept_query_texts = f"(SELECT query_id FROM {query_texts})"
    kept_doc_texts = f"(SELECT doc_id FROM {doc_texts})"
    positive = (
        "labelled"
        if selection.positives == "labels"
        else f"teacher_rank <= {selection.positive_top_k}"
    )
    # one pass: pairs with both texts, ranked by teacher score, flagged per query
    _run(
        con,
        "CREATE OR REPLACE TEMP TABLE kd_flagged AS SELECT query_id, doc_id, score, "
        "is_positive, teacher_rank, bool_or(is_positive) OVER per_query AS has_positive, "
        "bool_or(NOT is_positive) OVER per_query AS has_negative FROM ("
        f"SELECT query_id, doc_id, score, {positive} AS is_positive, teacher_rank FROM ("
        "SELECT r.*, CAST(row_number() OVER (PARTITION BY query_id ORDER BY score DESC, "
        f"doc_id) AS INTEGER) AS teacher_rank FROM kd_raw r "
        f"SEMI JOIN {kept_query_texts} q USING (query_id) "
        f"SEMI JOIN {kept_doc_texts} d USING (doc_id))) "
        "WINDOW per_query AS (PARTITION BY query_id)",
        params,
    )
    keep = ["true"]
    if needs_positives:
        keep.append("has_positive")
    if selection.drop_queries_without_negatives:
        keep.append("has_negative")
    _run(
        con,
        f"CREATE OR REPLACE TEMP TABLE {CANDIDATES} AS SELECT query_id, doc_id, score, "
        f"is_positive, teacher_rank FROM kd_flagged WHERE {' AND '.join(keep)}",
        params,
    )
    _run(
        con,
        f"CREATE OR REPLACE TEMP TABLE {QUERIES} AS SELECT query_id, text, "
        f"{split.split_sql('text')} AS split FROM {query_texts} "
        f"SEMI JOIN (SELECT DISTINCT query_id FROM {CANDIDATES}) USING (query_id)",
        params,
    )
    if source.ordered:  # every row, in the source's order (exact repeats included)
        _run(
            con,
            f"CREATE OR REPLACE TEMP TABLE {ROWS} AS SELECT position, query_id, doc_id, "
            "similarity AS score FROM read_parquet($source) ORDER BY position",
            params,
        )
    _run(
        con,
        f"CREATE OR REPLACE TEMP TABLE {DOCUMENTS} AS SELECT doc_id, text, title FROM {doc_texts} "
        f"SEMI JOIN (SELECT DISTINCT doc_id FROM {CANDIDATES}) USING (doc_id)",
        params,
    )
    counts = _counts(con, source, params, needs_positives, selection)
    for name in ("kd_raw", "kd_flagged", "kd_query_texts", "kd_doc_texts"):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    return counts


def _counts(
    con: duckdb.DuckDBPyConnection,
    source: ExportSource,
    params: dict[str, str],
    needs_positives: bool,
    selection: Selection,
) -> dict[str, Any]:
    def one(sql: str, bound: dict[str, str] | None = None) -> int:
        ((value,),) = con.execute(sql, bound or {}).fetchall()
        return int(value or 0)

    counts: dict[str, Any] = {
        "source_rows": one("SELECT coalesce(sum(occurrences), 0) FROM kd_raw"),
        "scored_pairs": one("SELECT count(*) FROM kd_raw"),
        # a pair listed more than once (Hofstaetter triples, exact repeats): one candidate
        "repeats_merged": one("SELECT coalesce(sum(occurrences - 1), 0) FROM kd_raw"),
        "pairs_without_text": one(
            "SELECT (SELECT count(*) FROM kd_raw) - (SELECT count(*) FROM kd_flagged)"
        ),
        "pairs_with_differing_scores": one("SELECT count(*) FROM kd_raw WHERE spread > 1e-9"),
        **dict(
            zip(
                ("queries_seen", "queries_without_positive", "queries_without_negative"),
                con.execute(
                    "SELECT count(DISTINCT query_id), "
                    "count(DISTINCT query_id) FILTER (NOT has_positive), "
                    "count(DISTINCT query_id) FILTER (NOT has_negative) FROM kd_flagged"
                ).fetchall()[0],
                strict=True,
            )
        ),
        "queries": one(f"SELECT count(*) FROM {QUERIES}"),
        "split_queries": {
            name: one(f"SELECT count(*) FROM {QUERIES} WHERE split = '{name}'") for name in SPLITS
        },
        "documents": one(f"SELECT count(*) FROM {DOCUMENTS}"),
        "candidates": one(f"SELECT count(*) FROM {CANDIDATES}"),
        "positives": one(f"SELECT count(*) FROM {CANDIDATES} WHERE is_positive"),
    }
    unscored = source.unscored_positives_select()
    if unscored is not None:
        counts["positives_without_teacher_score"] = one(unscored, {"source": params["source"]})
    dropped = []
    if needs_positives:
        dropped.append(f"{counts['queries_without_positive']} without a positive")
    if selection.drop_queries_without_negatives:
        dropped.append(f"{counts['queries_without_negative']} without a negative")
    counts["queries_dropped"] = "; ".join(dropped) or "none"
    return counts


@dataclass(frozen=True)
class NegativeChoice:
    """Which scored non-positives a format uses per query: all of them, or the
    `max_negatives` hardest (highest teacher score) or random ones (seeded)."""

    max_negatives: int | None = None
    negative_selection: Literal["hardest", "random"] = "hardest"
    seed: int = 0

    def __post_init__(self) -> None:
        check_integer("max_negatives", self.max_negatives, minimum=1, optional=True)
        if self.negative_selection not in ("hardest", "random"):
            raise ValueError(
                f"negative_selection={self.negative_selection!r}: expected hardest or random"
            )
        check_integer("seed", self.seed)


def seeded_order(seed: int, *columns: str) -> str:
    """SQL: a seeded pseudo-random sort key for a row (md5: the same on every machine)."""
    return f"md5(concat_ws(':', {int(seed)}, {', '.join(columns)}))"


def list_candidates(con: duckdb.DuckDBPyConnection, choice: NegativeChoice) -> str:
    """Create `kd_listed(query_id, doc_id, score, is_positive, list_rank)`: each query's
    positives (by teacher rank) and its chosen negatives (in the order chosen): exactly the
    documents a format lists, so a score transform over it is over what the consumer sees."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE kd_listed AS SELECT query_id, doc_id, score, "
        f"true AS is_positive, teacher_rank AS list_rank FROM {CANDIDATES} WHERE is_positive "
        "UNION ALL SELECT query_id, doc_id, score, false, neg_rank "
        f"FROM {selected_negatives(choice)}"
    )
    return "kd_listed"


def selected_negatives(choice: NegativeChoice) -> str:
    """SQL relation (query_id, doc_id, score, neg_rank): the chosen negatives, ranked 1..n
    in the order a format should use them."""
    order = (
        "score DESC, doc_id"
        if choice.negative_selection == "hardest"
        else seeded_order(choice.seed, "query_id", "doc_id")
    )
    limit = "" if choice.max_negatives is None else f" WHERE neg_rank <= {choice.max_negatives}"
    return (
        "(SELECT * FROM (SELECT query_id, doc_id, score, CAST(row_number() OVER "
        f"(PARTITION BY query_id ORDER BY {order}) AS INTEGER) AS neg_rank "
        f"FROM {CANDIDATES} WHERE NOT is_positive){limit})"
    )


def present_splits(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The splits the prepared queries fall in, `train` first (always listed: an export
    with no training query must fail its checks, not vanish)."""
    found = {s for (s,) in con.execute(f"SELECT DISTINCT split FROM {QUERIES}").fetchall()}
    return [s for s in SPLITS if s == "train" or s in found]


def keep_all_splits(con: duckdb.DuckDBPyConnection, ordered: bool) -> None:
    """Keep the prepared tables of every split as kd_all_* (restrict_to_split reads them)."""
    for table in (CANDIDATES, QUERIES, DOCUMENTS, *((ROWS,) if ordered else ())):
        con.execute(f"ALTER TABLE {table} RENAME TO kd_all_{table.removeprefix('kd_')}")


def restrict_to_split(con: duckdb.DuckDBPyConnection, split: str, ordered: bool) -> None:
    """Make the candidate tables hold one split's queries (and only their documents), so a
    format written now cannot put any other query in this split's files."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {QUERIES} AS SELECT * FROM kd_all_queries "
        "WHERE split = $split",
        {"split": split},
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {CANDIDATES} AS SELECT c.* FROM kd_all_candidates c "
        f"SEMI JOIN {QUERIES} USING (query_id)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {DOCUMENTS} AS SELECT d.* FROM kd_all_documents d "
        f"SEMI JOIN (SELECT DISTINCT doc_id FROM {CANDIDATES}) USING (doc_id)"
    )
    if ordered:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {ROWS} AS SELECT r.* FROM kd_all_rows r "
            f"SEMI JOIN {QUERIES} USING (query_id) ORDER BY position"
        )
