"""Materialisation metadata that answers a reader's questions: a preview, column lineage."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import duckdb

from kd_pipeline.checks.rules import Table

PREVIEW_ROWS = 5
PREVIEW_CHARS = 80


def preview(
    con: duckdb.DuckDBPyConnection, table: Table, columns: Sequence[str]
) -> dg.MetadataValue:
    """The first rows as a Markdown table, long texts cut short."""
    select = ", ".join(f'"{c}"' for c in columns)
    rows = table.query(con, f"SELECT {select} FROM {{table}} LIMIT {PREVIEW_ROWS}").fetchall()

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def same_column_lineage(upstream: dg.AssetKey, columns: Sequence[str]) -> dg.TableColumnLineage:
    """Each column comes from the column of the same name upstream."""
    return dg.TableColumnLineage(
        deps_by_column={c: [dg.TableColumnDep(asset_key=upstream, column_name=c)] for c in columns}
    )
