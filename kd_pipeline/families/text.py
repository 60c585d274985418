"""Text collections: MS MARCO passage and BEIR FiQA as canonical queries, documents, qrels.

One asset per table, group `text`, keys `text/<collection>/<table>`. Each fetches its upstream
file (verified by md5 where one is known), unpacks the one archive member it needs into the
lake's scratch space, parses it with explicit columns and publishes it through write,
audit, publish. The teacher-score families check their ids against these tables.
"""

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import dagster as dg
import duckdb
import ftfy
import ftfy.badness
import pyarrow as pa

from kd_pipeline import canonical
from kd_pipeline.checks.candidates import ReadFacts, non_empty_ids, parsed_rule, unique_key
from kd_pipeline.checks.rules import Rule, no_nulls, not_empty, schema_is, static
from kd_pipeline.families.upstream import (
    BEIR_FIQA_MD5,
    BEIR_FIQA_URL,
    BEIR_QRELS_HEADER,
    MSMARCO_COLLECTION_URL,
    MSMARCO_QRELS_TRAIN_URL,
    MSMARCO_QUERIES_URL,
    fetch_upstream_file,
)
from kd_pipeline.lake_asset import Built, LakeAsset, Step, lake_asset
from kd_pipeline.metadata import preview
from kd_pipeline.parsers import (
    TREC_QRELS,
    DelimitedFormat,
    ParseReport,
    copy_delimited,
    copy_json_lines,
    unpacked,
)

try:  # DuckDB >= 1.4 moved the SQL types here
    from duckdb.sqltypes import VARCHAR
except ImportError:  # pragma: no cover - older DuckDB
    from duckdb.typing import VARCHAR

MSMARCO_COLLECTION_KEY = dg.AssetKey(["text", "msmarco_passage", "collection"])
MSMARCO_QUERIES_TRAIN_KEY = dg.AssetKey(["text", "msmarco_passage", "queries_train"])
MSMARCO_QRELS_TRAIN_KEY = dg.AssetKey(["text", "msmarco_passage", "qrels_train"])
FIQA_CORPUS_KEY = dg.AssetKey(["text", "fiqa", "corpus"])
FIQA_QUERIES_KEY = dg.AssetKey(["text", "fiqa", "queries"])
FIQA_QRELS_TRAIN_KEY = dg.AssetKey(["text", "fiqa", "qrels_train"])
TEXT_JOB = "text_collections"

ID_TEXT_TSV = DelimitedFormat("id<TAB>text TSV", (("id", "VARCHAR"), ("text", "VARCHAR")))
BEIR_QRELS = DelimitedFormat(
    "BEIR qrels TSV (query-id corpus-id score)",
    (("query_id", "VARCHAR"), ("doc_id", "VARCHAR"), ("relevance", "INTEGER")),
    any_whitespace=True,
    header=BEIR_QRELS_HEADER,
)


# ---- MS MARCO mojibake ---------------------------------------------------------------------
# UTF-8 text decoded as Windows-1252 or latin-1 spells each multi-byte character starting
# with its lead byte 0xC2-0xF4, shown as one of `Â`..`ô`. A text without any such character
# holds no mojibake of that kind, so DuckDB passes only the others (a few percent of MS
# MARCO) to Python, where ftfy decides.
MOJIBAKE_RE2 = "[\\x{C2}-\\x{F4}]"  # DuckDB's regexp_matches pre-filter


def repair_mojibake(text: str) -> str:
    """text with its mojibake undone, or text itself when ftfy does not flag it.

    MS MARCO's collection.tsv has passages such as `donâ€™t` for `don’t` and `cafÃ©` for
    `café`. ftfy (`ftfy.badness.is_bad`) judges whether a text looks like mojibake, with
    heuristics built to leave genuine text alone (`„Fuß“`, `NESCAFÉ®`, `2×\u00a03`); only a
    flagged text is repaired, by `ftfy.fix_encoding` (encoding fixes only: no quote, width
    or line-break normalisation), which also undoes double damage.
    """
    if not ftfy.badness.is_bad(text):
        return text
    return ftfy.fix_encoding(text)


@dataclass
class RepairTally:
    """How many texts the repair changed, and a few (before, after) examples (metadata
    `mojibake_repaired`, `mojibake_examples`)."""

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, before: str, after: str) -> None:
        with self.lock:
            self.count += 1
            if len(self.examples) < 3:
                pairs = zip(before, after, strict=False)
                first = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
                start = max(0, first - 20)
                self.examples.append((before[start : start + 60], after[start : start + 50]))


REPAIR_FUNCTION = "kd_repair_mojibake"


@contextlib.contextmanager
def mojibake_repair_function(con: duckdb.DuckDBPyConnection) -> Iterator[RepairTally]:
    """Register `kd_repair_mojibake(text)` on con (a vectorised Arrow UDF) for the block.

    Call it behind `regexp_matches(text, MOJIBAKE_RE2)`: DuckDB evaluates CASE branches on
    the matching rows only, so Python sees the few suspect passages, not all 8.8 million.
    """
    tally = RepairTally()

    def repair_batch(values: pa.Array) -> pa.Array:
        out: list[str | None] = []
        for value in values.to_pylist():
            fixed = None if value is None else repair_mojibake(value)
            if fixed != value:
                tally.add(value, fixed)
            out.append(fixed)
        return pa.array(out, pa.string())

    con.create_function(
        REPAIR_FUNCTION, repair_batch, [VARCHAR], VARCHAR, type="arrow", side_effects=False
    )
    try:
        yield tally
    finally:
        con.remove_function(REPAIR_FUNCTION)


# ---- readers: upstream file -> canonical table ----------------------------------------------
Reader = Callable[[duckdb.DuckDBPyConnection, Path, Path, str], ParseReport]


def read_msmarco_collection(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    """collection.tsv (`pid<TAB>passage`) with the mojibake repaired, streaming."""
    select = (
        "SELECT id AS doc_id, CASE WHEN regexp_matches(text, $pattern) "
        f"THEN {REPAIR_FUNCTION}(text) ELSE text END AS text FROM {{rows}}"
    )
    with mojibake_repair_function(con) as tally:
        report = copy_delimited(
            con, path, ID_TEXT_TSV, select, out_dir, label=label, params={"pattern": MOJIBAKE_RE2}
        )
    return replace(
        report,
        extra={
            **report.extra,
            "mojibake_repaired": tally.count,
            "mojibake_examples": [f"{b!r} -> {a!r}" for b, a in tally.examples],
        },
    )


def read_msmarco_queries(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    select = "SELECT id AS query_id, text FROM {rows}"
    return copy_delimited(con, path, ID_TEXT_TSV, select, out_dir, label=label)


def read_trec_qrels(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    select = "SELECT query_id, doc_id, relevance FROM {rows}"
    return copy_delimited(con, path, TREC_QRELS, select, out_dir, label=label)


def read_beir_corpus(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    columns = (("_id", "VARCHAR"), ("title", "VARCHAR"), ("text", "VARCHAR"))
    select = "SELECT \"_id\" AS doc_id, text, coalesce(title, '') AS title FROM {rows}"
    return copy_json_lines(con, path, columns, select, out_dir, label=label)


def read_beir_queries(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    columns = (("_id", "VARCHAR"), ("text", "VARCHAR"))
    select = 'SELECT "_id" AS query_id, text FROM {rows}'
    return copy_json_lines(con, path, columns, select, out_dir, label=label)


def read_beir_qrels(
    con: duckdb.DuckDBPyConnection, path: Path, out_dir: Path, label: str
) -> ParseReport:
    select = "SELECT query_id, doc_id, relevance FROM {rows}"
    return copy_delimited(con, path, BEIR_QRELS, select, out_dir, label=label)


# ---- specs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextTable:
    """One canonical text table and the upstream file (or archive member) it comes from."""

    key: dg.AssetKey
    columns: dict[str, str]
    key_columns: tuple[str, ...]
    description: str
    url: str
    upstream_md5: str | None
    member: str | None
    read: Reader

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.key_columns]


TEXT_TABLES: tuple[TextTable, ...] = (
    TextTable(
        MSMARCO_COLLECTION_KEY,
        canonical.DOCUMENTS,
        ("doc_id",),
        "MS MARCO passage collection (8.8M passages), mojibake repaired.",
        MSMARCO_COLLECTION_URL,
        None,
        "collection.tsv",
        read_msmarco_collection,
    ),
    TextTable(
        MSMARCO_QUERIES_TRAIN_KEY,
        canonical.QUERIES,
        ("query_id",),
        "MS MARCO passage train queries.",
        MSMARCO_QUERIES_URL,
        None,
        "queries.train.tsv",
        read_msmarco_queries,
    ),
    TextTable(
        MSMARCO_QRELS_TRAIN_KEY,
        canonical.QRELS,
        ("query_id", "doc_id"),
        "MS MARCO passage train relevance judgements.",
        MSMARCO_QRELS_TRAIN_URL,
        None,
        None,
        read_trec_qrels,
    ),
    TextTable(
        FIQA_CORPUS_KEY,
        canonical.TITLED_DOCUMENTS,
        ("doc_id",),
        "BEIR FiQA-2018 corpus (financial opinion posts).",
        BEIR_FIQA_URL,
        BEIR_FIQA_MD5,
        "fiqa/corpus.jsonl",
        read_beir_corpus,
    ),
    TextTable(
        FIQA_QUERIES_KEY,
        canonical.QUERIES,
        ("query_id",),
        "BEIR FiQA-2018 queries (all splits).",
        BEIR_FIQA_URL,
        BEIR_FIQA_MD5,
        "fiqa/queries.jsonl",
        read_beir_queries,
    ),
    TextTable(
        FIQA_QRELS_TRAIN_KEY,
        canonical.QRELS,
        ("query_id", "doc_id"),
        "BEIR FiQA-2018 train relevance judgements.",
        BEIR_FIQA_URL,
        BEIR_FIQA_MD5,
        "fiqa/qrels/train.tsv",
        read_beir_qrels,
    ),
)


def text_rules(table: TextTable) -> list[Rule[ReadFacts]]:
    """What a text table must satisfy to be published (all blocking)."""
    first_key = table.key_columns[0]
    return [
        Rule(
            "schema",
            "Columns and types are the canonical ones.",
            static(schema_is(table.columns)),
        ),
        parsed_rule("Every upstream line parsed (malformed ones are reported as file:line)."),
        Rule(
            "ids_present",
            "Ids are neither null nor empty.",
            static(non_empty_ids(list(table.key_columns), first_key)),
        ),
        Rule(
            "unique_ids",
            f"({', '.join(table.key_columns)}) is unique.",
            static(unique_key(table.key_columns)),
        ),
        Rule(
            "no_null_values",
            f"{', '.join(table.value_columns)} never null.",
            static(no_nulls(table.value_columns, first_key)),
        ),
        Rule("not_empty", "The table has rows.", static(not_empty())),
    ]


# ---- assets ----------------------------------------------------------------------------------
@contextlib.contextmanager
def local_member(path: Path, member: str | None, scratch: Path) -> Iterator[Path]:
    """The file itself, or the one archive member unpacked into scratch (removed after)."""
    if member is None:
        yield path
        return
    with unpacked(path, [member], scratch) as members:
        yield members[member]


def build_text_asset(table: TextTable) -> dg.AssetsDefinition:
    """text/<collection>/<table>: one canonical table from its upstream file."""
    source = table.url + (f" [{table.member}]" if table.member else "")
    spec = LakeAsset(
        key=table.key,
        group="text",
        description=table.description,
        rules=text_rules(table),
        metadata={
            "dagster/column_schema": canonical.table_schema(table.columns),
            "upstream": source,
        },
        reads_upstream=True,
    )

    def write_text_table(step: Step) -> Built[ReadFacts]:
        fetched = fetch_upstream_file(step.fetcher, table.url, table.upstream_md5)
        label = fetched.path.name + (f":{table.member}" if table.member else "")
        step.log(f"{table.key.to_user_string()}: reading {label} ({step.fetcher.describe()})")
        with local_member(fetched.path, table.member, step.lake.scratch_dir()) as local:
            report = table.read(step.con, local, step.staged.path, label)
        lineage = {
            **fetched.metadata(),
            "member": table.member or "-",
            "source": step.fetcher.describe(),
        }
        parse = {**report.metadata(), **report.extra}
        return Built(
            report.rows,
            ReadFacts([report]),
            metadata={
                **lineage,
                **parse,
                "preview": preview(step.con, step.table, list(table.columns)),
            },
            manifest={"lineage": lineage, "parse": parse},
        )

    return lake_asset(spec, write_text_table)


text_assets = [build_text_asset(table) for table in TEXT_TABLES]
text_job = dg.define_asset_job(
    TEXT_JOB,
    selection=dg.AssetSelection.assets(*(t.key for t in TEXT_TABLES)),
    description="MS MARCO passage and BEIR FiQA texts, queries and qrels.",
)
