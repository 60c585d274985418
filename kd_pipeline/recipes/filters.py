"""Filter recipes over a canonical LightOn table: the one definition of the four knobs.

Semantics (UPSTREAM.md section 1):
- `filter_drop`: skip rows with `drop = true`;
- `filter_duplicate`: skip rows whose `duplicate` is not null (0 counts as not null);
- `top_percentile` p in (0, 1]: among the *eligible* rows (those passing the two filters
  above), t = the similarity at position max(1, floor(n*p)) of the similarities sorted
  descending; keep `similarity >= t` (ties kept). Computed exactly, not from a sample;
- `min_similarity`: keep `similarity >= min_similarity`, applied after t is found.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb

from kd_pipeline.checks.rules import Rule, Table, row_count_is, rows_where, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.recipes.dedup import (
    DedupSource,
    build_keep_table,
    kept_by_dedup_select,
    pair_key_sql,
)


class SpecError(ValueError):
    """A recipe spec is invalid; the message names the spec and the knob."""


@dataclass(frozen=True)
class FilterKnobs:
    """The filter knobs; validated on construction, so a bad p fails when defined."""

    filter_drop: bool = True
    filter_duplicate: bool = True
    min_similarity: float | None = None
    top_percentile: float | None = None
    dedup: bool = False  # drop exact (query, document) copies of kept rows (see dedup.py)
    dedup_casefold: bool = False  # compare texts case-insensitively when deduplicating

    def __post_init__(self) -> None:
        for name in ("filter_drop", "filter_duplicate", "dedup", "dedup_casefold"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be true or false, got {getattr(self, name)!r}")
        p = self.top_percentile
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1 or math.isnan(p)
        ):
            raise SpecError(f"top_percentile must be a number in (0, 1], got {p!r}")
        m = self.min_similarity
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int | float) or not _is_finite(m)
        ):
            raise SpecError(f"min_similarity must be a finite number, got {m!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def eligible_predicate(knobs: FilterKnobs) -> str:
    """Rows that pass filter_drop and filter_duplicate (the top_percentile population)."""
    terms = ["TRUE"]
    if knobs.filter_drop:
        terms.append('NOT "drop"')
    if knobs.filter_duplicate:
        terms.append("duplicate IS NULL")
    return " AND ".join(terms)


def keep_predicate(knobs: FilterKnobs) -> str:
    """Rows the recipe keeps, with `$threshold` and `$min_similarity` as parameters."""
    terms = [eligible_predicate(knobs)]
    if knobs.top_percentile is not None:
        terms.append("similarity >= $threshold")
    if knobs.min_similarity is not None:
        terms.append("similarity >= $min_similarity")
    return " AND ".join(terms)


def keep_params(knobs: FilterKnobs, threshold: float | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if knobs.top_percentile is not None:
        params["threshold"] = threshold
    if knobs.min_similarity is not None:
        params["min_similarity"] = float(knobs.min_similarity)
    return params


def top_k(eligible: int, p: float) -> int:
    """max(1, floor(n*p)), with p taken as the decimal the user wrote (0.29 * 100 = 29)."""
    return max(1, math.floor(Fraction(str(p)) * eligible))


def top_percentile_threshold(
    con: duckdb.DuckDBPyConnection, table: Table, knobs: FilterKnobs
) -> tuple[float | None, int]:
    """The exact threshold t and the eligible row count n (t is None when n = 0)."""
    eligible = eligible_predicate(knobs)
    (n,) = table.query(con, f"SELECT count(*) FROM {{table}} WHERE {eligible}").fetchall()[0]
    if n == 0 or knobs.top_percentile is None:
        return None, n
    k = top_k(n, knobs.top_percentile)
    (t,) = table.query(
        con,
        f"SELECT similarity FROM {{table}} WHERE {eligible} "
        "ORDER BY similarity DESC LIMIT 1 OFFSET $offset",
        {"offset": k - 1},
    ).fetchall()[0]
    return float(t), n


def rows_removed_by_rule(
    con: duckdb.DuckDBPyConnection, table: Table, knobs: FilterKnobs, threshold: float | None
) -> dict[str, int]:
    """Rows in, rows removed by each rule in order (drop, duplicate, top_percentile,
    min_similarity), rows out: one scan of the small columns."""
    passed_drop = 'NOT "drop"' if knobs.filter_drop else "TRUE"
    passed_dup = f"{passed_drop} AND duplicate IS NULL" if knobs.filter_duplicate else passed_drop
    passed_top = (
        f"{passed_dup} AND similarity >= $threshold"
        if threshold is not None
        else ("FALSE" if knobs.top_percentile is not None else passed_dup)
    )
    passed_min = (
        f"{passed_top} AND similarity >= $min_similarity"
        if knobs.min_similarity is not None
        else passed_top
    )
    params = {"threshold": threshold, "min_similarity": knobs.min_similarity}
    used = {k: v for k, v in params.items() if f"${k}" in passed_min}
    total, a, b, c, d = table.query(
        con,
        f"SELECT count(*), count(*) FILTER (WHERE {passed_drop}), "
        f"count(*) FILTER (WHERE {passed_dup}), count(*) FILTER (WHERE {passed_top}), "
        f"count(*) FILTER (WHERE {passed_min}) FROM {{table}}",
        used,
    ).fetchall()[0]
    return {
        "rows_in": total,
        "removed_by_drop": total - a,
        "removed_by_duplicate": a - b,
        "removed_by_top_percentile": b - c,
        "removed_by_min_similarity": c - d,
        "rows_out": d,
    }


@dataclass(frozen=True)
class FilterFacts:
    """What running a filter computed: the top-percentile threshold (None without one) and
    the rows the filter keeps on its input."""

    threshold: float | None
    expected_rows: int


def _similarity_floor(knobs: FilterKnobs, threshold: float | None) -> float:
    values = [float(v) for v in (threshold, knobs.min_similarity) if v is not None]
    return max(values, default=-math.inf)


def recipe_rules(knobs: FilterKnobs) -> list[Rule[FilterFacts]]:
    """What must hold on a recipe's output, stated independently of the filter SQL: one
    rule per filter the knobs turn on, and the row count."""
    rules: list[Rule[FilterFacts]] = []
    if knobs.filter_drop:
        rules.append(
            Rule(
                "no_dropped_rows",
                "filter_drop: no row has drop = true.",
                static(rows_where('"drop"', "query_id", "drop = true")),
            )
        )
    if knobs.filter_duplicate:
        rules.append(
            Rule(
                "no_duplicate_rows",
                "filter_duplicate: every duplicate is null.",
                static(rows_where("duplicate IS NOT NULL", "query_id", "duplicate is not null")),
            )
        )
    if knobs.top_percentile is not None or knobs.min_similarity is not None:
        rules.append(
            Rule(
                "similarity_at_least_threshold",
                "No kept row scores below the threshold or min_similarity.",
                lambda f: rows_where(
                    "similarity < $floor",
                    "query_id",
                    f"similarity below {_similarity_floor(knobs, f.threshold)}",
                    {"floor": _similarity_floor(knobs, f.threshold)},
                ),
            )
        )
    if knobs.dedup:
        rules.append(
            no_duplicate_pairs_rule(
                knobs.dedup_casefold,
                "dedup: no (query, document) pair appears twice after normalisation.",
            )
        )
    rules.append(
        Rule(
            "row_count_matches_filter",
            "Rows out equal the rows the filter keeps on the input.",
            lambda f: row_count_is(f.expected_rows),
        )
    )
    return rules


def no_duplicate_pairs_rule(casefold: bool, description: str) -> Rule[Any]:
    """dedup: no (query, document) pair appears twice after normalisation (filters and
    unions)."""
    key = pair_key_sql(casefold)
    return Rule(
        "no_duplicate_pairs",
        description,
        static(
            rows_where(
                f"{key} IN (SELECT {key} FROM {{table}} GROUP BY 1 HAVING count(*) > 1)",
                "query_id",
                "the same normalised pair appears more than once",
            )
        ),
    )


@dataclass(frozen=True)
class FilterResult:
    threshold: float | None
    eligible_rows: int
    counts: dict[str, int]


def kept_rows_select(
    source: Table, knobs: FilterKnobs, threshold: float | None, *, addressed: bool = False
) -> tuple[str, dict[str, Any]]:
    """The SELECT of the rows the filters keep (before dedup), and its parameters; with
    `addressed`, rows also carry `file_index` and `file_row_number` (for dedup)."""
    keep = (
        keep_predicate(knobs) if threshold is not None or knobs.top_percentile is None else "FALSE"
    )
    params = {**source.params, **(keep_params(knobs, threshold) if keep != "FALSE" else {})}
    if addressed and source.addressed is None:
        raise ValueError("dedup needs a table with row addresses (use Table.parquet)")
    origin = source.addressed if addressed else source.source
    return f"SELECT * FROM {origin} WHERE {keep}", params


def apply_filter(
    con: duckdb.DuckDBPyConnection, source: Table, knobs: FilterKnobs, out_dir: Path
) -> FilterResult:
    """Compute the exact threshold, count each rule's removals, and stream the kept rows
    to out_dir as Parquet, in the source's order (then drop exact copies if asked)."""
    threshold, eligible = top_percentile_threshold(con, source, knobs)
    counts = rows_removed_by_rule(con, source, knobs, threshold)
    if not knobs.dedup:
        select, params = kept_rows_select(source, knobs, threshold)
        copy_parquet(con, select, out_dir, params)
        return FilterResult(threshold, eligible, counts)
    select, params = kept_rows_select(source, knobs, threshold, addressed=True)
    build_keep_table(con, [DedupSource(0, "self", select, params)], knobs.dedup_casefold)
    rows = copy_parquet(con, kept_by_dedup_select(select, 0), out_dir, params)
    counts["removed_by_dedup"] = counts["rows_out"] - rows
    counts["rows_out"] = rows
    return FilterResult(threshold, eligible, counts)
