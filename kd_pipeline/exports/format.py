"""What an export format is: its knobs, what it writes, and the rules its output must pass.

Every format module (`splade.py`, `margin_mse.py`, ...) defines one `ExportFormat`; the
factory turns (spec, format) into a Dagster asset. A format writes from the candidate
tables that `candidates.py` prepared (the same for every format), so a format module only
knows its own layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from kd_pipeline.checks.rules import Rule, Table
from kd_pipeline.exports.knobs import check_integer
from kd_pipeline.exports.scores import ExportScale, ScoreTransform


class SpecError(ValueError):
    """An export spec (or its knobs) is invalid; the message names the spec."""


@dataclass(frozen=True)
class ExportRun:
    """Everything a format's writer needs for one asset partition."""

    con: duckdb.DuckDBPyConnection
    out: Path  # the staged version folder
    scratch: Path  # removed after the run
    knobs: Any  # the format's knob dataclass
    name: str  # the spec's name (the last part of the asset key)
    source_key: str  # e.g. hofstaetter/teacher_scores
    partition: str | None
    threads: int
    source_shape: str = "listwise"
    ir_datasets_id: str | None = None
    title_column: bool = False  # the documents have titles (BEIR)
    split: str = "train"  # the split whose queries the candidate tables hold now
    transform: ScoreTransform = field(default_factory=ScoreTransform)
    export: str = ""  # the asset key, for messages
    ordered: bool = False  # the source's rows are in training order (kd_rows exists)
    # score_scope: export: the whole export's score statistics, taken before the split
    scale: ExportScale | None = None

    def apply_transform(self, table: str, group: str = "query_id") -> dict[str, Any]:
        """The spec's score transform on a temp table of this run (see scores.py)."""
        return self.transform.apply(self.con, table, group, self.scale)


@dataclass(frozen=True)
class Written:
    """What a writer produced: the Table the audit reads, files with their rows and bytes,
    and counts for the metadata."""

    table: Table
    files: dict[str, int] = field(default_factory=dict)  # relative path -> rows
    counts: dict[str, Any] = field(default_factory=dict)
    facts: Any = None  # what the format's rules read besides the table (see ExportFormat.rules)
    # split -> a table with the format's query column, when not `table` (SPLADE's masters)
    query_tables: dict[str, Table] | None = None


@dataclass(frozen=True)
class ShortQueries:
    """A fixed-shape format's facts for its `one_list_length` rule: the export's key (for
    messages), how many queries were dropped for too few candidates, and the list length
    every row has (the partition's knob: a partition may override the spec's)."""

    export: str
    dropped: int
    per_row: int


@dataclass(frozen=True)
class ExportFormat:
    """One training format."""

    name: str  # the asset key's middle part: exports/<name>/<name>_<spec name>
    title: str  # one line for descriptions
    kinds: frozenset[str]
    knobs: type  # a frozen dataclass: defaults, validation in __post_init__
    shapes: frozenset[str]  # source shapes it accepts: pairwise, listwise, pointwise
    needs_positives: bool  # queries without a positive are dropped before writing
    column_schema: dg.TableSchema
    layout: str  # the files on disk (Markdown), for the asset's metadata and the README
    write: Callable[[ExportRun], Written]
    # the format's rules, declared once (one asset check each) and judged on every split's
    # `Written.table` with its `Written.facts` (which carry the partition's knobs they need)
    rules: Sequence[Rule[Any]]
    query_column: str  # the column naming the query in the written table (split check)
    # the dataset card: config name -> files of a split (a glob; `{split}` where the
    # format names split folders itself), the default config, the consumer's loading call
    hf_configs: Mapping[str, str]
    consumer: str
    # the export's `dagster/row_count`, from what `write` returned for the train split: the
    # rows a trainer iterates (not the query or document tables beside them, nor a second
    # copy of the same run in another file format, nor the validation split)
    row_count: Callable[[Written], int]
    # the columns of the `preview` metadata, for the knobs and whether the source is
    # ordered (None: the format's rows are not a readable table, no preview)
    preview_columns: Callable[[Any, bool], list[str]] | None = None
    hf_default: str = "default"
    writes_splits: bool = False  # writes train and validation itself (SPLADE); else the
    # factory runs `write` once per split, validation into `validation/`


def rows_of(name: str) -> Callable[[Written], int]:
    """A row_count: the rows `write` counted for one file (or glob, or folder) name."""
    return lambda written: int(written.files[name])


def parse_knobs(knob_type: type, values: Mapping[str, Any], where: str) -> Any:
    """The format's knob dataclass from a spec mapping; unknown knobs and bad values raise
    SpecError naming the spec."""
    allowed = {f.name for f in dataclasses.fields(knob_type)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown knob(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        return knob_type(**values)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None


def knob_values(knobs: Any) -> dict[str, Any]:
    return dataclasses.asdict(knobs)


@dataclass(frozen=True)
class PartFiles:
    """rows_per_file: null = Parquet part files roll at ~512 MB; n = a new part file every
    n rows (exactly; names `part-00000.parquet`, ... sort in row order)."""

    rows_per_file: int | None = None

    def __post_init__(self) -> None:
        check_rows_per_file(self.rows_per_file)


def check_rows_per_file(value: object) -> None:
    check_integer("rows_per_file", value, minimum=1, optional=True)
