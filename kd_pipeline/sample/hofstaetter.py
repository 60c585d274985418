"""The Hofstaetter teacher-score stand-ins (Zenodo record 4068216)."""

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


def write_hofstaetter(out: Path) -> None:
    """Both teacher files: `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`, 300 rows,
    two of them with a negative passage that is not in the collection."""
    data = msmarco_texts()
    pids = sorted(data.passages, key=int)
    train = sorted(data.positives)
    for variant, teacher in upstream.HOFSTAETTER_FILES.items():
        rng = random.Random(stable_seed("hofstaetter", variant))
        rows = []
        for i in range(300):
            qid = train[i % len(train)]
            pos = rng.choice(data.positives[qid])
            neg = rng.choice([p for p in pids if p not in data.positives[qid]])
            if i in (17, 211):
                neg = MISSING_PID
            pos_score, neg_score = rng.gauss(7.0, 2.0), rng.gauss(-1.0, 3.0)
            rows.append((f"{pos_score:.7g}", f"{neg_score:.7g}", qid, pos, neg))
        atomic_write_bytes(url_path(out, teacher.url), tsv_lines(rows))
