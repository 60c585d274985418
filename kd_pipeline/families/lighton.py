"""LightOn `embeddings-pre-training`: 73 configs of teacher-scored (query, document) pairs.

`lighton/raw` has one partition per config. A partition is built by resolving the config's
files (the dataset card's `configs:` block, else a path prefix), checking each file's
columns, and streaming them with DuckDB into one canonical Parquet dataset: the upstream
columns with fixed types, plus stable `query_id`/`doc_id` (md5 of the text).
"""

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import dagster as dg
import duckdb
import yaml
from dagster_duckdb import DuckDBResource

from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.rules import Rule, finite, no_nulls, not_empty, row_count_is, schema_is
from kd_pipeline.engine import copy_parquet, engine_connection
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.fetch import DatasetSnapshot, FetchError
from kd_pipeline.lake import quote_literal
from kd_pipeline.resources import LakeResource, UpstreamResource

RAW_KEY = dg.AssetKey(["lighton", "raw"])
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
def card_front_matter(card: str | None) -> dict:
    """The YAML header of a dataset card (`---` ... `---`), or {} when there is none."""
    if not card or not card.startswith("---"):
        return {}
    end = card.find("\n---", 3)
    if end < 0:
        return {}
    data = yaml.safe_load(card[3:end]) or {}
    return data if isinstance(data, dict) else {}


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
def _column_types(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet($path)", {"path": str(path)}).fetchall()
    return {name: dtype for name, dtype, *_ in rows}


def _check_file_columns(path: Path, types: dict[str, str]) -> None:
    """Decide, per column, whether a file's type can be cast to the canonical one."""
    accepted = {
        "query": {"VARCHAR"},
        "document": {"VARCHAR"},
        "similarity": _FLOAT | _INTEGER | {"DECIMAL"},
        "drop": {"BOOLEAN"} | _INTEGER,
        "duplicate": _INTEGER | _FLOAT | {'"NULL"', "NULL"},
    }
    for column, allowed in accepted.items():
        found = types.get(column)
        if found is None:
            raise SchemaError(f"{path}: column {column!r} is missing (found {sorted(types)})")
        if found.split("(")[0] not in allowed:
            raise SchemaError(
                f"{path}: column {column!r} has type {found}, expected one of {sorted(allowed)}"
            )
    if "index" in types and types["index"] not in _INTEGER:
        raise SchemaError(f"{path}: column 'index' has type {types['index']}, expected an integer")


def canonical_select(paths: Sequence[Path], has_index: bool, types: Iterable[str]) -> str:
    """The SELECT that turns the upstream files into the canonical table.

    `duplicate` written by pandas can be a float with NaN for null: NaN becomes null.
    """
    float_duplicate = any(t in _FLOAT for t in types)
    duplicate = (
        "CAST(CASE WHEN isnan(CAST(duplicate AS DOUBLE)) THEN NULL ELSE duplicate END AS BIGINT)"
        if float_duplicate
        else "CAST(duplicate AS BIGINT)"
    )
    files = "[" + ", ".join(quote_literal(str(p)) for p in paths) + "]"
    index = 'CAST("index" AS BIGINT)' if has_index else "CAST(NULL AS BIGINT)"
    return (
        "SELECT md5(query) AS query_id, md5(document) AS doc_id, query, document, "
        'CAST(similarity AS DOUBLE) AS similarity, CAST("drop" AS BOOLEAN) AS "drop", '
        f"{duplicate} AS duplicate, "
        f'{index} AS "index" '
        f"FROM read_parquet({files}, union_by_name = true)"
    )


def write_canonical(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], out_dir: Path
) -> dict[str, object]:
    """Check every file's columns, then stream them into out_dir as canonical Parquet."""
    per_file = {p: _column_types(con, p) for p in paths}
    for path, types in per_file.items():
        _check_file_columns(path, types)
    has_index = all("index" in t for t in per_file.values())
    extra = sorted({c for t in per_file.values() for c in t} - set(CANONICAL_COLUMNS))
    upstream_rows = sum(
        con.execute(
            "SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata($p)", {"p": str(p)}
        ).fetchall()[0][0]
        for p in paths
    )
    select = canonical_select(paths, has_index, (t["duplicate"] for t in per_file.values()))
    copy_parquet(con, select, out_dir)
    return {"upstream_rows": int(upstream_rows), "ignored_columns": extra}


# ---- checks --------------------------------------------------------------------------------
def canonical_rules(
    expected_rows: int | None = None, extra_columns: dict[str, str] | None = None
) -> list[Rule]:
    """Integrity rules every canonical LightOn table (plus extra_columns, for unions) must
    satisfy to be published."""
    rules = [
        Rule(
            "schema",
            "Columns and types are the canonical LightOn schema.",
            schema_is("schema", {**CANONICAL_COLUMNS, **(extra_columns or {})}),
        ),
        Rule(
            "no_null_text_or_score",
            "Query, document, ids and similarity are never null.",
            no_nulls(
                "no_null_text_or_score",
                ["query", "document", "query_id", "doc_id", "similarity", '"drop"'],
                "query_id",
            ),
        ),
        Rule(
            "finite_similarity",
            "Every similarity is a finite number.",
            finite("finite_similarity", "similarity", "query_id"),
        ),
        Rule(
            "not_empty",
            "The partition has rows (warning only: a filter may remove all).",
            not_empty("not_empty"),
            blocking=False,
        ),
    ]
    if expected_rows is not None:
        rules.append(
            Rule(
                "row_count_matches_upstream",
                "Every upstream row arrived: rows = sum of the files' row counts.",
                row_count_is("row_count_matches_upstream", expected_rows),
            )
        )
    return rules


RAW_RULE_NAMES = [r.name for r in canonical_rules(0)]


# ---- the asset ---------------------------------------------------------------------------
def snapshot_metadata(snapshot: DatasetSnapshot, files: Sequence[str]) -> dict[str, object]:
    return {
        "source": snapshot.source,
        "repo_id": snapshot.repo_id,
        "revision": snapshot.revision,
        "files": dg.MetadataValue.json(list(files)),
        "bytes": sum(snapshot.files[f].size for f in files),
    }


@dg.asset(
    key=RAW_KEY,
    partitions_def=lighton_partitions,
    group_name="lighton",
    kinds={"huggingface", "duckdb", "parquet"},
    owners=["team:kd-pipeline"],
    pool="duckdb",
    description="LightOn embeddings-pre-training pairs of one config, canonical columns, "
    "as published upstream (no filter).",
    metadata={"dagster/column_schema": COLUMN_SCHEMA, "upstream": LIGHTON_REPO_ID},
    check_specs=check_specs(canonical_rules(0), RAW_KEY),
)
def lighton_raw(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    upstream: UpstreamResource,
    duckdb: DuckDBResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    config = context.partition_key
    fetcher = upstream.fetcher()
    snapshot = fetcher.dataset_snapshot(LIGHTON_REPO_ID)
    card = fetcher.read_dataset_text(snapshot, "README.md")
    files = resolve_config_files(card, snapshot.files, config)
    local = [fetcher.dataset_file(snapshot, f) for f in files]
    context.log.info(
        f"{config}: {len(files)} file(s) at {snapshot.revision} from {snapshot.source}"
    )
    the_lake = lake.lake()
    with engine_connection(duckdb, the_lake) as con, the_lake.stage(RAW_KEY.path, config) as staged:
        info = write_canonical(con, local, staged.path)
        rows = info["upstream_rows"]
        lineage = snapshot_metadata(snapshot, files)
        metadata = {
            **lineage,
            "dagster/row_count": rows,
            "ignored_columns": ", ".join(info["ignored_columns"]) or "-",
        }
        yield from audit_and_publish(
            con,
            the_lake,
            staged,
            canonical_rules(int(rows)),
            metadata,
            {
                "rows": rows,
                "lineage": {k: v for k, v in lineage.items() if k != "files"},
                "files": list(files),
                "run_id": context.run.run_id,
            },
        )


def definitions() -> dg.Definitions:
    return dg.Definitions(assets=[lighton_raw])
