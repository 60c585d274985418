"""LightOn `embeddings-pre-training`: 73 configs of teacher-scored (query, document) pairs.

`lighton/raw` has one partition per config. A partition is built by resolving the config's
files (the dataset card's `configs:` block, else a path prefix), checking each file's
columns, and streaming them with DuckDB into one canonical Parquet dataset: the upstream
columns with fixed types, plus stable `query_id`/`doc_id` (md5 of the text).
"""

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from kd_pipeline.checks.rules import (
    Rule,
    finite,
    known_count,
    no_nulls,
    not_empty,
    row_count_is,
    schema_is,
    static,
)
from kd_pipeline.engine import copy_parquet
from kd_pipeline.families.cards import card_front_matter, card_licence
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.fetch import DatasetSnapshot, FetchError
from kd_pipeline.lake import quote_identifier, quote_literal
from kd_pipeline.lake_asset import Built, LakeAsset, Step, lake_asset
from kd_pipeline.recipes.specs import load_filter_specs

RAW_KEY = dg.AssetKey(["lighton", "raw"])
LIGHTON_PARTITIONED_JOB = "lighton_partitions"
lighton_partitions = dg.StaticPartitionsDefinition(list(LIGHTON_CONFIGS))

# The canonical pointwise table: every LightOn asset (raw and recipes) has these columns.
CANONICAL_COLUMNS: dict[str, str] = {
    "query_id": "VARCHAR",
    "doc_id": "VARCHAR",
    "query": "VARCHAR",
    "document": "VARCHAR",
    "similarity": "DOUBLE",
    "drop": "BOOLEAN",
    "duplicate": "BIGINT",
    "index": "BIGINT",
}
COLUMN_DESCRIPTIONS = {
    "query_id": "md5 of the query text (stable across configs and runs)",
    "doc_id": "md5 of the document text",
    "query": "query text, as upstream",
    "document": "document text, as upstream",
    "similarity": "teacher score (cast to DOUBLE)",
    "drop": "true = not in the upstream's recommended pre-training subset",
    "duplicate": "null = not a duplicate; else the index of the row it duplicates",
    "index": "upstream row index when the config has one, else null",
}
COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(name, dtype, description=COLUMN_DESCRIPTIONS[name])
        for name, dtype in CANONICAL_COLUMNS.items()
    ]
)

_INTEGER = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "HUGEINT",
}
_FLOAT = {"FLOAT", "DOUBLE"}


class SchemaError(Exception):
    """An upstream file's columns cannot be read as the LightOn schema; names the file."""


# ---- which files make a config ------------------------------------------------------------
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Hub `data_files` globs: `**` spans folders, `*` and `?` stay within one."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _data_file_patterns(data_files: object, split: str) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        data_files = [data_files]
    patterns: list[str] = []
    for entry in data_files or []:
        if isinstance(entry, str):
            patterns.append(entry)
        elif isinstance(entry, dict) and entry.get("split", split) == split:
            path = entry.get("path")
            patterns.extend([path] if isinstance(path, str) else list(path or []))
    return patterns


def resolve_config_files(
    card: str | None, repo_files: Iterable[str], config: str, split: str = "train"
) -> list[str]:
    """The repository files holding a config's split, in a stable order.

    The card's `configs:` block decides when it names the config; otherwise the files
    under `<config>/` or `data/<config>/` are taken.
    """
    files = sorted(f for f in repo_files if f.endswith(".parquet"))
    for entry in card_front_matter(card).get("configs") or []:
        if isinstance(entry, dict) and entry.get("config_name") == config:
            patterns = _data_file_patterns(entry.get("data_files"), split)
            matched = sorted(
                {f for p in patterns for f in files if _glob_regex(p.lstrip("/")).match(f)}
            )
            if not matched:
                raise FetchError(
                    f"config {config!r}: the dataset card's data_files {patterns} match no "
                    "parquet file in the repository"
                )
            return matched
    for prefix in (f"{config}/", f"data/{config}/"):
        matched = [f for f in files if f.startswith(prefix)]
        if matched:
            return matched
    raise FetchError(
        f"config {config!r}: not in the dataset card's configs block and no parquet files "
        f"under {config}/ or data/{config}/"
    )


# ---- reading upstream files as the canonical table ----------------------------------------
# How each upstream column may be stored, and how the seed tool reads its nulls:
# - `drop`: BOOLEAN, or an integer / float holding 0 or 1 (pandas writes a float when some
#   values are NaN); null, NaN, an absent column or an all-null column (type NULL, as
#   pyarrow's pa.null() or pandas' [None, None] store it) mean "not dropped".
# - `duplicate`, `index`: an integer, or a float holding whole numbers with NaN for null;
#   `duplicate` absent or all-null (type NULL) means "no duplicates".
# - `similarity`: any number; NaN stays NaN (the finite_similarity check refuses it).
# Any other value (a `drop` of 2, a `duplicate` of 2.5) is a SchemaError naming the file,
# the column, the row and the value: values are validated in one pass over the flag columns
# before the copy, which then only uses casts that cannot fail.
_NULL = {'"NULL"', "NULL"}  # DuckDB's type for a column whose every value is null
_ACCEPTED_TYPES: dict[str, set[str]] = {
    "query": {"VARCHAR"},
    "document": {"VARCHAR"},
    "similarity": _FLOAT | _INTEGER | {"DECIMAL"},
    "drop": {"BOOLEAN"} | _INTEGER | _FLOAT | _NULL,
    "duplicate": _INTEGER | _FLOAT | _NULL,
    "index": _INTEGER | _FLOAT | _NULL,
}
_REQUIRED = ("query", "document", "similarity")


def _column_types(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet($path)", {"path": str(path)}).fetchall()
    return {name: dtype for name, dtype, *_ in rows}


def _base_type(dtype: str) -> str:
    return dtype.split("(")[0]


def _check_file_columns(path: Path, types: dict[str, str]) -> None:
    """Decide, per column, whether a file's type can be read as the canonical one."""
    for column, allowed in _ACCEPTED_TYPES.items():
        found = types.get(column)
        if found is None:
            if column in _REQUIRED:
                raise SchemaError(f"{path}: column {column!r} is missing (found {sorted(types)})")
            continue
        if _base_type(found) not in allowed:
            raise SchemaError(
                f"{path}: column {column!r} has type {found}, expected one of {sorted(allowed)}"
            )


def _invalid_condition(column: str, dtype: str | None) -> str | None:
    """SQL true for a stored value the seed's reading cannot give a meaning to (None: every
    value of that type is valid)."""
    col = quote_identifier(column)
    base = None if dtype is None else _base_type(dtype)
    if base is None or base == "BOOLEAN" or base in _NULL:
        return None
    if column == "drop":
        if base in _FLOAT:
            return f"NOT isnan({col}) AND {col} NOT IN (0, 1)"
        return f"{col} NOT IN (0, 1)"
    if base in _FLOAT:
        return (
            f"NOT isnan({col}) AND (NOT isfinite({col}) OR {col} <> trunc({col}) "
            f"OR TRY_CAST({col} AS BIGINT) IS NULL)"
        )
    return f"TRY_CAST({col} AS BIGINT) IS NULL AND {col} IS NOT NULL"


_EXPECTED_VALUES = {
    "drop": "0 or 1 (null or NaN = not dropped)",
    "duplicate": "a whole number that fits BIGINT (null or NaN = not a duplicate)",
    "index": "a whole number that fits BIGINT (null or NaN = no index)",
}


@dataclass(frozen=True)
class FileFlags:
    """What one upstream file holds in its flag columns."""

    rows: int
    drop_unset: int  # rows whose drop is null, NaN, or absent (read as not dropped)


def inspect_file_flags(
    con: duckdb.DuckDBPyConnection, path: Path, types: dict[str, str]
) -> FileFlags:
    """One scan of a file's flag columns: its unset `drop` count, and a SchemaError naming
    file, column, row (1-based, as a reader counts rows) and value for the first value that
    has no meaning (e.g. a drop of 2)."""
    drop_type = types.get("drop")
    if drop_type is None or _base_type(drop_type) in _NULL:
        unset = "count(*)"
    elif _base_type(drop_type) in _FLOAT:
        unset = 'count(*) FILTER (WHERE "drop" IS NULL OR isnan("drop"))'
    else:
        unset = 'count(*) FILTER (WHERE "drop" IS NULL)'
    checks = [(c, _invalid_condition(c, types.get(c))) for c in _EXPECTED_VALUES]
    checks = [(c, cond) for c, cond in checks if cond]
    firsts = "".join(
        f", arg_min(CAST({quote_identifier(c)} AS VARCHAR), file_row_number) FILTER (WHERE {cond})"
        f", min(file_row_number) FILTER (WHERE {cond})"
        for c, cond in checks
    )
    row = con.execute(
        f"SELECT count(*), {unset}{firsts} FROM read_parquet($path, file_row_number = true)",
        {"path": str(path)},
    ).fetchall()[0]
    for i, (column, _) in enumerate(checks):
        value, line = row[2 + 2 * i], row[3 + 2 * i]
        if line is not None:
            raise SchemaError(
                f"{path}: column {column!r} ({types[column]}), row {line + 1}: value {value} "
                f"has no meaning; expected {_EXPECTED_VALUES[column]}"
            )
    return FileFlags(int(row[0]), int(row[1]))


def _canonical_expr(column: str, dtype: str | None) -> str:
    """The canonical value of an upstream column already validated by inspect_file_flags:
    only casts that cannot fail."""
    col = quote_identifier(column)
    base = None if dtype is None else _base_type(dtype)
    if column == "drop":
        if base is None or base in _NULL:
            return "false"
        return f"coalesce({col}, false)" if base == "BOOLEAN" else f"coalesce({col} = 1, false)"
    if base is None or base in _NULL:
        return "CAST(NULL AS BIGINT)"
    return f"TRY_CAST({col} AS BIGINT)"


def canonical_select(paths: Sequence[Path], types: Mapping[Path, Mapping[str, str]]) -> str:
    """The SELECT that turns the upstream files into the canonical table: one branch per
    file (each cast follows that file's own column types), in file order.

    `index` is kept only when every file has one.
    """
    has_index = all("index" in types[p] for p in paths)
    branches = []
    for path in paths:
        t = types[path]
        index = _canonical_expr("index", t.get("index")) if has_index else "CAST(NULL AS BIGINT)"
        branches.append(
            "SELECT md5(query) AS query_id, md5(document) AS doc_id, query, document, "
            "CAST(similarity AS DOUBLE) AS similarity, "
            f'{_canonical_expr("drop", t.get("drop"))} AS "drop", '
            f"{_canonical_expr('duplicate', t.get('duplicate'))} AS duplicate, "
            f'{index} AS "index" '
            f"FROM read_parquet({quote_literal(str(path))})"
        )
    return " UNION ALL ".join(branches)


@contextlib.contextmanager
def nan_safe_reads(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Read upstream Parquet without DuckDB's statistics propagation.

    pyarrow (and so pandas) writes row-group min/max that leave NaN out; DuckDB then proves
    `isnan(x)` false from those statistics and folds `TRY_CAST(x AS BIGINT)` into a CAST that
    fails on the NaN rows it thought absent (the `DOUBLE nan ... INT64` error of a pandas
    `duplicate` column). Without the pass, every expression is evaluated on the values."""
    (previous,) = con.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0]
    con.execute("SET disabled_optimizers = 'statistics_propagation'")
    try:
        yield
    finally:
        con.execute("SET disabled_optimizers = $v", {"v": previous or ""})


def write_canonical(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], out_dir: Path
) -> dict[str, object]:
    """Check every file's columns and flag values, then stream them into out_dir as
    canonical Parquet. Returns the upstream row count, the ignored columns, the number of
    rows whose `drop` was unset (null, NaN or absent) and the files lacking a flag column."""
    per_file = {p: _column_types(con, p) for p in paths}
    for path, types in per_file.items():
        _check_file_columns(path, types)
    with nan_safe_reads(con):
        flags = {p: inspect_file_flags(con, p, per_file[p]) for p in paths}
        if paths:
            copy_parquet(con, canonical_select(paths, per_file), out_dir)
    extra = sorted({c for t in per_file.values() for c in t} - set(CANONICAL_COLUMNS))
    return {
        "upstream_rows": sum(f.rows for f in flags.values()),
        "ignored_columns": extra,
        "drop_unset_rows": sum(f.drop_unset for f in flags.values()),
        "files_without_drop": [p.name for p in paths if "drop" not in per_file[p]],
        "files_without_duplicate": [p.name for p in paths if "duplicate" not in per_file[p]],
    }


# ---- checks --------------------------------------------------------------------------------
def canonical_rules(extra_columns: dict[str, str] | None = None) -> list[Rule[Any]]:
    """Integrity rules every canonical LightOn table (plus extra_columns, for unions) must
    satisfy to be published (they need no facts of the run)."""
    return [
        Rule(
            "schema",
            "Columns and types are the canonical LightOn schema.",
            static(schema_is({**CANONICAL_COLUMNS, **(extra_columns or {})})),
        ),
        Rule(
            "no_null_text_or_score",
            "Query, document, ids and similarity are never null.",
            static(
                no_nulls(
                    ["query", "document", "query_id", "doc_id", "similarity", '"drop"'],
                    "query_id",
                )
            ),
        ),
        Rule(
            "finite_similarity",
            "Every similarity is a finite number.",
            static(finite("similarity", "query_id")),
        ),
        Rule(
            "not_empty",
            "The partition has rows (warning only: a filter may remove all).",
            static(not_empty()),
            blocking=False,
        ),
    ]


@dataclass(frozen=True)
class RawFacts:
    """What writing a raw partition counted: upstream rows (the files' own row counts) and
    rows without a `drop` flag."""

    upstream_rows: int
    drop_unset_rows: int


DROP_UNSET_RULE = "drop_flag_set"
# The canonical rules, plus what only the raw table can say: every upstream row arrived,
# and how many rows had no `drop` flag (warning: the seed reads them as kept).
RAW_RULES: list[Rule[RawFacts]] = [
    *canonical_rules(),
    Rule(
        "row_count_matches_upstream",
        "Every upstream row arrived: rows = sum of the files' row counts.",
        lambda f: row_count_is(f.upstream_rows),
    ),
    Rule(
        DROP_UNSET_RULE,
        "Every upstream row has a drop flag (warning only: a null, NaN or absent drop is "
        "read as not dropped, as the seed tool reads it).",
        lambda f: known_count(
            f.drop_unset_rows, "upstream rows with a null, NaN or absent drop, read as not dropped"
        ),
        blocking=False,
    ),
]


# ---- the asset ---------------------------------------------------------------------------
def snapshot_metadata(
    snapshot: DatasetSnapshot, files: Sequence[str], card: str | None = None
) -> dict[str, object]:
    """Lineage of a Hub dataset read: source, repository, revision, files, bytes, and the
    licence fields of its card (`card_license`, `card_license_name`, `card_license_link`)."""
    return {
        "source": snapshot.source,
        "repo_id": snapshot.repo_id,
        "revision": snapshot.revision,
        "files": dg.MetadataValue.json(list(files)),
        "bytes": sum(snapshot.files[f].size for f in files),
        **{f"card_{k}": v for k, v in card_licence(card).items()},
    }


RAW = LakeAsset(
    key=RAW_KEY,
    group="lighton",
    description="LightOn embeddings-pre-training pairs of one config, canonical columns, "
    "as published upstream (no filter).",
    rules=RAW_RULES,
    partitions_def=lighton_partitions,
    metadata={"dagster/column_schema": COLUMN_SCHEMA, "upstream": LIGHTON_REPO_ID},
    kinds=frozenset({"huggingface", "duckdb", "parquet"}),
    reads_upstream=True,
)


def write_raw(step: Step) -> Built[RawFacts]:
    """One config's files from the dataset snapshot, as the canonical table."""
    config = step.context.partition_key
    snapshot = step.fetcher.dataset_snapshot(LIGHTON_REPO_ID)
    card = step.fetcher.read_dataset_text(snapshot, "README.md")
    files = resolve_config_files(card, snapshot.files, config)
    local = [step.fetcher.dataset_file(snapshot, f) for f in files]
    step.log(f"{config}: {len(files)} file(s) at {snapshot.revision} from {snapshot.source}")
    info = write_canonical(step.con, local, step.staged.path)
    rows = int(info["upstream_rows"])
    lineage = snapshot_metadata(snapshot, files, card)
    flags = {
        "drop_unset_rows": info["drop_unset_rows"],
        "files_without_drop": ", ".join(info["files_without_drop"]) or "-",
        "files_without_duplicate": ", ".join(info["files_without_duplicate"]) or "-",
    }
    return Built(
        rows,
        RawFacts(rows, int(info["drop_unset_rows"])),
        metadata={
            **lineage,
            **flags,
            "ignored_columns": ", ".join(info["ignored_columns"]) or "-",
        },
        manifest={
            "flags": flags,
            "lineage": {k: v for k, v in lineage.items() if k != "files"},
            "files": list(files),
        },
    )


lighton_raw = lake_asset(RAW, write_raw)


# The per-config job: `lighton/raw` and every filter recipe of the spec files
# (`lighton/<spec name>`, built by recipes/factory.py), run once per partition.
lighton_partitions_job = dg.define_asset_job(
    LIGHTON_PARTITIONED_JOB,
    selection=dg.AssetSelection.assets(
        RAW_KEY, *(dg.AssetKey(["lighton", spec.name]) for spec in load_filter_specs())
    ),
    description="Raw LightOn pairs and every filter recipe, for one config.",
)
