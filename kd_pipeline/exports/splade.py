"""SPLADE distillation export: light-splade's NDJSON layout, audited by the SPLADE rules.

    train/query_master.ndjson[.gz]       {"qid": int, "text": str}
    train/doc_master.ndjson[.gz]         {"doc_id": int, "text": str}
    train/positive_lists.ndjson[.gz]     {"qid": int, "positive_doc_ids": [int, ...]}
    validation/...                       the same three, for the source's validation queries
    hard-negatives-cross-encoder-scores.ndjson[.gz]   {"qid": int, "scores": {"<doc_id>": float}}
    id-map-part-00000.parquet            kind, id, upstream_id: the integer ids back to upstream
    README.md                            the dataset card (configs, licence, provenance)

DuckDB writes every file with `COPY ... (FORMAT json)` (integer ids as JSON integers, the
score map as a JSON object, exactly the consumer's keys); gzip is applied afterwards, in
parallel members, at the spec's level. The written files are then read back into DuckDB
(`kd_pipeline.checks.splade.load_splade`), and the factory judges them by the SPLADE rules,
the same code `kd-pipeline validate-splade` runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import duckdb

from kd_pipeline.checks.candidates import unique_key
from kd_pipeline.checks.rules import Rule, Table, static
from kd_pipeline.checks.splade import (
    POINTWISE_ALTERNATIVE,
    SCORES_FILE,
    SPLADE_RULES,
    SpladeFacts,
    load_splade,
    resolve_layout,
)
from kd_pipeline.engine import copy_parquet
from kd_pipeline.exports.candidates import CANDIDATES, DOCUMENTS, QUERIES
from kd_pipeline.exports.compression import gzip_file
from kd_pipeline.exports.format import ExportFormat, ExportRun, Written
from kd_pipeline.exports.knobs import check_integer
from kd_pipeline.lake import quote_literal

ID_MAP_PREFIX = "id-map-"
_CANONICAL_INT = "0|[1-9][0-9]{0,17}"  # ids that are already integers keep their value


@dataclass(frozen=True)
class SpladeKnobs:
    """ids: `auto` keeps upstream ids that are all canonical integers (MS MARCO, FiQA) and
    numbers the others densely (LightOn's md5 ids); `dense` always numbers 1..n.
    gzip_level: 1-9, or null for plain `.ndjson`; gzip_files: `scores` (the layout's
    `.ndjson.gz`) or `all`. Which queries go to `validation/` is the source's split (the
    spec file's `splits:`), the same for every export of the source."""

    ids: Literal["auto", "dense"] = "auto"
    gzip_level: int | None = 6
    gzip_files: Literal["scores", "all"] = "scores"

    def __post_init__(self) -> None:
        if self.ids not in ("auto", "dense"):
            raise ValueError(f"ids={self.ids!r}: expected auto or dense")
        check_integer("gzip_level", self.gzip_level, minimum=1, maximum=9, optional=True)
        if self.gzip_files not in ("scores", "all"):
            raise ValueError(f"gzip_files={self.gzip_files!r}: expected scores or all")


def _integer_ids(con: duckdb.DuckDBPyConnection, table: str, column: str, mode: str) -> str:
    """SQL for the integer id of each row: the upstream id itself when `auto` and every id
    is a canonical integer, else 1..n in id order. Returns which one was used."""
    if mode == "auto":
        ((all_integers,),) = con.execute(
            f"SELECT coalesce(bool_and(regexp_full_match({column}, '{_CANONICAL_INT}')), true) "
            f"FROM {table}"
        ).fetchall()
        if all_integers:
            return "upstream"
    return "dense"


def _id_table(con: duckdb.DuckDBPyConnection, name: str, table: str, column: str, mode: str) -> str:
    used = _integer_ids(con, table, column, mode)
    expr = (
        f"CAST({column} AS BIGINT)"
        if used == "upstream"
        else f"row_number() OVER (ORDER BY {column})"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {column}, CAST({expr} AS BIGINT) AS id "
        f"FROM {table}"
    )
    return used


def write_ndjson(
    run: ExportRun, select: str, relative: str, gzip_level: int | None, timings: dict[str, float]
) -> tuple[str, int]:
    """COPY select to out/<relative>.ndjson, or to scratch then gzip into .ndjson.gz."""
    target = run.out / f"{relative}.ndjson"
    target.parent.mkdir(parents=True, exist_ok=True)
    plain = target if gzip_level is None else run.scratch / relative.replace("/", "__")
    began = time.perf_counter()
    ((rows,),) = run.con.execute(
        f"COPY ({select}) TO {quote_literal(str(plain))} (FORMAT json)"
    ).fetchall()
    timings["json_seconds"] = timings.get("json_seconds", 0.0) + time.perf_counter() - began
    if gzip_level is None:
        return target.name, int(rows)
    began = time.perf_counter()
    gz = target.with_name(target.name + ".gz")
    gzip_file(plain, gz, gzip_level, run.threads)
    plain.unlink()
    timings["gzip_seconds"] = timings.get("gzip_seconds", 0.0) + time.perf_counter() - began
    return gz.name, int(rows)


def write_splade(run: ExportRun) -> Written:
    """Split, number, write the masters per split and the shared score file, then load
    them back: the facts the SPLADE rules judge (temp tables of run.con)."""
    con, knobs = run.con, run.knobs
    id_modes = {
        "query_ids": _id_table(con, "kd_qids", QUERIES, "query_id", knobs.ids),
        "doc_ids": _id_table(con, "kd_dids", DOCUMENTS, "doc_id", knobs.ids),
    }
    con.execute(f"CREATE OR REPLACE TEMP TABLE kd_split AS SELECT query_id, split FROM {QUERIES}")
    # every candidate numbered once (a cast when the upstream ids are integers: no join)
    qid = "CAST(c.query_id AS BIGINT)" if id_modes["query_ids"] == "upstream" else "q.id"
    did = "CAST(c.doc_id AS BIGINT)" if id_modes["doc_ids"] == "upstream" else "d.id"
    joins = ("" if id_modes["query_ids"] == "upstream" else " JOIN kd_qids q USING (query_id)") + (
        "" if id_modes["doc_ids"] == "upstream" else " JOIN kd_dids d USING (doc_id)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE kd_numbered AS SELECT {qid} AS qid, {did} AS did, "
        f"c.score, c.is_positive, c.teacher_rank, s.split FROM {CANDIDATES} c "
        f"JOIN kd_split s USING (query_id){joins}"
    )
    scaled = run.apply_transform("kd_numbered", "qid")
    copy_parquet(
        con,
        "SELECT 'query' AS kind, id, query_id AS upstream_id FROM kd_qids UNION ALL "
        "SELECT 'document', id, doc_id FROM kd_dids ORDER BY kind DESC, id",
        run.out,
        filename_prefix=ID_MAP_PREFIX,
    )
    masters_gz = knobs.gzip_level if knobs.gzip_files == "all" else None
    timings: dict[str, float] = {}
    files: dict[str, int] = {}
    ((splits,),) = con.execute(
        "SELECT list(DISTINCT split ORDER BY split DESC) FROM kd_split"
    ).fetchall()
    for part in splits or ["train"]:
        in_split = f"split = {quote_literal(part)}"
        selects = {
            "query_master": (
                f"SELECT i.id AS qid, q.text FROM {QUERIES} q JOIN kd_qids i USING (query_id) "
                f"JOIN kd_split s USING (query_id) WHERE s.{in_split} ORDER BY qid"
            ),
            "doc_master": (
                f"SELECT i.id AS doc_id, d.text FROM {DOCUMENTS} d JOIN kd_dids i USING (doc_id) "
                f"SEMI JOIN (SELECT DISTINCT did FROM kd_numbered WHERE {in_split}) n "
                "ON n.did = i.id ORDER BY doc_id"
            ),
            "positive_lists": (
                "SELECT qid, list(did ORDER BY did) AS positive_doc_ids FROM kd_numbered "
                f"WHERE is_positive AND {in_split} GROUP BY qid ORDER BY qid"
            ),
        }
        for stem, select in selects.items():
            name, rows = write_ndjson(run, select, f"{part}/{stem}", masters_gz, timings)
            files[f"{part}/{name}"] = rows
    scores = (
        "SELECT qid, map_from_entries(list({'k': CAST(did AS VARCHAR), 'v': score} "
        "ORDER BY teacher_rank)) AS scores FROM kd_numbered GROUP BY qid ORDER BY qid"
    )
    name, rows = write_ndjson(run, scores, SCORES_FILE, knobs.gzip_level, timings)
    files[name] = rows
    con.execute("DROP TABLE kd_numbered")

    layout = resolve_layout(run.out)
    alternative = (
        f"the sentence-transformers pointwise export (exports/pointwise/pointwise_{run.name})"
        if run.source_shape == "pointwise"
        else POINTWISE_ALTERNATIVE
    )
    began = time.perf_counter()
    facts = SpladeFacts(load_splade(con, layout), alternative)
    timings["audit_seconds"] = time.perf_counter() - began
    ((split_sizes,),) = con.execute(
        "SELECT map(list(split), list(n)) FROM (SELECT split, count(*) AS n FROM kd_split "
        "GROUP BY split ORDER BY split)"
    ).fetchall()
    query_tables = {
        split: Table(
            "read_json($masters, format = 'newline_delimited', columns = "
            "{'qid': 'BIGINT', 'text': 'VARCHAR'})",
            {"masters": [str(f) for f in parts["queries"]]},
        )
        for split, parts in layout.splits.items()
    }
    counts = {
        **id_modes,
        **scaled,
        "split_queries": {str(k): int(v) for k, v in dict(split_sizes or {}).items()},
        "bytes": {
            str(p.relative_to(run.out)): p.stat().st_size
            for p in sorted(run.out.rglob("*"))
            if p.is_file()
        },
        **{k: round(v, 3) for k, v in timings.items()},
    }
    return Written(
        Table.parquet(str(run.out / f"{ID_MAP_PREFIX}*.parquet")),
        files,
        counts,
        facts=facts,
        query_tables=query_tables,
    )


# The id map is one-to-one: an integer id names one upstream id and back. Judged on the
# written table (the id map's Parquet); the SPLADE facts are not read.
ID_MAP_RULES: list[Rule[SpladeFacts]] = [
    Rule(
        "id_map_ids_unique",
        "Each (kind, id) of the id map names one upstream id.",
        static(unique_key(["kind", "id"])),
    ),
    Rule(
        "id_map_upstream_unique",
        "Each upstream id has one integer id.",
        static(unique_key(["kind", "upstream_id"])),
    ),
]

# The export's checks: every SPLADE rule (judged on the folder `write_splade` loaded, its
# `Written.facts`), then the id map's.
EXPORT_RULES: list[Rule[SpladeFacts]] = [*SPLADE_RULES, *ID_MAP_RULES]


SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("kind", "VARCHAR", description="query | document"),
        dg.TableColumn("id", "BIGINT", description="the integer id used in the NDJSON files"),
        dg.TableColumn("upstream_id", "VARCHAR", description="the source's id (a string)"),
    ]
)

LAYOUT = """\
| path | one JSON object a line |
|---|---|
| `train/query_master.ndjson` | `{"qid": int, "text": str}` |
| `train/doc_master.ndjson` | `{"doc_id": int, "text": str}` |
| `train/positive_lists.ndjson` | `{"qid": int, "positive_doc_ids": [int, ...]}` |
| `validation/...` | the same three, for the source's validation queries |
| `hard-negatives-cross-encoder-scores.ndjson.gz` | `{"qid": int, "scores": {"<doc_id>": float}}` |
| `id-map-part-00000.parquet` | `kind, id, upstream_id` (Parquet) |
| `README.md` | the dataset card: configs `query_master`, `doc_master`, `positive_lists` \
(splits train, validation); licence; provenance |
"""

FORMAT = ExportFormat(
    name="splade",
    title="SPLADE distillation files (light-splade NDJSON)",
    kinds=frozenset({"duckdb", "json"}),
    knobs=SpladeKnobs,
    shapes=frozenset({"pairwise", "listwise", "pointwise"}),
    needs_positives=True,
    column_schema=SCHEMA,
    layout=LAYOUT,
    write=write_splade,
    rules=EXPORT_RULES,
    query_column="qid",
    writes_splits=True,
    hf_configs={
        "query_master": "{split}/query_master.ndjson*",
        "doc_master": "{split}/doc_master.ndjson*",
        "positive_lists": "{split}/positive_lists.ndjson*",
    },
    hf_default="query_master",
    # one training example per train query (its positives and scored negatives)
    row_count=lambda written: int(written.counts["split_queries"].get("train", 0)),
    consumer=(
        "light-splade: point its dataset at `train/query_master.ndjson`, "
        "`train/doc_master.ndjson`, `train/positive_lists.ndjson` and "
        "`hard-negatives-cross-encoder-scores.ndjson.gz` (and `validation/...` for "
        "evaluation). The score file is a map per query, not a table, and `datasets` reads "
        "one file format per folder, so the card lists the NDJSON masters only, e.g. "
        '`datasets.load_dataset(folder, "query_master")`; the Parquet id map is read with '
        '`load_dataset("parquet", data_files=f"{folder}/id-map-part-*.parquet")`.'
    ),
)
