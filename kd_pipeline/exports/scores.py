"""The score transform knob: teacher scores put on the scale the consumer's loss expects.

Shared by every format (`score_transform`, `temperature`, `score_scope` in a spec's knobs)
and applied by each format to the rows it exports, just before laying them out, so a
transform over "the query's list" is over exactly the list the consumer sees:

- `none` (default): the teacher's raw scores (logits for cross-encoders, 0-5 for LightOn).
- `minmax`: (s - min) / (max - min) over the group, in [0, 1]; a group whose scores are all
  equal (one candidate, or ties) gets 0.0 for every score (as scikit-learn's MinMaxScaler
  does for a constant feature), and the number of such groups is counted.
- `softmax`: exp((s - max) / T) / sum(exp((s - max) / T)) over the group, T = `temperature`.

`score_scope`: `query` (default) = one group per query; `export` = the whole export is one
group (for pointwise data with one or two documents a query, where a per-query min-max
says nothing). The export's group is every candidate of the export, in every split, taken
before the split (`export_scale`), so one teacher score maps to one value in train and in
validation; a format that keeps fewer rows (a top n, a max rank) exports a subset of that
group (minmax values then lie within [0, 1] without necessarily reaching both ends).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import duckdb


@dataclass(frozen=True)
class ScoreTransform:
    """score_transform: none | minmax | softmax; temperature: > 0 (softmax only);
    score_scope: query | export."""

    score_transform: Literal["none", "minmax", "softmax"] = "none"
    temperature: float = 1.0
    score_scope: Literal["query", "export"] = "query"

    def __post_init__(self) -> None:
        if self.score_transform not in ("none", "minmax", "softmax"):
            raise ValueError(
                f"score_transform={self.score_transform!r}: expected none, minmax or softmax"
            )
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, int | float)
            or not self.temperature > 0
        ):
            raise ValueError(f"temperature={self.temperature!r}: expected a number > 0")
        if self.temperature != 1.0 and self.score_transform != "softmax":
            raise ValueError("temperature applies to score_transform: softmax only")
        if self.score_scope not in ("query", "export"):
            raise ValueError(f"score_scope={self.score_scope!r}: expected query or export")

    def export_scale(self, con: duckdb.DuckDBPyConnection, table: str) -> ExportScale | None:
        """The statistics of `score` over a whole export's candidates (`table`, every split)
        for score_scope: export; None when the transform needs none."""
        if self.score_transform == "none" or self.score_scope != "export":
            return None
        ((low, high),) = con.execute(f"SELECT min(score), max(score) FROM {table}").fetchall()
        if low is None:  # no scored candidate: nothing will be written
            return None
        ((weights,),) = con.execute(
            f"SELECT sum(exp((score - $high) / $t)) FROM {table}",
            {"high": high, "t": float(self.temperature)},
        ).fetchall()
        return ExportScale(float(low), float(high), float(weights))

    def apply(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        group: str = "query_id",
        scale: ExportScale | None = None,
    ) -> dict[str, Any]:
        """Rewrite `score` of a temp table in place, over each group of rows (a query's
        exported list, or the whole export); return counts for the metadata. scale: the
        export's statistics (export_scale, taken before the split) for score_scope: export;
        without it the export's group is this table."""
        if self.score_transform == "none":
            return {}
        if self.score_scope == "export" and scale is not None:
            return self._apply_scale(con, table, scale)
        window = "" if self.score_scope == "export" else f"PARTITION BY {group}"
        if self.score_transform == "minmax":
            low, high = f"min(score) OVER ({window})", f"max(score) OVER ({window})"
            new = f"CASE WHEN {high} > {low} THEN (score - {low}) / ({high} - {low}) ELSE 0.0 END"
            source = table
        else:  # softmax, shifted by the group's maximum (exp never overflows)
            t = float(self.temperature)
            new = f"kd_weight / sum(kd_weight) OVER ({window})"
            source = (
                f"(SELECT *, exp((score - max(score) OVER ({window})) / {t!r}) AS kd_weight "
                f"FROM {table})"
            )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT "
            f"{'* EXCLUDE (kd_weight)' if source != table else '*'} "
            f"REPLACE (CAST({new} AS DOUBLE) AS score) FROM {source}"
        )
        if self.score_transform != "minmax":
            return {}
        by = "" if self.score_scope == "export" else f"GROUP BY {group}"
        ((flat,),) = con.execute(
            f"SELECT count(*) FROM (SELECT max(score) = min(score) AS flat FROM {table} {by}) "
            "WHERE flat"
        ).fetchall()
        return {"groups_without_spread": int(flat)}

    def _apply_scale(
        self, con: duckdb.DuckDBPyConnection, table: str, scale: ExportScale
    ) -> dict[str, Any]:
        """score_scope: export with the whole export's statistics (constants)."""
        if self.score_transform == "minmax":
            spread = scale.high - scale.low
            new = f"(score - {scale.low!r}) / {spread!r}" if spread > 0 else "0.0"
        else:
            new = f"exp((score - {scale.high!r}) / {float(self.temperature)!r}) / {scale.weights!r}"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * "
            f"REPLACE (CAST({new} AS DOUBLE) AS score) FROM {table}"
        )
        if self.score_transform != "minmax":
            return {}
        return {"groups_without_spread": int(scale.high == scale.low)}


@dataclass(frozen=True)
class ExportScale:
    """`score` over a whole export's candidates (every split): min, max, and the softmax
    denominator sum(exp((score - max) / temperature))."""

    low: float
    high: float
    weights: float


SCORE_KNOBS = frozenset(f.name for f in fields(ScoreTransform))
