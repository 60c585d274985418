"""Exact deduplication of (query, document) pairs, within a partition or across sources.

Two texts are the same pair when their normalised forms are equal: Unicode NFC,
whitespace runs collapsed to one space and trimmed, case kept unless `casefold`. Of the
copies, the row kept is the one with the highest similarity, then the first source in spec
order, then the first row in file order.

It streams: the first pass keeps only a 128-bit hash of the normalised pair and a row's
address (source, file index in the glob's sorted order, row number: 40 bytes a row with
the hash and similarity, never the text nor the file's path) for every candidate row, so
memory is bounded by that hash set; the second pass re-reads the rows and keeps those
whose address won.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

KEEP_TABLE = "dedup_keep"


# Whitespace that normalisation would change: a run of two, a tab/newline, or at an end.
_UNTIDY_SPACE = r"'[\t\n\f\r ]{2}|[\t\n\f\r]|^ | $'"


def normalized_text_sql(column: str, casefold: bool) -> str:
    """NFC, whitespace runs collapsed and trimmed (the regex only runs on texts that need
    it: rewriting every single space made it most of dedup's time), optionally lowercased."""
    nfc = f"nfc_normalize({column})"
    text = (
        f"CASE WHEN regexp_matches({column}, {_UNTIDY_SPACE}) "
        f"THEN trim(regexp_replace({nfc}, '\\s+', ' ', 'g')) ELSE {nfc} END"
    )
    return f"lower({text})" if casefold else text


def pair_key_sql(casefold: bool, query: str = "query", document: str = "document") -> str:
    """The dedup key of a row: the 128-bit md5 of the normalised query and document (a
    number, half the memory of its hex text)."""
    return (
        f"md5_number({normalized_text_sql(query, casefold)} || chr(31) || "
        f"{normalized_text_sql(document, casefold)})"
    )


@dataclass(frozen=True)
class DedupSource:
    """One input of a dedup: an index (its rank in spec order), a label and the SQL that
    yields its candidate rows with `file_index` and `file_row_number` columns."""

    index: int
    label: str
    select: str
    params: dict[str, Any]


def build_keep_table(
    con: duckdb.DuckDBPyConnection, sources: Sequence[DedupSource], casefold: bool
) -> dict[str, dict[str, int]]:
    """Create the temp table `dedup_keep(source_index, file_index, file_row_number)` of the
    winning rows; return how many rows each source lost to which source."""
    con.execute("DROP TABLE IF EXISTS dedup_candidates")
    con.execute(
        "CREATE TEMP TABLE dedup_candidates (pair_key UHUGEINT, similarity DOUBLE, "
        "source_index INTEGER, file_index UINTEGER, file_row_number BIGINT)"
    )
    for source in sources:
        con.execute(
            f"INSERT INTO dedup_candidates SELECT {pair_key_sql(casefold)}, similarity, "
            f"$source_index, file_index, file_row_number FROM ({source.select})",
            {**source.params, "source_index": source.index},
        )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE dedup_ranked AS SELECT *, row_number() OVER ("
        "PARTITION BY pair_key ORDER BY similarity DESC, source_index, file_index, "
        "file_row_number) AS copy_rank FROM dedup_candidates"
    )
    con.execute("DROP TABLE dedup_candidates")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {KEEP_TABLE} AS SELECT source_index, file_index, "
        "file_row_number FROM dedup_ranked WHERE copy_rank = 1"
    )
    losses = con.execute(
        "SELECT l.source_index, w.source_index, count(*) FROM dedup_ranked l "
        "JOIN dedup_ranked w ON l.pair_key = w.pair_key AND w.copy_rank = 1 "
        "WHERE l.copy_rank > 1 GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    con.execute("DROP TABLE dedup_ranked")
    labels = {s.index: s.label for s in sources}
    lost: dict[str, dict[str, int]] = {}
    for loser, winner, count in losses:
        lost.setdefault(labels[loser], {})[labels[winner]] = int(count)
    return lost


def kept_by_dedup_select(addressed_select: str, source_index: int) -> str:
    """Rows of an addressed SELECT that won the dedup (after build_keep_table), without
    their address columns."""
    return (
        f"SELECT * EXCLUDE (file_index, file_row_number) FROM ({addressed_select}) AS src "
        f"WHERE EXISTS (SELECT 1 FROM {KEEP_TABLE} k WHERE k.source_index = {int(source_index)} "
        "AND k.file_index = src.file_index AND k.file_row_number = src.file_row_number)"
    )
