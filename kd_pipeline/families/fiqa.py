"""FiQA mined reranker scores: 16 scored documents per FiQA-2018 train query (Hub dataset).

`fiqa/mined_scores` reads `stefan-jo/fiqa-train-mined-reranker-scores` (one row a query:
`document_ids`, `scores`, `labels` lists) and explodes the lists into the canonical
listwise table plus the upstream `label`; rank is the list position (upstream sorts by
score, descending). Its licence is non-commercial: the asset carries that in its
definition and in every materialisation, so the lineage of anything built from it shows it.
"""

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline import canonical
from kd_pipeline.checks.candidates import UNRESOLVED_RULE, ReadFacts, listwise_rules
from kd_pipeline.checks.rules import Rule, rows_where, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.families.lighton import (
    SchemaError,
    card_front_matter,
    resolve_config_files,
    snapshot_metadata,
)
from kd_pipeline.families.text import FIQA_CORPUS_KEY, FIQA_QUERIES_KEY, TEXT_TABLES
from kd_pipeline.families.upstream import FIQA_LABELS, FIQA_MINED_LICENCE, FIQA_MINED_REPO_ID
from kd_pipeline.fetch import FetchError
from kd_pipeline.lake import quote_literal
from kd_pipeline.lake_asset import Built, LakeAsset, Step, lake_asset
from kd_pipeline.lineage import published_glob, published_versions
from kd_pipeline.metadata import preview

MINED_KEY = dg.AssetKey(["fiqa", "mined_scores"])
FIQA_JOB = "fiqa_mined"

# The seed's dataset id is unverified; this one names the Hub dataset it reads.
PREPARE_IDS: dict[str, tuple[dg.AssetKey, str | None]] = {
    "com.github.stefan-jo.fiqa.mined-reranker-scores": (MINED_KEY, None),
}

_SPLIT_NAMES = re.compile(r"(^|[/_.-])(train|test|validation|valid|dev)([/_.-]|$)")


def resolve_mined_files(card: str | None, repo_files: Iterable[str]) -> list[str]:
    """The parquet files of the train split (the layout is unverified, so discover it):
    the card's `default` config when it declares one, else files named for the train
    split, else every parquet file not named for another split."""
    files = sorted(f for f in repo_files if f.endswith(".parquet"))
    configs = card_front_matter(card).get("configs") or []
    if any(isinstance(c, dict) and c.get("config_name") == "default" for c in configs):
        return resolve_config_files(card, files, "default")
    named = {f: _SPLIT_NAMES.search(f) for f in files}
    train = [f for f, m in named.items() if m and m.group(2) == "train"]
    unnamed = [f for f, m in named.items() if m is None]
    chosen = train or unnamed
    if not chosen:
        raise FetchError(
            f"{FIQA_MINED_REPO_ID}: no parquet file of the train split among {files or 'nothing'}"
        )
    return chosen


_LIST_TYPES = {
    "query_id": ("VARCHAR", "BIGINT", "INTEGER"),
    "document_ids[]": ("VARCHAR", "BIGINT", "INTEGER"),
    "scores[]": ("DOUBLE", "FLOAT"),
    "labels[]": ("VARCHAR",),
}


def check_mined_columns(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """The four upstream columns exist with usable types (ids may be integers: cast)."""
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet($p)", {"p": str(path)}).fetchall()
    types = {name: dtype for name, dtype, *_ in rows}
    for spec, allowed in _LIST_TYPES.items():
        column, is_list = spec.removesuffix("[]"), spec.endswith("[]")
        found = types.get(column)
        if found is None:
            raise SchemaError(f"{path.name}: column {column!r} is missing (found {sorted(types)})")
        base = found.removesuffix("[]") if is_list else found
        if found.endswith("[]") != is_list or base not in allowed:
            shape = f"a list of {'/'.join(allowed)}" if is_list else "/".join(allowed)
            raise SchemaError(f"{path.name}: column {column!r} is {found}, expected {shape}")


def explode_select(paths: Sequence[Path]) -> str:
    """One row per (query, list position); lists of unequal length leave nulls, which the
    `lists_aligned` rule reports."""
    files = "[" + ", ".join(quote_literal(str(p)) for p in paths) + "]"
    exploded = (
        "SELECT CAST(query_id AS VARCHAR) AS query_id, "
        "CAST(unnest(document_ids) AS VARCHAR) AS doc_id, "
        "CAST(unnest(range(1, greatest(len(document_ids), len(scores), len(labels)) + 1)) "
        "AS INTEGER) AS rank, "
        "CAST(unnest(scores) AS DOUBLE) AS score, unnest(labels) AS label "
        f"FROM read_parquet({files}, union_by_name = true)"
    )
    return (
        "SELECT query_id, doc_id, rank, score, label = 'positive' AS is_positive, label "
        f"FROM ({exploded})"
    )


def _labels() -> str:
    return ", ".join(f"'{label}'" for label in FIQA_LABELS)


# The listwise rules (a positive per query) plus the label rules.
MINED_RULES: list[Rule[ReadFacts]] = [
    *listwise_rules(canonical.LABELLED_LISTWISE),
    Rule(
        "lists_aligned",
        "document_ids, scores and labels have the same length in every upstream row.",
        static(
            rows_where(
                "doc_id IS NULL OR score IS NULL OR label IS NULL",
                "query_id || ' position ' || rank",
                "the lists differ in length (or hold nulls)",
            )
        ),
    ),
    Rule(
        "known_labels",
        f"Every label is one of {', '.join(FIQA_LABELS)}.",
        static(
            rows_where(f"label NOT IN ({_labels()})", "query_id || ' ' || label", "unknown label")
        ),
    ),
]

MINED = LakeAsset(
    key=MINED_KEY,
    group="fiqa",
    description="Reranker-scored documents per FiQA-2018 train query (1 positive, 15 mined "
    "negatives), exploded to one ranked row each. Licence: non-commercial.",
    rules=MINED_RULES,
    deps=[FIQA_CORPUS_KEY, FIQA_QUERIES_KEY],
    metadata={
        "dagster/column_schema": canonical.table_schema(canonical.LABELLED_LISTWISE),
        "upstream": FIQA_MINED_REPO_ID,
        "licence": FIQA_MINED_LICENCE,
    },
    kinds=frozenset({"huggingface", "duckdb", "parquet"}),
    reads_upstream=True,
    reported={UNRESOLVED_RULE: "unresolved_ids"},
)


def write_mined(step: Step) -> Built[ReadFacts]:
    """The mined lists of the train split's files, exploded to ranked rows."""
    texts = [FIQA_QUERIES_KEY, FIQA_CORPUS_KEY]
    queries_glob, documents_glob = (published_glob(step.lake, k) for k in texts)
    snapshot = step.fetcher.dataset_snapshot(FIQA_MINED_REPO_ID)
    card = step.fetcher.read_dataset_text(snapshot, "README.md")
    files = resolve_mined_files(card, snapshot.files)
    local = [step.fetcher.dataset_file(snapshot, f) for f in files]
    step.log(f"{len(files)} file(s) at {snapshot.revision} from {snapshot.source}")
    for path in local:
        check_mined_columns(step.con, path)
    rows = copy_parquet(step.con, explode_select(local), step.staged.path)
    lineage = {
        **snapshot_metadata(snapshot, files, card),
        "licence": FIQA_MINED_LICENCE,
        "texts": published_versions(step.lake, texts),
    }
    return Built(
        rows,
        ReadFacts(
            references=[
                ("query_id", queries_glob, "query_id"),
                ("doc_id", documents_glob, "doc_id"),
            ]
        ),
        metadata={
            **lineage,
            "preview": preview(step.con, step.table, list(canonical.LABELLED_LISTWISE)),
        },
        manifest={"lineage": {k: v for k, v in lineage.items() if k != "files"}, "files": files},
    )


fiqa_mined_scores = lake_asset(MINED, write_mined)


fiqa_job = dg.define_asset_job(
    FIQA_JOB,
    selection=dg.AssetSelection.assets(
        *(t.key for t in TEXT_TABLES if t.key.path[1] == "fiqa"), MINED_KEY
    ),
    description="BEIR FiQA texts and the mined reranker scores (non-commercial licence).",
)
