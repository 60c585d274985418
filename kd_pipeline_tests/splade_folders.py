"""SPLADE folders for the tests: a small valid one, ways to break it, and a reference check.

`SpladeData` holds the four files as Python rows; `write` lays them out (plain or gzip,
one file or a folder of parts, compact or spaced JSON) so every test states its data in
a few lines. `reference_violations` is the consumer's own logic (dicts and sets), used as
an independent oracle for the DuckDB rules.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

Row = dict[str, Any]


def light_splade_data() -> ModuleType:
    """light-splade's `light_splade.data`, the real consumer (installed with the other KD
    trainers by kd_pipeline_tests/setup-test-env.sh, at the version in
    consumers-constraints.txt); imported when a test asks, since it loads torch."""
    return importlib.import_module("light_splade.data")


@dataclass
class SpladeData:
    """Rows of each file; `raw` lines (already serialised) are appended as they are."""

    queries: list[Row] = field(default_factory=list)
    documents: list[Row] = field(default_factory=list)
    positives: list[Row] = field(default_factory=list)
    scores: list[Row] = field(default_factory=list)
    validation: SpladeData | None = None
    raw: dict[str, list[str]] = field(default_factory=dict)  # file stem -> extra lines

    def copy(self) -> SpladeData:
        return copy.deepcopy(self)


def valid_data(queries: int = 8) -> SpladeData:
    """Training queries 1..n: query q has positive doc 100 + q and negative doc 200 + q,
    both scored; doc 300 is scored as an extra negative of query 1."""
    qids = range(1, queries + 1)
    return SpladeData(
        queries=[{"qid": q, "text": f'query {q} \u00e9 "quoted"'} for q in qids],
        documents=[{"doc_id": d, "text": f"document {d}"} for q in qids for d in (100 + q, 200 + q)]
        + [{"doc_id": 300, "text": "shared"}],
        positives=[{"qid": q, "positive_doc_ids": [100 + q]} for q in qids],
        scores=[
            {
                "qid": q,
                "scores": {
                    str(100 + q): 9.5,
                    str(200 + q): -1.25e-3,
                    **({"300": 0.5} if q == 1 else {}),
                },
            }
            for q in qids
        ],
    )


def _lines(rows: list[Row], spaced: bool) -> list[str]:
    separators = (", ", ": ") if spaced else (",", ":")
    return [json.dumps(row, separators=separators, ensure_ascii=False) for row in rows]


def _write_entry(path: Path, lines: list[str], gz: bool, parts: int) -> None:
    """path.ndjson[.gz], or a folder `path` of `parts` files when parts > 1."""
    suffix = ".ndjson.gz" if gz else ".ndjson"
    if parts > 1:
        path.mkdir(parents=True, exist_ok=True)
        chunks = [lines[i::parts] for i in range(parts)]
        targets = [(path / f"part-{i}{suffix}", chunk) for i, chunk in enumerate(chunks)]
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        targets = [(path.with_name(path.name + suffix), lines)]
    for target, chunk in targets:
        data = "".join(line + "\n" for line in chunk).encode("utf-8")
        target.write_bytes(gzip.compress(data, mtime=0) if gz else data)


def write(
    data: SpladeData,
    root: Path,
    *,
    gz_scores: bool = True,
    gz_masters: bool = False,
    parts: int = 1,
    spaced: bool = False,
) -> Path:
    """Lay data out as a SPLADE folder under root."""
    splits = {"train": data}
    if data.validation is not None:
        splits["validation"] = data.validation
    for split, part in splits.items():
        for stem, rows in (
            ("query_master", part.queries),
            ("doc_master", part.documents),
            ("positive_lists", part.positives),
        ):
            lines = _lines(rows, spaced) + part.raw.get(stem, [])
            _write_entry(root / split / stem, lines, gz_masters, parts)
    score_lines = _lines(data.scores, spaced) + data.raw.get("scores", [])
    _write_entry(root / "hard-negatives-cross-encoder-scores", score_lines, gz_scores, parts)
    return root


def reference_violations(data: SpladeData) -> dict[str, set[str]]:
    """The consumer's checks, done the consumer's way (dicts and sets), every offender
    collected instead of the first raised: rule -> ids in the validator's spelling."""
    found: dict[str, set[str]] = {}
    scores = {row["qid"]: {int(k) for k in row["scores"]} for row in data.scores}
    splits = {"train": data}
    if data.validation is not None:
        splits["validation"] = data.validation
    prefix = len(splits) > 1
    for split, part in splits.items():
        tag = f"{split} " if prefix else ""
        queries = {row["qid"] for row in part.queries}
        documents = {row["doc_id"] for row in part.documents}
        positives: dict[int, list[int]] = {}
        for row in part.positives:
            positives[row["qid"]] = row["positive_doc_ids"]

        def add(rule: str, ident: str, tag: str = tag) -> None:
            found.setdefault(rule, set()).add(tag + ident)

        for qid in positives:
            if qid not in queries:
                add("positive_qids_in_query_master", f"qid {qid}")
        for qid in queries:
            if qid not in positives:
                add("queries_have_positive_list", f"qid {qid}")
        for qid, docs in positives.items():
            for doc in docs:
                if doc not in documents:
                    add("positive_docs_in_doc_master", f"qid {qid} doc_id {doc}")
            if not docs:
                add("queries_have_positive", f"qid {qid}")
        for qid in queries | set(positives):
            if qid not in scores:
                add("queries_have_score_row", f"qid {qid}")
        for qid, docs in positives.items():
            if qid not in scores:
                continue
            if split == "train" and not (scores[qid] - set(docs)) & documents:
                add("queries_have_negative", f"qid {qid}")
            for doc in docs:
                if doc not in scores[qid]:
                    add("positive_pairs_scored", f"qid {qid} doc_id {doc}")
    return found
