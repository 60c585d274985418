"""lightning-ir run files: ranked candidates, named so lightning-ir finds the collection.

lightning-ir's RunDataset takes the dataset from the file name,
`name.split(".")[0].split("__")[-1]`, and maps it back to an ir_datasets id by turning `-`
into `/` (`msmarco-passage-train` -> `msmarco-passage/train`); the loader is chosen by the
first suffix. So the file is `__<system>__<ir_datasets id with - for />.parquet`, with no
other dot in the name: `system` is made of letters, digits and `-` only. Columns:
`query_id, doc_id, rank, score` (ranks 1..n by teacher score); with `trec: true` the same
ranking is also written as a TREC run, `__<system>__<dataset>.run`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline.checks.candidates import RANKS_CONTIGUOUS, unique_candidates
from kd_pipeline.checks.rules import (
    Rule,
    RuleFn,
    RuleOutcome,
    Table,
    finite,
    not_empty,
    schema_is,
    static,
)
from kd_pipeline.engine import parquet_options
from kd_pipeline.exports.candidates import CANDIDATES
from kd_pipeline.exports.format import ExportFormat, ExportRun, Written
from kd_pipeline.exports.knobs import check_integer
from kd_pipeline.lake import quote_literal

COLUMNS = {"query_id": "VARCHAR", "doc_id": "VARCHAR", "rank": "INTEGER", "score": "DOUBLE"}


@dataclass(frozen=True)
class LightningIrKnobs:
    """system: the run's name in the file (default: the export's name and partition);
    ir_datasets_id: the collection (default: the source's, e.g. msmarco-passage/train);
    max_rank: keep ranks <= this (null: all); trec: also write the `.run` file."""

    system: str | None = None
    ir_datasets_id: str | None = None
    max_rank: int | None = None
    trec: bool = False

    def __post_init__(self) -> None:
        if self.system is not None and not re.fullmatch(r"[A-Za-z0-9-]+", str(self.system)):
            raise ValueError(f"system={self.system!r}: letters, digits and - only")
        if self.ir_datasets_id is not None and not re.fullmatch(
            r"[a-z0-9][a-z0-9/_-]*", str(self.ir_datasets_id)
        ):
            raise ValueError(f"ir_datasets_id={self.ir_datasets_id!r} is not an ir_datasets id")
        check_integer("max_rank", self.max_rank, minimum=1, optional=True)
        if not isinstance(self.trec, bool):
            raise ValueError("trec: expected true or false")


def dashed(ir_datasets_id: str) -> str:
    """An ir_datasets id as lightning-ir reads it from a file name."""
    return ir_datasets_id.replace("/", "-")


def run_file_stem(system: str, ir_datasets_id: str) -> str:
    return f"__{system}__{dashed(ir_datasets_id)}"


def dataset_from_file_name(name: str) -> str:
    """What lightning-ir takes from a run file's name (its RunDataset rule)."""
    return name.split(".")[0].split("__")[-1]


def default_system(name: str, partition: str | None) -> str:
    raw = name if partition is None else f"{name}-{partition}"
    return re.sub(r"[^A-Za-z0-9-]+", "-", raw).strip("-")


def write_run(run: ExportRun) -> Written:
    knobs: LightningIrKnobs = run.knobs
    dataset = knobs.ir_datasets_id or run.ir_datasets_id
    if not dataset:
        raise ValueError(
            f"{run.source_key} has no ir_datasets collection: set the ir_datasets_id knob"
        )
    system = knobs.system or default_system(run.name, run.partition)
    stem = run_file_stem(system, dataset)
    cut = "" if knobs.max_rank is None else f"WHERE teacher_rank <= {knobs.max_rank}"
    run.con.execute(f"CREATE OR REPLACE TEMP TABLE kd_run AS SELECT * FROM {CANDIDATES} {cut}")
    scaled = run.apply_transform("kd_run")
    select = (
        "SELECT query_id, doc_id, teacher_rank AS rank, score FROM kd_run ORDER BY query_id, rank"
    )
    parquet = run.out / f"{stem}.parquet"
    ((rows,),) = run.con.execute(
        f"COPY ({select}) TO {quote_literal(str(parquet))} ({parquet_options()})"
    ).fetchall()
    files = {parquet.name: int(rows)}
    if knobs.trec:
        trec = run.out / f"{stem}.run"
        run.con.execute(
            f"COPY (SELECT query_id, 'Q0', doc_id, rank, score, {quote_literal(system)} "
            f"FROM ({select})) TO {quote_literal(str(trec))} "
            "(FORMAT csv, DELIMITER ' ', HEADER false, QUOTE '')"
        )
        files[trec.name] = int(rows)
    return Written(
        Table.parquet(str(parquet)),
        files,
        {"system": system, "ir_datasets_id": dataset, "file": parquet.name, **scaled},
        facts=RunFile(parquet, dataset),
    )


@dataclass(frozen=True)
class RunFile:
    """The written run file and the ir_datasets id its name must carry."""

    path: Path
    dataset: str


def file_name_names_collection(run_file: RunFile) -> RuleFn:
    """The file name gives lightning-ir the collection (and the loader) it should."""
    path, dataset = run_file.path, run_file.dataset

    def evaluate(con: duckdb.DuckDBPyConnection, table: Table) -> RuleOutcome:
        found = dataset_from_file_name(path.name)
        suffix = path.suffixes[0] if path.suffixes else ""
        ok = found == dashed(dataset) and suffix == ".parquet"
        detail = (
            f"{path.name} -> dataset {found!r}, loader {suffix!r}; expected {dashed(dataset)!r}"
        )
        return RuleOutcome(ok, 0 if ok else 1, () if ok else (path.name,), detail)

    return evaluate


def lightning_ir_rules() -> list[Rule[RunFile]]:
    """The checks of a lightning-ir run export (facts: the written file)."""
    return [
        Rule("schema", "Columns: query_id, doc_id, rank, score.", static(schema_is(COLUMNS))),
        RANKS_CONTIGUOUS,
        unique_candidates("A document is ranked once per query."),
        Rule("finite_scores", "Every score is finite.", static(finite("score", "query_id"))),
        Rule(
            "file_name_names_collection",
            "lightning-ir reads the collection from the file name: it must be the dashed "
            "ir_datasets id, with .parquet as the first suffix.",
            file_name_names_collection,
        ),
        Rule("not_empty", "The run has rows.", static(not_empty())),
    ]


FORMAT = ExportFormat(
    name="lightning_ir",
    title="lightning-ir run file (Parquet, optional TREC)",
    kinds=frozenset({"duckdb", "parquet"}),
    knobs=LightningIrKnobs,
    shapes=frozenset({"pairwise", "listwise"}),
    needs_positives=False,
    column_schema=dg.TableSchema(
        columns=[
            dg.TableColumn("query_id", "VARCHAR", description="query id of the collection"),
            dg.TableColumn("doc_id", "VARCHAR", description="document id of the collection"),
            dg.TableColumn("rank", "INTEGER", description="1-based rank by teacher score"),
            dg.TableColumn("score", "DOUBLE", description="teacher score"),
        ]
    ),
    layout="`__<system>__<ir_datasets id with - for />.parquet` (`query_id, doc_id, rank, "
    "score`), plus `.run` (TREC) with `trec: true`; the same under `validation/` for the "
    "source's validation queries",
    write=write_run,
    rules=lightning_ir_rules(),
    query_column="query_id",
    hf_configs={"default": "__*.parquet"},
    row_count=lambda written: int(written.files[written.counts["file"]]),  # not the .run copy
    consumer=(
        'lightning-ir: `RunDataset("<folder>/__<system>__<dataset>.parquet", ...)` (the '
        "file name names the ir_datasets collection); `datasets.load_dataset(folder)` reads "
        "the same rows."
    ),
)
