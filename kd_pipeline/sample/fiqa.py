"""The BEIR FiQA stand-in (fiqa.zip) and the mined reranker scores over it (a Hub dataset)."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml

from kd_pipeline.families import upstream
from kd_pipeline.sample.files import (
    atomic_write_bytes,
    atomic_write_parquet,
    distinct_ids,
    stable_seed,
    tsv_lines,
    url_path,
    zip_archive,
)
from kd_pipeline.sample.text import make_document, make_query

_MISSING_FIQA_DOC = "999999"


@dataclass(frozen=True)
class _Fiqa:
    corpus: dict[str, str]  # doc id -> text
    queries: dict[str, dict[str, str]]  # split -> query id -> text
    qrels: dict[str, dict[str, list[str]]]  # split -> query id -> relevant doc ids


@functools.cache
def _fiqa() -> _Fiqa:
    rng = random.Random(stable_seed("beir-fiqa"))
    doc_ids = distinct_ids(rng, 150, 1, 600_000)
    corpus = {d: make_document(rng, "eng") for d in doc_ids}
    qids = distinct_ids(rng, 60, 1, 12_000)
    rng.shuffle(qids)
    splits = {"train": qids[:40], "dev": qids[40:50], "test": qids[50:]}
    queries = {
        split: {q: make_query(rng, "eng", True) for q in sorted(ids)}
        for split, ids in splits.items()
    }
    qrels = {
        split: {q: rng.sample(doc_ids, 2 if rng.random() < 0.3 else 1) for q in sorted(ids)}
        for split, ids in splits.items()
    }
    return _Fiqa(corpus, queries, qrels)


def write_beir_fiqa(out: Path) -> None:
    """fiqa.zip: `fiqa/corpus.jsonl`, `fiqa/queries.jsonl`, `fiqa/qrels/<split>.tsv` (with
    the BEIR header line), plus the folder entries a zip made by `zip -r` has."""
    data = _fiqa()
    corpus = "".join(
        json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in data.corpus.items()
    )
    queries = "".join(
        json.dumps({"_id": q, "text": t}) + "\n"
        for split in ("train", "dev", "test")
        for q, t in data.queries[split].items()
    )
    members: list[tuple[str, bytes | None]] = [
        ("fiqa/", None),
        ("fiqa/corpus.jsonl", corpus.encode("utf-8")),
        ("fiqa/queries.jsonl", queries.encode("utf-8")),
        ("fiqa/qrels/", None),
    ]
    for split in ("train", "dev", "test"):
        rows = [upstream.BEIR_QRELS_HEADER] + [
            (q, d, 1) for q, docs in data.qrels[split].items() for d in docs
        ]
        members.append((f"fiqa/qrels/{split}.tsv", tsv_lines(rows)))
    atomic_write_bytes(url_path(out, upstream.BEIR_FIQA_URL), zip_archive(members))


def write_fiqa(out: Path) -> None:
    """The mined reranker scores: one row per train query with 16 documents (1 positive,
    5 each of hard, medium and random negatives), sorted by score, and a card."""
    data = _fiqa()
    rng = random.Random(stable_seed("fiqa-mined"))
    doc_ids = sorted(data.corpus, key=int)
    means = {"positive": 6.0, "hard_negative": 3.0, "medium_negative": 0.0}
    rows: dict[str, list] = {"query_id": [], "document_ids": [], "scores": [], "labels": []}
    for number, (qid, relevant) in enumerate(data.qrels["train"].items()):
        negatives = rng.sample([d for d in doc_ids if d not in relevant], 15)
        if number == 3:
            negatives[-1] = _MISSING_FIQA_DOC
        labelled = [(relevant[0], "positive")] + [
            (d, upstream.FIQA_LABELS[1 + k // 5]) for k, d in enumerate(negatives)
        ]
        scored = sorted(
            ((round(rng.gauss(means.get(label, -5.0), 2.0), 4), d, label) for d, label in labelled),
            reverse=True,
        )
        rows["query_id"].append(qid)
        rows["scores"].append([s for s, _, _ in scored])
        rows["document_ids"].append([d for _, d, _ in scored])
        rows["labels"].append([label for _, _, label in scored])
    schema = pa.schema(
        [
            ("query_id", pa.string()),
            ("document_ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("labels", pa.list_(pa.string())),
        ]
    )
    root = out / "hf" / "datasets" / upstream.FIQA_MINED_REPO_ID
    table = pa.Table.from_pydict(rows, schema=schema)
    atomic_write_parquet(root / "data" / "train-00000-of-00001.parquet", table)
    header = {
        "license": "cc-by-nc-4.0",
        "pretty_name": "FiQA train mined reranker scores (sample)",
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
        ],
    }
    card = (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        "# FiQA train: mined reranker scores (synthetic sample)\n\n"
        "Per FiQA-2018 train query, 16 documents with raw reranker scores (sorted "
        "descending) and labels. Written by `kd_pipeline.sample` in the layout of "
        f"`{upstream.FIQA_MINED_REPO_ID}`; the texts and scores are generated, and the "
        "licence tag above stands in for the real card's non-commercial terms.\n"
    )
    atomic_write_bytes(root / "README.md", card.encode("utf-8"))
    atomic_write_bytes(root / ".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
