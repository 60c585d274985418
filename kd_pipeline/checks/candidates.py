"""Rules for the text, pairwise and listwise tables, as plain functions over a DuckDB table.

They extend `rules.py` with what these families need: verdicts on groups (ranks per query,
a positive per query), a share threshold (ids that do not resolve to a text), and the
parse report of the upstream file (malformed lines, with file and line number).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import duckdb

from kd_pipeline.checks.rules import (
    EXAMPLES,
    Rule,
    RuleFn,
    RuleOutcome,
    Table,
    not_empty,
    rows_where,
    schema_is,
    static,
)
from kd_pipeline.parsers import ParseReport

# Ids that do not resolve to a text: reported whenever there are any, blocking above this
# share of rows. Upstream teacher files were built against the same collections, so more
# than 1% unresolved means the wrong collection (or a broken join), not a few stray ids.
MAX_UNRESOLVED_SHARE = 0.01


def groups_where(group_by: str, having: str, detail: str, where: str = "true") -> RuleFn:
    """A rule broken by every group (of rows matching where) whose HAVING condition holds;
    examples show the group keys."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        groups = (
            f"SELECT CAST(concat_ws(' ', {group_by}) AS VARCHAR) AS k FROM {{table}} "
            f"WHERE {where} GROUP BY {group_by} HAVING {having}"
        )
        (count,) = table.query(con, f"SELECT count(*) FROM ({groups})").fetchall()[0]
        examples: tuple[str, ...] = ()
        if count:
            rows = table.query(con, f"SELECT k FROM ({groups}) ORDER BY k LIMIT {EXAMPLES}")
            examples = tuple(str(r[0]) for r in rows.fetchall())
        return RuleOutcome(count == 0, count, examples, detail)

    return evaluate


def within_share(inner: RuleFn, max_share: float) -> RuleFn:
    """inner's violations, judged as a share of all rows: the rule holds up to max_share
    (the count and first offenders are reported either way)."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        outcome = inner(con, table)
        (total,) = table.query(con, "SELECT count(*) FROM {table}").fetchall()[0]
        share = outcome.violations / total if total else 0.0
        return replace(
            outcome,
            passed=share <= max_share,
            detail=f"{outcome.detail}: {outcome.violations} of {total} rows ({share:.3%}; "
            f"blocking above {max_share:.1%})",
        )

    return evaluate


def ids_resolve(
    references: Sequence[tuple[str, str, str]], max_share: float = MAX_UNRESOLVED_SHARE
) -> RuleFn:
    """Rows whose ids are missing from the text tables, as a share of all rows.

    references: (column of this table, glob of the text table's Parquet, its id column).
    """
    params: dict[str, str] = {}
    missing: list[str] = []
    labels: list[str] = []
    for column, glob, id_column in references:
        name = f"ref_{len(params)}"
        params.setdefault(name, glob)
        test = f"{column} NOT IN (SELECT {id_column} FROM read_parquet(${name}))"
        missing.append(test)
        labels.append(f"CASE WHEN {test} THEN '{column}=' || {column} END")
    inner = rows_where(
        " OR ".join(missing),
        f"concat_ws(' ', {', '.join(labels)})",
        "ids without a text",
        params,
    )
    return within_share(inner, max_share)


def malformed_lines(reports: Sequence[ParseReport]) -> RuleFn:
    """Every upstream line parsed: the verdict of the parse, not of the table (a line that
    did not parse is not in the table to be found)."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        count = sum(r.malformed_lines for r in reports)
        examples = tuple(e for r in reports for e in r.examples)[:EXAMPLES]
        formats = ", ".join(sorted({r.format for r in reports})) or "the upstream format"
        return RuleOutcome(count == 0, count, examples, f"lines that do not parse as {formats}")

    return evaluate


def holds(detail: str) -> RuleFn:
    """A rule that does not apply to this partition: it holds, and says why."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        return RuleOutcome(True, 0, (), detail)

    return evaluate


def ranks_contiguous() -> RuleFn:
    """Each query's ranked rows carry ranks exactly 1..n."""
    return groups_where(
        "query_id",
        "min(rank) <> 1 OR max(rank) <> count(*) OR count(DISTINCT rank) <> count(*)",
        "queries whose ranks are not exactly 1..n",
        where="rank IS NOT NULL",
    )


def scores_follow_ranks() -> RuleFn:
    """A better rank never has a lower score (a ranked list read in the wrong order, or a
    score column that is not the ranker's, shows up here)."""
    return groups_where(
        "query_id",
        "list(score ORDER BY rank) <> list_reverse_sort(list(score))",
        "queries whose scores do not decrease with rank",
        where="rank IS NOT NULL",
    )


def every_query_has_positive() -> RuleFn:
    return groups_where(
        "query_id",
        "NOT bool_or(coalesce(is_positive, false))",
        "queries without a relevant document",
    )


def unique_key(columns: Sequence[str]) -> RuleFn:
    key = ", ".join(columns)
    return groups_where(key, "count(*) > 1", f"({key}) occurs more than once")


def non_empty_ids(columns: Sequence[str], id_expr: str) -> RuleFn:
    """Ids are never null nor empty (an empty field parses as '', not NULL)."""
    condition = " OR ".join(f"{c} IS NULL OR {c} = ''" for c in columns)
    return rows_where(condition, id_expr, f"null or empty {', '.join(columns)}")


@dataclass(frozen=True)
class ReadFacts:
    """What a family's write learned, for its rules: the parse reports of the upstream
    files, the text tables its ids must resolve to, as (column of this table, glob of the
    text table's Parquet, its id column), and why the partition has no relevance labels
    (None: every query must have a relevant document)."""

    reports: Sequence[ParseReport] = ()
    references: Sequence[tuple[str, str, str]] = ()
    unlabelled: str | None = None


UNRESOLVED_RULE = "ids_resolve_to_texts"


def parsed_rule(description: str) -> Rule[ReadFacts]:
    """Every upstream line parsed (the rule of every family read with a parse report)."""
    return Rule("no_malformed_lines", description, lambda f: malformed_lines(f.reports))


def resolved_rule(description: str) -> Rule[ReadFacts]:
    """Ids resolve to the text tables (the share that do not is reported; blocking above
    MAX_UNRESOLVED_SHARE)."""
    return Rule(UNRESOLVED_RULE, description, lambda f: ids_resolve(f.references))


# Rules of every ranked list: the listwise tables and the lightning-ir run export.
RANKS_CONTIGUOUS: Rule[Any] = Rule(
    "ranks_contiguous", "Each query's ranks are exactly 1..n.", static(ranks_contiguous())
)


def unique_candidates(description: str) -> Rule[Any]:
    """A document is listed once per query."""
    return Rule("unique_candidates", description, static(unique_key(["query_id", "doc_id"])))


def listwise_rules(columns: dict[str, str]) -> list[Rule[ReadFacts]]:
    """The rules every listwise table (ranked candidates per query) is published under."""
    return [
        Rule(
            "schema",
            "Columns and types are the canonical listwise table.",
            static(schema_is(columns)),
        ),
        Rule(
            "ids_present",
            "Query and document ids are neither null nor empty.",
            static(non_empty_ids(["query_id", "doc_id"], "query_id")),
        ),
        Rule(
            "finite_scores",
            "Every ranked row has a finite score.",
            static(
                rows_where(
                    "rank IS NOT NULL AND (score IS NULL OR NOT isfinite(score))",
                    "query_id || ' ' || doc_id",
                    "score is null, NaN or infinite",
                )
            ),
        ),
        RANKS_CONTIGUOUS,
        unique_candidates("A document appears at most once per query."),
        Rule(
            "every_query_has_positive",
            "Each query has a relevant document (annotated or labelled tables).",
            lambda f: every_query_has_positive() if f.unlabelled is None else holds(f.unlabelled),
        ),
        resolved_rule(
            "Query and document ids resolve to texts (the share that do not is reported; "
            f"blocking above {MAX_UNRESOLVED_SHARE:.0%})."
        ),
        Rule(
            "scores_follow_ranks",
            "Scores do not increase down a ranked list (warning only).",
            static(scores_follow_ranks()),
            blocking=False,
        ),
        Rule("not_empty", "The table has rows.", static(not_empty())),
    ]


def one_split_per_query(tables: dict[str, Table], column: str) -> RuleFn:
    """No query in two splits (a leak of validation queries into training).

    tables: split name -> the written rows of that split; column: the one naming the query
    (an id where the format writes ids, the query text where it writes texts only).
    """

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        if len(tables) < 2:
            return RuleOutcome(True, 0, (), f"one split only ({', '.join(tables)})")
        names = []
        for split, rows in tables.items():
            name = f"kd_split_keys_{split}"
            rows.query(
                con,
                f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT DISTINCT "
                f"CAST({column} AS VARCHAR) AS q FROM {{table}}",
            )
            names.append(name)
        both = " UNION ALL ".join(f"SELECT q FROM {n}" for n in names)
        shared = f"SELECT q FROM ({both}) GROUP BY q HAVING count(*) > 1"
        ((count,),) = con.execute(f"SELECT count(*) FROM ({shared})").fetchall()
        examples = tuple(
            str(q)[:40] for (q,) in con.execute(f"{shared} ORDER BY q LIMIT {EXAMPLES}").fetchall()
        )
        for name in names:
            con.execute(f"DROP TABLE {name}")
        return RuleOutcome(
            count == 0, count, examples, f"{column} in more than one of {sorted(tables)}"
        )

    return evaluate


def one_list_length(length: str, expected: int, id_expr: str, export: str, dropped: int) -> RuleFn:
    """Every row's list has exactly `expected` entries (the fixed shape a consumer batches).

    Rows of another length are violations (named by id_expr). A table left empty because
    every query was too short to fill the shape (`dropped` of them) fails too, naming the
    export and the count: there is nothing to train on.
    """

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        outcome = rows_where(
            f"{length} <> {int(expected)}", id_expr, f"a list whose length is not {expected}"
        )(con, table)
        (rows,) = table.query(con, "SELECT count(*) FROM {table}").fetchall()[0]
        if rows == 0 and dropped > 0:
            detail = (
                f"{export}: none of the {dropped} queries can fill the {expected} entries "
                "a row needs (every one was dropped)"
            )
            return RuleOutcome(False, dropped, (export,), detail)
        return outcome

    return evaluate


def increasing_in_file_order(glob: str, column: str) -> RuleFn:
    """column strictly increases down the files read in name order (the order `datasets`
    and DuckDB read them): an ordered export whose part files or rows are out of order, or
    which repeats a row, breaks it at the first row that does not follow."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        ordered = (
            f"SELECT {column} AS v, lag({column}) OVER (ORDER BY filename, file_row_number) "
            "AS previous, filename, file_row_number FROM "
            "read_parquet($glob, filename = true, file_row_number = true)"
        )
        broken = f"SELECT * FROM ({ordered}) WHERE previous IS NOT NULL AND v <= previous"
        ((count,),) = con.execute(f"SELECT count(*) FROM ({broken})", {"glob": glob}).fetchall()
        rows = con.execute(
            f"SELECT v, previous FROM ({broken}) ORDER BY filename, file_row_number "
            f"LIMIT {EXAMPLES}",
            {"glob": glob},
        ).fetchall()
        examples = tuple(f"{column} {v} after {p}" for v, p in rows)
        return RuleOutcome(count == 0, count, examples, f"{column} does not increase in file order")

    return evaluate
