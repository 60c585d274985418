"""The assets an export can read, and how each maps onto scored (query, document) pairs.

Three shapes cover every family and recipe: *pairwise* (teacher triples: Hofstaetter),
*listwise* (ranked, scored candidates: Rank-DistiLLM, FiQA), *pointwise* (scored pairs with
inline texts: LightOn raw, its filter recipes and unions). A new family or recipe of one of
these canonical tables becomes exportable by one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from kd_pipeline import canonical
from kd_pipeline.families.fiqa import MINED_KEY
from kd_pipeline.families.hofstaetter import TEACHER_SCORES_KEY, hofstaetter_partitions
from kd_pipeline.families.lighton import RAW_KEY, lighton_partitions
from kd_pipeline.families.rank_distillm import RUNS_KEY, rank_distillm_partitions
from kd_pipeline.families.text import TEXT_TABLES
from kd_pipeline.families.upstream import FIQA_MINED_LICENCE
from kd_pipeline.recipes.specs import load_filter_specs, load_union_specs

Shape = Literal["pairwise", "listwise", "pointwise"]
MSMARCO_PASSAGE_TRAIN = "msmarco-passage/train"
BEIR_FIQA_TRAIN = "beir/fiqa/train"


@dataclass(frozen=True)
class ExportSource:
    """A source asset: its shape, partitions, and lineage facts an export carries on."""

    key: dg.AssetKey
    shape: Shape
    partitions_def: dg.PartitionsDefinition | None
    ir_datasets_id: str | None = None  # the ir_datasets collection its ids belong to
    licence: str | None = None
    ordered: bool = False  # rows carry `position`: their order is the training order
    # the asset whose manifests record this one's upstream lineage (revision, card licence)
    # when it is built from another asset of the lake (LightOn recipes: lighton/raw)
    lineage_from: dg.AssetKey | None = None

    @property
    def name(self) -> str:
        return self.key.to_user_string()

    def candidates_select(self) -> str:
        """SQL over `read_parquet($source)`: one row per scored (query, document) pair with
        `labelled` = the source's own relevance label (never null) and `occurrences` = how
        many source rows name the pair."""
        if self.shape == "pairwise":
            # a pair may occur in several triples; its teacher score is the same in each
            return (
                "SELECT query_id, doc_id, avg(score) AS score, bool_or(labelled) AS labelled, "
                "max(score) - min(score) AS spread, count(*) AS occurrences FROM ("
                "SELECT query_id, pos_id AS doc_id, pos_score AS score, true AS labelled "
                "FROM read_parquet($source) UNION ALL "
                "SELECT query_id, neg_id, neg_score, false FROM read_parquet($source)) "
                "GROUP BY query_id, doc_id"
            )
        if self.shape == "listwise":
            # unretrieved positives (annotated runs) have no teacher score: not candidates
            return (
                "SELECT query_id, doc_id, score, coalesce(is_positive, false) AS labelled, "
                "0.0 AS spread, 1 AS occurrences FROM read_parquet($source) WHERE score IS NOT NULL"
            )
        return (
            "SELECT query_id, doc_id, avg(similarity) AS score, true AS labelled, "
            "max(similarity) - min(similarity) AS spread, count(*) AS occurrences "
            "FROM read_parquet($source) "
            "GROUP BY query_id, doc_id"
        )

    def unscored_positives_select(self) -> str | None:
        """SQL counting labelled positives without a teacher score (lost to every export
        that needs scores), or None when the shape cannot have them."""
        if self.shape != "listwise":
            return None
        return "SELECT count(*) FROM read_parquet($source) WHERE score IS NULL AND is_positive"


def _lighton_sources() -> dict[str, ExportSource]:
    """lighton/raw, every filter recipe (per config) and every union (one table)."""
    sources = {RAW_KEY.to_user_string(): ExportSource(RAW_KEY, "pointwise", lighton_partitions)}
    filters = load_filter_specs()
    for spec in filters:
        key = dg.AssetKey(["lighton", spec.name])
        sources[key.to_user_string()] = ExportSource(
            key, "pointwise", lighton_partitions, lineage_from=RAW_KEY
        )
    for union in load_union_specs(taken={s.name for s in filters}):
        key = dg.AssetKey(["lighton", union.name])
        sources[key.to_user_string()] = ExportSource(
            key, "pointwise", None, ordered=True, lineage_from=RAW_KEY
        )
    return sources


def known_sources() -> dict[str, ExportSource]:
    """Every exportable asset, by key string."""
    family = [
        ExportSource(TEACHER_SCORES_KEY, "pairwise", hofstaetter_partitions, MSMARCO_PASSAGE_TRAIN),
        ExportSource(RUNS_KEY, "listwise", rank_distillm_partitions, MSMARCO_PASSAGE_TRAIN),
        ExportSource(MINED_KEY, "listwise", None, BEIR_FIQA_TRAIN, FIQA_MINED_LICENCE),
    ]
    return {s.key.to_user_string(): s for s in family} | _lighton_sources()


# ---- text tables ---------------------------------------------------------------------------
QUERY_TEXT_TABLES = {
    t.key.to_user_string(): t for t in TEXT_TABLES if t.columns == canonical.QUERIES
}
DOCUMENT_TEXT_TABLES = {
    t.key.to_user_string(): t
    for t in TEXT_TABLES
    if t.columns in (canonical.DOCUMENTS, canonical.TITLED_DOCUMENTS)
}


@dataclass(frozen=True)
class TextSources:
    """The text collections an export joins its ids to (not needed for pointwise sources,
    whose texts are inline)."""

    queries: dg.AssetKey
    documents: dg.AssetKey

    @property
    def keys(self) -> list[dg.AssetKey]:
        return [self.queries, self.documents]

    @property
    def documents_have_titles(self) -> bool:
        return "title" in DOCUMENT_TEXT_TABLES[self.documents.to_user_string()].columns
