"""The MS MARCO passage stand-in (collection.tar.gz, queries.tar.gz, qrels.train.tsv):
240 passages, some carrying the mojibake MS MARCO is known for, 100 queries. Its ids are
the ones the Hofstaetter and Rank-DistiLLM stand-ins score.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

from kd_pipeline.families import upstream
from kd_pipeline.sample.files import (
    atomic_write_bytes,
    distinct_ids,
    stable_seed,
    tar_gz,
    tsv_lines,
    url_path,
)
from kd_pipeline.sample.text import make_document, make_query

MISSING_PID = "8841823"  # one past the last real MS MARCO pid: never in the sample either


def _mojibake(text: str, codec: str = "cp1252") -> str:
    """text as it looks after its UTF-8 bytes were decoded with codec (the MS MARCO damage);
    the five bytes cp1252 leaves undefined pass through as latin-1, as Windows tools do."""
    return "".join(
        bytes([b]).decode(codec, errors="ignore") or chr(b) for b in text.encode("utf-8")
    )


@dataclass(frozen=True)
class MsMarcoTexts:
    passages: dict[str, str]  # pid -> passage
    queries: dict[str, dict[str, str]]  # split -> qid -> query
    positives: dict[str, list[str]]  # train qid -> relevant pids


_MOJIBAKE_PHRASES = (
    _mojibake("The café’s crème brûlée costs €5 — “worth it”."),
    _mojibake("Ángel said: ¿qué pasa?", "latin-1"),  # latin-1 damage leaves C1 controls
    _mojibake(_mojibake("Double-damaged naïve résumé.")),
)
_GENUINE_PHRASES = ("A naïve café in Zürich.", "東京 is Tokyo.", 'He said "fine" \\ ok.')


@functools.cache
def msmarco_texts() -> MsMarcoTexts:
    rng = random.Random(stable_seed("msmarco-passage"))
    passages = {str(pid): make_document(rng, "eng") for pid in range(240)}
    for pid, phrase in zip(("7", "42", "150"), _MOJIBAKE_PHRASES, strict=True):
        passages[pid] = f"{passages[pid]} {phrase}"
    for pid, phrase in zip(("3", "77", "11"), _GENUINE_PHRASES, strict=True):
        passages[pid] = f"{passages[pid]} {phrase}"
    qids = distinct_ids(rng, 100, 1, 1_200_000)
    rng.shuffle(qids)
    splits = {"train": qids[:60], "dev": qids[60:80], "eval": qids[80:]}
    queries = {
        split: {qid: make_query(rng, "eng", True) for qid in sorted(ids)}
        for split, ids in splits.items()
    }
    pids = sorted(passages, key=int)
    positives = {qid: rng.sample(pids, 2 if rng.random() < 0.1 else 1) for qid in queries["train"]}
    return MsMarcoTexts(passages, queries, positives)


def write_msmarco(out: Path) -> None:
    """collection.tar.gz, queries.tar.gz (train, dev, eval) and qrels.train.tsv."""
    data = msmarco_texts()
    collection = tsv_lines(sorted(data.passages.items(), key=lambda kv: int(kv[0])))
    atomic_write_bytes(
        url_path(out, upstream.MSMARCO_COLLECTION_URL), tar_gz([("collection.tsv", collection)])
    )
    members = [
        (f"queries.{split}.tsv", tsv_lines(list(data.queries[split].items())))
        for split in ("train", "dev", "eval")
    ]
    atomic_write_bytes(url_path(out, upstream.MSMARCO_QUERIES_URL), tar_gz(members))
    qrels = [(qid, 0, pid, 1) for qid, pids in data.positives.items() for pid in pids]
    atomic_write_bytes(url_path(out, upstream.MSMARCO_QRELS_TRAIN_URL), tsv_lines(qrels))
