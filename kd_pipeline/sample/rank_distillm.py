"""The Rank-DistiLLM run stand-ins (Zenodo record 12528410)."""

from __future__ import annotations

import random
from pathlib import Path

from kd_pipeline.families import upstream
from kd_pipeline.sample.files import (
    atomic_write_bytes,
    stable_seed,
    tsv_lines,
    url_path,
)
from kd_pipeline.sample.msmarco import MISSING_PID, msmarco_texts


def write_rank_distillm(out: Path) -> None:
    """The six runs: BM25-based ones space-separated with `Q0`, ColBERT-based ones
    tab-separated with `0`. The annotated runs rank 30 passages for every train query and
    miss the relevant one for some; the RankZephyr ones re-rank sampled queries."""
    data = msmarco_texts()
    pids = sorted(data.passages, key=int)
    train = sorted(data.positives)
    for name, variant in upstream.RUN_VARIANTS.items():
        rng = random.Random(stable_seed("rank-distillm", name))
        bm25 = "bm25" in variant.stem
        sep, q0 = (" ", "Q0") if bm25 else ("\t", "0")
        if variant.annotated:
            queries, depth, system = train, 30, "bm25" if bm25 else "colbert"
        else:
            queries, depth, system = rng.sample(train, 20), min(variant.top_k, 25), "rankzephyr"
        rows = []
        for number, qid in enumerate(sorted(queries)):
            ranked = rng.sample([p for p in pids if p not in data.positives[qid]], depth)
            if rng.random() < 0.85:  # the first-stage ranker found a relevant passage
                ranked[rng.randrange(depth)] = data.positives[qid][0]
            if variant.annotated and number == 5:
                ranked[-1] = MISSING_PID
            score = rng.uniform(20.0, 40.0)
            for rank, pid in enumerate(ranked, 1):
                score = 1.0 / rank if system == "rankzephyr" else score - rng.uniform(0.1, 0.3)
                rows.append((qid, q0, pid, rank, f"{score:.5f}", system))
        atomic_write_bytes(url_path(out, variant.url), tsv_lines(rows, sep))
