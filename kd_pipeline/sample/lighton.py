"""The LightOn embeddings-pre-training stand-in: 73 configs as Parquet (sharded, with
varying Arrow widths, an optional `index` column, duplicate pointers equal to 0, tied
scores, non-Latin scripts), a dataset card and a .gitattributes, as in the Hub repo.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml

from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.sample.files import (
    atomic_write_bytes,
    atomic_write_parquet,
    stable_seed,
)
from kd_pipeline.sample.text import LANGS, config_langs, make_document, make_query

_SHARDED_CONFIGS: dict[str, int] = {"msmarco": 3}  # config -> number of parquet shards
# configs whose queries are questions (a question word and mark)
_QUESTION_CONFIG_MARKERS = (
    "qa", "eli5", "quora", "question", "yahoo", "webfaq", "wikianswers", "msmarco", "paq",
)  # fmt: skip


def lighton_sample_dir(mirror: Path) -> Path:
    """Where the LightOn dataset lives inside a mirror (the Hub's repo layout starts here)."""
    return Path(mirror) / "hf" / "datasets" / LIGHTON_REPO_ID


@dataclass(frozen=True)
class _ConfigShape:
    """Per-config knobs: shares, score distribution, Arrow widths, columns."""

    drop_share: float
    duplicate_share: float
    sim_mean: float
    sim_sd: float
    narrow: bool  # float32 similarity + int32 duplicate
    has_index: bool
    query_lang: str
    doc_lang: str
    question: bool


def _config_shape(config: str, position: int) -> _ConfigShape:
    """Knobs depend on the config name only, so a bigger sample keeps the same shares."""
    rng = random.Random(stable_seed("lighton-shape", config))
    query_lang, doc_lang = config_langs(config)
    return _ConfigShape(
        drop_share=0.5 if config == "fw-edu" else round(rng.uniform(0.1, 0.7), 3),
        duplicate_share=round(rng.uniform(0.02, 0.15), 3),
        # means and sds chosen so 3.0 (the union recipe's cut) lies inside nearly every range
        sim_mean=rng.uniform(2.0, 4.0),
        sim_sd=rng.uniform(0.4, 1.2),
        narrow=position % 4 == 3,
        # an 8-cycle that crosses the 4-cycle above, so every width/index combination occurs
        has_index=position % 8 in (0, 2, 5, 7),
        query_lang=query_lang,
        doc_lang=doc_lang,
        question=any(marker in config for marker in _QUESTION_CONFIG_MARKERS),
    )


def _lighton_schema(shape: _ConfigShape) -> pa.Schema:
    """Arrow schema with Hugging Face-style `huggingface` feature metadata."""
    float_type = pa.float32() if shape.narrow else pa.float64()
    int_type = pa.int32() if shape.narrow else pa.int64()
    fields = [
        pa.field("query", pa.string()),
        pa.field("document", pa.string()),
        pa.field("similarity", float_type),
        pa.field("drop", pa.bool_()),
        pa.field("duplicate", int_type),
    ]
    if shape.has_index:
        fields.insert(0, pa.field("index", pa.int64()))
    features = {f.name: {"dtype": _hf_dtype(f.type), "_type": "Value"} for f in fields}
    meta = json.dumps({"info": {"features": features}}, separators=(",", ":"))
    return pa.schema(fields, metadata={b"huggingface": meta.encode("utf-8")})


def _hf_dtype(arrow_type: pa.DataType) -> str:
    """The dtype string Hugging Face cards use for an Arrow type (float64, not double)."""
    names = {pa.float64(): "float64", pa.float32(): "float32", pa.bool_(): "bool"}
    return names.get(arrow_type, str(arrow_type))


def _lighton_table(config: str, position: int, rows: int) -> pa.Table:
    """One config's rows: texts, rounded scores, drop flags, duplicate pointers."""
    shape = _config_shape(config, position)
    rng = random.Random(stable_seed("lighton-rows", config, rows))
    queries: list[str] = []
    documents: list[str] = []
    sims: list[float] = []
    drops: list[bool] = []
    dups: list[int | None] = []
    seen: set[tuple[str, str]] = set()
    first_duplicate = True
    for i in range(rows):
        drops.append(rng.random() < shape.drop_share)
        if i > 0 and rng.random() < shape.duplicate_share:
            # point at the first occurrence; the first duplicate of each config points at
            # row 0 so the value 0 (not null!) always occurs
            j = 0 if first_duplicate else rng.randrange(i)
            first_duplicate = False
            target = dups[j] if dups[j] is not None else j
            queries.append(queries[target])
            documents.append(documents[target])
            sims.append(sims[target])  # same pair, same teacher score
            dups.append(target)
            continue
        while True:
            query = make_query(rng, shape.query_lang, shape.question)
            document = make_document(rng, shape.doc_lang)
            if (query, document) not in seen:  # originals are unique, so duplicates are exact
                seen.add((query, document))
                break
        score = min(5.0, max(0.0, rng.gauss(shape.sim_mean, shape.sim_sd)))
        queries.append(query)
        documents.append(document)
        sims.append(round(score, 2))
        dups.append(None)
    schema = _lighton_schema(shape)
    columns = {
        "index": list(range(rows)),
        "query": queries,
        "document": documents,
        "similarity": sims,
        "drop": drops,
        "duplicate": dups,
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Split rows into contiguous, nearly equal [start, stop) ranges."""
    cuts = [rows * k // shards for k in range(shards + 1)]
    return list(itertools.pairwise(cuts))


def _lighton_card(infos: list[dict]) -> str:
    """README.md with HF-style YAML front matter (configs block with train-* globs)."""
    languages = sorted({LANGS[lang].iso for c in LIGHTON_CONFIGS for lang in config_langs(c)})
    header = {
        "license": "apache-2.0",
        "task_categories": ["sentence-similarity", "feature-extraction"],
        "language": languages,
        "multilinguality": "multilingual",
        "size_categories": ["1B<n<10B"],
        "pretty_name": "Embeddings pre-training (sample)",
        "tags": ["embeddings", "knowledge-distillation", "synthetic-sample"],
        "dataset_info": infos,
        "configs": [
            {
                "config_name": config,
                "data_files": [{"split": "train", "path": f"{config}/train-*"}],
            }
            for config in LIGHTON_CONFIGS
        ],
    }
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000)
    body = (
        "# Embeddings pre-training (synthetic sample)\n\n"
        "Query/document pairs with a teacher `similarity` score, a `drop` flag (rows outside "
        "the recommended subset) and a `duplicate` pointer (null, or the row index of an "
        "earlier identical pair), in 73 configs.\n\n"
        "This copy is a small deterministic synthetic sample written by `kd_pipeline.sample` "
        "in the layout of the Hugging Face repository "
        f"`{LIGHTON_REPO_ID}`; its texts are generated, not real.\n\n"
        "Recommended subset: `drop = false AND duplicate IS NULL`.\n"
    )
    return f"---\n{front}---\n\n{body}"


def write_lighton(out: Path, rows_per_config: int) -> None:
    """All 73 configs as parquet, a dataset card and a .gitattributes, as in the Hub repo."""
    root = lighton_sample_dir(out)
    infos = []
    for position, config in enumerate(LIGHTON_CONFIGS):
        table = _lighton_table(config, position, rows_per_config)
        shards = _SHARDED_CONFIGS.get(config, 1)
        download_size = 0
        for k, (start, stop) in enumerate(_shard_bounds(rows_per_config, shards)):
            path = root / config / f"train-{k:05d}-of-{shards:05d}.parquet"
            atomic_write_parquet(path, table.slice(start, stop - start))
            download_size += path.stat().st_size
        infos.append(
            {
                "config_name": config,
                "features": [{"name": f.name, "dtype": _hf_dtype(f.type)} for f in table.schema],
                "splits": [
                    {"name": "train", "num_bytes": table.nbytes, "num_examples": table.num_rows}
                ],
                "download_size": download_size,
                "dataset_size": table.nbytes,
            }
        )
    atomic_write_bytes(root / "README.md", _lighton_card(infos).encode("utf-8"))
    atomic_write_bytes(root / ".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
