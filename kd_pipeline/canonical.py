"""The canonical tables the text, pairwise and listwise families map into.

Every family writes one of these shapes, so checks, recipes and exports are written once
per shape, not once per upstream. Ids are always strings (MS MARCO's are digits, FiQA's
too, other collections' are not); scores are DOUBLE whatever width upstream used.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

QUERIES: dict[str, str] = {"query_id": "VARCHAR", "text": "VARCHAR"}
DOCUMENTS: dict[str, str] = {"doc_id": "VARCHAR", "text": "VARCHAR"}
TITLED_DOCUMENTS: dict[str, str] = {**DOCUMENTS, "title": "VARCHAR"}
QRELS: dict[str, str] = {"query_id": "VARCHAR", "doc_id": "VARCHAR", "relevance": "INTEGER"}
PAIRWISE: dict[str, str] = {
    "query_id": "VARCHAR",
    "pos_id": "VARCHAR",
    "neg_id": "VARCHAR",
    "pos_score": "DOUBLE",
    "neg_score": "DOUBLE",
    "margin": "DOUBLE",
}
LISTWISE: dict[str, str] = {
    "query_id": "VARCHAR",
    "doc_id": "VARCHAR",
    "rank": "INTEGER",
    "score": "DOUBLE",
    "is_positive": "BOOLEAN",
}
LABELLED_LISTWISE: dict[str, str] = {**LISTWISE, "label": "VARCHAR"}

DESCRIPTIONS: dict[str, str] = {
    "query_id": "query id, as upstream (a string)",
    "doc_id": "document (passage) id, as upstream (a string)",
    "text": "the text, UTF-8",
    "title": "document title ('' when upstream has none)",
    "relevance": "graded relevance label; > 0 means relevant",
    "pos_id": "id of the relevant passage of the pair",
    "neg_id": "id of the non-relevant passage of the pair",
    "pos_score": "teacher score of (query, pos_id)",
    "neg_score": "teacher score of (query, neg_id)",
    "margin": "pos_score - neg_score: the MarginMSE target",
    "rank": "1-based position in the query's ranked list; null for a relevant document "
    "the list does not contain (annotated runs only)",
    "score": "the ranker's score at that position; null where rank is null",
    "is_positive": "true when qrels mark the document relevant to the query; "
    "null when the variant is not annotated with qrels",
    "label": "upstream label: positive | hard_negative | medium_negative | random_negative",
}


def table_schema(columns: Mapping[str, str]) -> dg.TableSchema:
    """The Dagster column schema of a canonical table (shown on the asset in the UI)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, dtype, description=DESCRIPTIONS[name])
            for name, dtype in columns.items()
        ]
    )
