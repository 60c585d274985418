"""Data rules as plain functions over a DuckDB relation: usable without Dagster.

A rule reads a table (any SQL `FROM` source with bound parameters) and returns a
`RuleOutcome`: whether it holds, how many rows break it and the first offending ids, so a
check, the CLI and an export can all report the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import duckdb

EXAMPLES = 5


# The options every read of lake files takes: DuckDB would otherwise add a column for each
# `key=value` folder in the path (the lake's `partition=<key>` folders), and take the first
# file's columns for all (partitions published before a column was added lack it).
PARQUET_READ = "hive_partitioning = false, union_by_name = true"


@dataclass(frozen=True)
class Table:
    """A SQL `FROM` source and its bound parameters, e.g. `read_parquet($glob)`."""

    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    addressed: str | None = None  # the same rows with `file_index`, `file_row_number` columns

    @classmethod
    def parquet(cls, glob: str | list[str]) -> Table:
        """A Parquet dataset (a lake version) by glob, its columns exactly the files' (a
        lake folder `partition=<key>` adds no column: DuckLake's layout, not data)."""
        return cls(
            f"read_parquet($glob, {PARQUET_READ})",
            {"glob": glob},
            f"(SELECT *, file_index FROM read_parquet($glob, {PARQUET_READ}, "
            "file_row_number = true))",
        )

    def query(self, con: duckdb.DuckDBPyConnection, select: str, extra: Mapping[str, Any] = {}):
        return con.execute(select.replace("{table}", self.source), {**self.params, **extra})


@dataclass(frozen=True)
class RuleOutcome:
    """The verdict of one rule on one table; `rule` is filled in by `Rule.evaluate`."""

    passed: bool
    violations: int = 0
    examples: tuple[str, ...] = ()
    detail: str = ""
    rule: str = ""

    def message(self) -> str:
        if self.passed:
            return f"{self.rule}: ok"
        shown = ", ".join(self.examples)
        return f"{self.rule}: {self.violations} violation(s): {self.detail}" + (
            f" (first: {shown})" if shown else ""
        )


# How a rule judges a table: a function of the connection and the table.
RuleFn = Callable[[duckdb.DuckDBPyConnection, Table], RuleOutcome]
F = TypeVar("F")


@dataclass(frozen=True)
class Rule(Generic[F]):
    """A rule, declared once: its name (the asset check's), what it protects against, and
    `judge`, which turns the facts a run learned while writing (type F: parse reports, the
    text tables' globs, a threshold; None for rules that need none) into a RuleFn.
    `blocking` rules stop a publish when they fail."""

    name: str
    description: str
    judge: Callable[[F], RuleFn]
    blocking: bool = True

    def evaluate(self, con: duckdb.DuckDBPyConnection, table: Table, facts: F) -> RuleOutcome:
        return replace(self.judge(facts)(con, table), rule=self.name)


def static(fn: RuleFn) -> Callable[[Any], RuleFn]:
    """The judge of a rule that needs no facts of the run."""
    return lambda _facts: fn


def rows_where(condition: str, id_expr: str, detail: str, params: Mapping[str, Any] = {}) -> RuleFn:
    """A rule broken by every row matching condition (values bound as `$name` params);
    examples show id_expr of the first offending rows."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        (count,) = table.query(
            con, f"SELECT count(*) FROM {{table}} WHERE {condition}", params
        ).fetchall()[0]
        examples: tuple[str, ...] = ()
        if count:
            rows = table.query(
                con,
                f"SELECT CAST({id_expr} AS VARCHAR) FROM {{table}} WHERE {condition} "
                f"LIMIT {EXAMPLES}",
                params,
            ).fetchall()
            examples = tuple(str(row[0]) for row in rows)
        return RuleOutcome(count == 0, count, examples, detail)

    return evaluate


def schema_is(expected: Mapping[str, str]) -> RuleFn:
    """The table has exactly the expected columns, in order, with the expected types."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        actual = {
            name: dtype
            for name, dtype, *_ in table.query(con, "DESCRIBE SELECT * FROM {table}").fetchall()
        }
        problems = [
            f"{name}: expected {dtype}, found {actual.get(name, 'nothing')}"
            for name, dtype in expected.items()
            if actual.get(name) != dtype
        ]
        problems += [f"{name}: unexpected column" for name in actual if name not in expected]
        if not problems and list(actual) != list(expected):
            problems.append(f"column order {list(actual)} != {list(expected)}")
        return RuleOutcome(not problems, len(problems), tuple(problems), "schema differs")

    return evaluate


def no_nulls(columns: Sequence[str], id_expr: str) -> RuleFn:
    condition = " OR ".join(f"{c} IS NULL" for c in columns)
    return rows_where(condition, id_expr, f"null in {', '.join(columns)}")


def finite(column: str, id_expr: str) -> RuleFn:
    return rows_where(f"NOT isfinite({column})", id_expr, f"{column} is NaN or infinite")


def row_count_is(expected: int) -> RuleFn:
    """The table has exactly expected rows (nothing lost or invented on the way)."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        (count,) = table.query(con, "SELECT count(*) FROM {table}").fetchall()[0]
        return RuleOutcome(
            count == expected, abs(count - expected), (), f"{count} rows, expected {expected}"
        )

    return evaluate


def known_count(count: int, detail: str) -> RuleFn:
    """A rule whose violations were counted while the data was read (e.g. upstream values
    the canonical table can no longer show): broken when count > 0."""

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        return RuleOutcome(count == 0, count, (), detail)

    return evaluate


def no_unexpected_shrink(previous_rows: int | None, max_shrink: float) -> RuleFn:
    """The new version keeps at least (1 - max_shrink) of the previously published rows.

    previous_rows None or 0 (nothing published before) always passes; with max_shrink < 1 a
    non-empty partition replaced by an empty one always fails. From issue 13: an empty or
    truncated upstream file must not silently replace good data.
    """

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        (count,) = table.query(con, "SELECT count(*) FROM {table}").fetchall()[0]
        if not previous_rows:
            return RuleOutcome(True)
        shrink = (previous_rows - count) / previous_rows
        return RuleOutcome(
            shrink <= max_shrink,
            max(previous_rows - count, 0),
            (),
            f"{count} rows replace {previous_rows} published ({shrink:.0%} fewer; allowed: "
            f"{max_shrink:.0%}, set KD_PIPELINE_MAX_SHRINK=1 to accept it)",
        )

    return evaluate


def not_empty() -> RuleFn:
    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        (count,) = table.query(
            con, "SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)"
        ).fetchall()[0]
        return RuleOutcome(count > 0, 0 if count else 1, (), "the table has no rows")

    return evaluate


def evaluate_rules(
    con: duckdb.DuckDBPyConnection, rules: Sequence[Rule[F]], table: Table, facts: F = None
) -> list[RuleOutcome]:
    """Every rule's verdict on table, in order (facts: what the run learned, see `Rule`)."""
    return [rule.evaluate(con, table, facts) for rule in rules]
