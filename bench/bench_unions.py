"""Benchmark union recipes and cross-source dedup over 73 partitions (not a pytest test).

    python bench/bench_unions.py [--rows-per-config 28000] [--workdir DIR] [--keep]

Measures, on a lake-shaped folder of 73 LightOn configs (one folder per config, >= 2M rows):
- ours/union-concat: `plan_sources` + `build_union` with the shipped DenseON-LateON spec
  (`load_union_specs()[0]`, seed null: the groups concatenated);
- ours/union-seeded: the same groups with seed=42, mixing uniform;
- ours/dedup: one group of all 73 configs, no filters, dedup=True: exact cross-source
  dedup of every row;
against the per-row Python way a row-iterating peer does the same (pyarrow `iter_batches` ->
`to_pylist()` -> one dict per row -> `ParquetWriter` in batches of 10k rows, zstd level 3 as
DuckDB writes), with the same output columns (canonical + source_config, source_group,
position):
- python/union-concat: each config in spec order, its group's filter per row (fw-edu's top
  35% threshold exactly, from a first pass over the small columns);
- python/union-seeded: all sources open at once; each step picks a non-exhausted source
  uniformly with `random.Random(42)` and writes its next kept row; each source is shuffled
  through a shuffle buffer of --shuffle-buffer rows (1,000 by default, as a streaming
  `IterableDataset.shuffle`; 0 = a full in-memory shuffle per source);
- python/dedup: pass 1 keeps a dict md5(normalised query + \\x1f + normalised document) ->
  best (similarity, source, row), the best being the highest similarity, then the first
  source, then the first row (as ours); pass 2 re-reads everything and writes the winners.
  Normalised = unicodedata NFC, runs of [\\t\\n\\f\\r ] (RE2's \\s, which DuckDB's
  regexp_replace uses) collapsed to one space, trimmed.

Every variant runs in its own child process: its time is the wall clock of the work only
(imports and connection setup excluded), its memory the child's peak RSS (`VmHWM`). Variants
run in interleaved rounds. ours/dedup also runs on 2N rows (each config twice as long) to
show memory stays flat. Outputs are compared in the parent with DuckDB: per source, the
count and an xor of hash(source_config, index) of the rows kept must be equal between ours
and the baseline (and between the concatenated and seeded unions), and `position` must be a
permutation of 0..n-1. Results are printed and written to bench/results/unions-<date>.json.

The input is generated once and cached under --workdir: per config a part file of
--rows-per-config rows (2N: a second part), zstd, as the lake's raw partitions. Texts are
random-word slices (queries 30-80, documents 300-1500 characters, 8 documents per query),
~40% `drop`, ~8% `duplicate` rows that are exact copies of an earlier row of the config,
similarity on 0..5 rounded to 2 decimals with a per-config mean (so `>= 3.0` keeps a varying
share), and ~5% rows copying a (query, document) from a pool shared by all configs: as is,
with extra whitespace, with a decomposed accent (NFC), or capitalised (a distinct pair when
case is kept), so dedup has cross-source work to do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import harness
from bench_filters import ZSTD_LEVEL, _corpus, _slices, warm_page_cache

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/kd-bench-unions")

GEN_VERSION = 1  # bump when the generator changes, so cached parts are rebuilt
DOCS_PER_QUERY = 8
DROP_RATE = 0.40
DUPLICATE_RATE = 0.08
POOL_COPY_RATE = 0.05  # rows that copy a (query, document) of the pool shared by all configs
POOL_SIZE = 20_000
SIM_SD = 0.9
SIM_MEANS = (2.0, 3.8)  # each config's mean similarity is drawn in this range
SEED = 42
WRITE_BATCH = 10_000
FLAT_LIMIT = 1.3
HIGH_LOAD = 1.0  # a 1-min load average above this (per cpu) makes timings noisy


# ---- input generation --------------------------------------------------------------------
def _pool(corpus) -> tuple[list[str], list[str], list[float]]:
    """Pairs that several configs copy. Each document starts with a precomposed accent, so
    a copy can carry it decomposed (equal after NFC)."""
    import numpy as np

    buf, word_starts = corpus
    rng = np.random.default_rng(4242)
    queries = _slices(rng, buf, word_starts, 30, 80, POOL_SIZE).to_pylist()
    slices = _slices(rng, buf, word_starts, 300, 1500, POOL_SIZE).to_pylist()
    documents = ["caf\u00e9 " + d for d in slices]
    sims = np.round(np.clip(rng.normal(3.3, 0.8, POOL_SIZE), 0.0, 5.0), 2).tolist()
    return queries, documents, sims


def _vary(query: str, document: str, kind: int) -> tuple[str, str]:
    if kind == 1:  # whitespace: the same pair once collapsed and trimmed
        query = " " + query.replace(" ", "  ", 2) + "\n"
        document = document.replace(" ", "\n", 1).replace(" ", " \t ", 1) + " "
    elif kind == 2:  # decomposed accent: the same pair after NFC
        document = document.replace("caf\u00e9", "cafe\u0301", 1)
    elif kind == 3:  # capitalised: a different pair unless dedup_casefold
        query = query[:1].upper() + query[1:]
    return query, document


def _write_part(path: Path, config_index: int, part: int, rows: int, corpus, pool) -> None:
    """Part `part` of config `config_index`: upstream rows part*rows ..., deterministic."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    buf, word_starts = corpus
    pool_q, pool_d, pool_s = pool
    rng = np.random.default_rng([3000, config_index, part])
    lo, hi = SIM_MEANS
    mean = lo + (hi - lo) * np.random.default_rng([3100, config_index]).random()
    first = part * rows
    local = np.arange(rows)
    n_queries = -(-rows // DOCS_PER_QUERY)
    queries = (
        _slices(rng, buf, word_starts, 30, 80, n_queries)
        .take(pa.array(local // DOCS_PER_QUERY))
        .to_pylist()
    )
    documents = _slices(rng, buf, word_starts, 300, 1500, rows).to_pylist()
    similarity = np.round(np.clip(rng.normal(mean, SIM_SD, rows), 0.0, 5.0), 2)
    drop = rng.random(rows) < DROP_RATE
    is_dup = rng.random(rows) < DUPLICATE_RATE
    is_dup[0] = False
    from_pool = (rng.random(rows) < POOL_COPY_RATE) & ~is_dup
    pick = rng.integers(0, POOL_SIZE, rows)
    kind = rng.choice(4, size=rows, p=[0.4, 0.3, 0.15, 0.15])
    pool_score = rng.random(rows) < 0.5  # half the copies carry the pool's score (ties)
    for i in np.flatnonzero(from_pool):
        j = int(pick[i])
        queries[i], documents[i] = _vary(pool_q[j], pool_d[j], int(kind[i]))
        if pool_score[i]:
            similarity[i] = pool_s[j]
    # flagged duplicates: exact copies of an earlier non-duplicate row of this part
    originals = np.flatnonzero(~is_dup)
    before = np.searchsorted(originals, local)  # originals strictly before each row
    target = originals[np.floor(rng.random(rows) * before).astype(np.int64)]
    for i in np.flatnonzero(is_dup):
        t = int(target[i])
        queries[i], documents[i], similarity[i] = queries[t], documents[t], similarity[t]
    table = pa.table(
        {
            "query": pa.array(queries, pa.string()),
            "document": pa.array(documents, pa.string()),
            "similarity": pa.array(similarity, pa.float64()),
            "drop": pa.array(drop),
            "duplicate": pa.array(first + target, pa.int64(), mask=~is_dup),
            "index": pa.array(first + local, pa.int64()),
        }
    )
    tmp = path.with_suffix(".tmp")
    con = duckdb.connect()
    con.register("part_table", table)
    con.execute(
        "COPY (SELECT md5(query) AS query_id, md5(document) AS doc_id, query, document, "
        'similarity, "drop", duplicate, "index" FROM part_table) '
        f"TO '{tmp}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
    )
    con.close()
    tmp.rename(path)


def dataset(workdir: Path, rows_per_config: int, parts: int) -> Path:
    """raw-<rows>x<parts>/<config>/part-NNNNN.parquet for the 73 configs, as symlinks to
    cached part files (the 1-part and 2-part datasets share their first parts)."""
    from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS

    pool_dir = workdir / f"parts-v{GEN_VERSION}"
    folder = workdir / f"raw-{rows_per_config}x{parts}"
    pool_dir.mkdir(parents=True, exist_ok=True)

    def part_path(config: str, part: int) -> Path:
        return pool_dir / config / f"part-{part:05d}-{rows_per_config}.parquet"

    missing = [
        (c, config, part)
        for c, config in enumerate(LIGHTON_CONFIGS)
        for part in range(parts)
        if not part_path(config, part).exists()
    ]
    if missing:
        began = time.perf_counter()
        print(
            f"generating {len(missing) * rows_per_config:,} rows ({len(missing)} part files) "
            f"into {pool_dir} ...",
            flush=True,
        )
        corpus = _corpus()
        pool = _pool(corpus)
        for c, config, part in missing:
            part_path(config, part).parent.mkdir(exist_ok=True)
            _write_part(part_path(config, part), c, part, rows_per_config, corpus, pool)
        print(f"  generated in {time.perf_counter() - began:.1f} s", flush=True)
    if folder.exists():
        shutil.rmtree(folder)
    for config in LIGHTON_CONFIGS:
        (folder / config).mkdir(parents=True)
        for part in range(parts):
            (folder / config / f"part-{part:05d}.parquet").symlink_to(part_path(config, part))
    return folder


def config_globs(folder: Path) -> dict[str, str]:
    from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS

    return {config: str(folder / config / "*.parquet") for config in LIGHTON_CONFIGS}


# ---- the union specs -----------------------------------------------------------------------
def union_spec(variant: str):
    from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS
    from kd_pipeline.recipes.filters import FilterKnobs
    from kd_pipeline.recipes.specs import load_union_specs
    from kd_pipeline.recipes.unions import UnionGroup, UnionSpec

    base = load_union_specs()[0]
    assert base.name == "denseon_lateon" and base.seed is None and not base.dedup, base
    if variant == "union-concat":
        return base
    if variant == "union-seeded":
        return UnionSpec(base.name, base.description, base.groups, seed=SEED)
    if variant == "dedup":
        knobs = FilterKnobs(filter_drop=False, filter_duplicate=False)
        group = UnionGroup("all", tuple(LIGHTON_CONFIGS), knobs)
        return UnionSpec("dedup_all", "all 73 configs, no filters, dedup", (group,), dedup=True)
    raise ValueError(variant)


# ---- the variants (each runs in a child process) -----------------------------------------
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from kd_pipeline.recipes.unions import build_union, plan_sources

    con = harness.duckdb_connection(spec)
    union = union_spec(spec["variant"])
    out, scratch = Path(spec["out"]), Path(spec["scratch"])
    out.mkdir(parents=True)
    scratch.mkdir(parents=True)
    began = harness.mark()
    plans = plan_sources(con, union, spec["globs"])
    planned = time.perf_counter()
    built = build_union(con, union, plans, out, scratch)
    return harness.done(
        began,
        rows_in=sum(p.counts["rows_in"] for p in plans),
        rows_out=built["rows"],
        plan_seconds=planned - began[0],
        thresholds={p.config: p.threshold for p in plans if p.threshold is not None},
    )


def _files(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))


def _rows(files: list[str], columns=None, batch_size: int = 10_000) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()


def _keeps(knobs, threshold):
    """The group's filter as one Python check per row."""

    def keep(row: dict) -> bool:
        if knobs.filter_drop and row["drop"]:
            return False
        if knobs.filter_duplicate and row["duplicate"] is not None:
            return False
        if knobs.top_percentile is not None and (
            threshold is None or row["similarity"] < threshold
        ):
            return False
        return knobs.min_similarity is None or row["similarity"] >= knobs.min_similarity

    return keep


def _threshold(files: list[str], knobs) -> float | None:
    """Exact top-percentile threshold: a first pass over the small columns."""
    if knobs.top_percentile is None:
        return None
    eligible = _keeps(
        type(knobs)(filter_drop=knobs.filter_drop, filter_duplicate=knobs.filter_duplicate),
        None,
    )
    sims = [
        r["similarity"] for r in _rows(files, ["similarity", "drop", "duplicate"]) if eligible(r)
    ]
    if not sims:
        return None
    sims.sort(reverse=True)
    k = max(1, math.floor(Fraction(str(knobs.top_percentile)) * len(sims)))
    return sims[k - 1]


class _Writer:
    """Rows (dicts) to out/part-0.parquet in batches, zstd level 3 like DuckDB."""

    def __init__(self, out: Path, first_file: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(first_file)
        self.schema = (
            schema.append(pa.field("source_config", pa.string()))
            .append(pa.field("source_group", pa.string()))
            .append(pa.field("position", pa.int64()))
        )
        out.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(
            out / "part-0.parquet", self.schema, compression="zstd", compression_level=ZSTD_LEVEL
        )
        self.pending: list[dict] = []
        self.rows = 0

    def write(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) == WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, self.schema))
            self.rows += len(self.pending)
            self.pending = []

    def close(self) -> int:
        self.flush()
        self.writer.close()
        return self.rows


def run_python_concat(spec: dict[str, Any]) -> dict[str, Any]:
    union = union_spec(spec["variant"])
    sources = [(c, g, _files(spec["globs"][c])) for c, g in union.sources()]
    began = harness.mark()
    writer = _Writer(Path(spec["out"]), sources[0][2][0])
    rows_in = 0
    for config, group, files in sources:
        keep = _keeps(group.knobs, _threshold(files, group.knobs))
        for row in _rows(files):
            rows_in += 1
            if keep(row):
                row["source_config"], row["source_group"] = config, group.name
                row["position"] = writer.rows + len(writer.pending)
                writer.write(row)
    rows_out = writer.close()
    return harness.done(began, rows_in=rows_in, rows_out=rows_out)


def _shuffled(rows: Iterator[dict], rng: random.Random, buffer: int) -> Iterator[dict]:
    """A streaming shuffle buffer (buffer > 0) or a full in-memory shuffle (buffer = 0)."""
    if buffer <= 0:
        everything = list(rows)
        rng.shuffle(everything)
        yield from everything
        return
    pending: list[dict] = []
    for row in rows:
        if len(pending) < buffer:
            pending.append(row)
            continue
        i = rng.randrange(buffer)
        yield pending[i]
        pending[i] = row
    rng.shuffle(pending)
    yield from pending


def run_python_seeded(spec: dict[str, Any]) -> dict[str, Any]:
    union = union_spec(spec["variant"])
    sources = [(c, g, _files(spec["globs"][c])) for c, g in union.sources()]
    began = harness.mark()
    counted = {"rows_in": 0}

    def kept(config: str, group, files: list[str], threshold) -> Iterator[dict]:
        keep = _keeps(group.knobs, threshold)
        # small read batches: all 73 sources hold a decoded batch at once
        for row in _rows(files, batch_size=1_000):
            counted["rows_in"] += 1
            if keep(row):
                row["source_config"], row["source_group"] = config, group.name
                yield row

    streams = [
        _shuffled(
            kept(config, group, files, _threshold(files, group.knobs)),
            random.Random(f"{union.seed}:{config}"),
            spec["shuffle_buffer"],
        )
        for config, group, files in sources
    ]
    writer = _Writer(Path(spec["out"]), sources[0][2][0])
    rng = random.Random(union.seed)
    active = list(range(len(streams)))
    while active:
        pick = rng.randrange(len(active))
        row = next(streams[active[pick]], None)
        if row is None:  # exhausted: drop it, pick again among the others
            active.pop(pick)
            continue
        row["position"] = writer.rows + len(writer.pending)
        writer.write(row)
    rows_out = writer.close()
    return harness.done(began, rows_in=counted["rows_in"], rows_out=rows_out)


_WHITESPACE = re.compile(r"[\t\n\f\r ]+")


def _normalised(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip(" ")


def run_python_dedup(spec: dict[str, Any]) -> dict[str, Any]:
    union = union_spec(spec["variant"])
    sources = [(c, g, _files(spec["globs"][c])) for c, g in union.sources()]
    began = harness.mark()
    # pass 1: key -> (similarity, source, row) of the best copy so far; sources and rows come
    # in order, so only a strictly higher similarity replaces the kept copy
    best: dict[bytes, tuple[float, int, int]] = {}
    rows_in = 0
    for s, (_config, _group, files) in enumerate(sources):
        for r, row in enumerate(_rows(files, ["query", "document", "similarity"])):
            key = hashlib.md5(
                (_normalised(row["query"]) + "\x1f" + _normalised(row["document"])).encode()
            ).digest()
            sim = row["similarity"]
            held = best.get(key)
            if held is None or sim > held[0]:
                best[key] = (sim, s, r)
            rows_in += 1
    winners: list[set[int]] = [set() for _ in sources]
    for _sim, s, r in best.values():
        winners[s].add(r)
    del best
    pass1 = time.perf_counter() - began[0]
    # pass 2: re-read every row, write the winners
    writer = _Writer(Path(spec["out"]), sources[0][2][0])
    for s, (config, group, files) in enumerate(sources):
        keep = winners[s]
        for r, row in enumerate(_rows(files)):
            if r in keep:
                row["source_config"], row["source_group"] = config, group.name
                row["position"] = writer.rows + len(writer.pending)
                writer.write(row)
    rows_out = writer.close()
    return harness.done(began, rows_in=rows_in, rows_out=rows_out, pass1_seconds=pass1)


CHILD_RUNNERS = {
    "ours": run_ours,
    "python-concat": run_python_concat,
    "python-seeded": run_python_seeded,
    "python-dedup": run_python_dedup,
}


# ---- the parent: run children, check, report ---------------------------------------------
def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    for key in ("out", "scratch"):
        if key in spec:
            harness.remove(Path(spec[key]))
    result = harness.run_child(__file__, spec, workdir)
    result["output"] = summarise(Path(spec["out"]))
    return result


def summarise(out: Path) -> dict[str, Any]:
    """What the output holds, to compare variants: per source its rows and an xor of
    hash(source_config, index); whether position is a permutation of 0..n-1."""
    import duckdb

    con = duckdb.connect()
    src = f"read_parquet('{out}/*.parquet')"
    per_source = con.execute(
        f'SELECT source_config, count(*), bit_xor(hash(source_config, "index")) FROM {src} '
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    n, distinct, lo, hi = con.execute(
        f"SELECT count(*), count(DISTINCT position), min(position), max(position) FROM {src}"
    ).fetchone()
    con.close()
    return {
        "rows": n,
        "positions_ok": n == 0 or (distinct == n and lo == 0 and hi == n - 1),
        "per_source": {c: [k, str(x)] for c, k, x in per_source},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-config", type=int, default=28_000, help="N / 73")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--repeat", type=int, default=3, help="best of R for ours")
    parser.add_argument("--python-repeat", type=int, default=1, help="best of R for python")
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=1_000,
        help="python/union-seeded's per-source shuffle buffer (0 = full shuffle)",
    )
    parser.add_argument("--skip-2n", action="store_true", help="skip ours/dedup @2N")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument(
        "--memory-limit", default=os.environ.get("KD_PIPELINE_DUCKDB_MEMORY", "4GB")
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        harness.child_main(args.child, CHILD_RUNNERS)
        return 0

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    (workdir / "out").mkdir(exist_ok=True)
    per_config = args.rows_per_config
    folder_n = dataset(workdir, per_config, 1)
    folder_2n = None if args.skip_2n else dataset(workdir, per_config, 2)
    folders = [f for f in (folder_n, folder_2n) if f is not None]
    input_bytes = {
        str(f): sum(p.resolve().stat().st_size for p in f.glob("*/*.parquet")) for f in folders
    }
    common = {"memory_limit": args.memory_limit, "threads": args.threads, "temp_dir": str(scratch)}

    plan: list[tuple[str, dict[str, Any], int]] = []  # name, spec, repeats
    for variant in ("union-concat", "union-seeded", "dedup"):
        runs = [(folder_n, "")]
        if variant == "dedup" and folder_2n is not None:
            runs.append((folder_2n, " @2N"))
        for folder, suffix in runs:
            name = f"ours/{variant}{suffix}"
            slug = name.replace("/", "-").replace(" @", "-")
            spec = {
                "kind": "ours",
                "variant": variant,
                "globs": config_globs(folder),
                "out": str(workdir / "out" / slug),
                "scratch": str(workdir / "out" / f"{slug}-scratch"),
            }
            plan.append((name, spec, args.repeat))
        kind = {"union-concat": "python-concat", "union-seeded": "python-seeded"}
        plan.append(
            (
                f"python/{variant}",
                {
                    "kind": kind.get(variant, "python-dedup"),
                    "variant": variant,
                    "globs": config_globs(folder_n),
                    "out": str(workdir / "out" / f"python-{variant}"),
                    "shuffle_buffer": args.shuffle_buffer,
                },
                args.python_repeat,
            )
        )
    if args.only:
        wanted = set(args.only.split(","))
        plan = [p for p in plan if p[0] in wanted]

    runs_of: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for folder in folders:
        for config_dir in sorted(folder.iterdir()):
            warm_page_cache(config_dir)
    # rounds interleave the variants, so background load drifting hits them all alike
    for round_no in range(max((repeats for *_, repeats in plan), default=0)):
        for name, spec, repeats in plan:
            if round_no >= repeats:
                continue
            print(f"round {round_no + 1}: {name} ...", flush=True)
            load = os.getloadavg()[0]
            run = run_child({**common, **spec, "name": name}, workdir)
            run["load_before"] = load
            print(
                f"  {run['seconds']:.2f} s, {run['rows_out']:,} rows out, "
                f"{run['peak_mib']:,.0f} MiB peak (load {load:.1f})",
                flush=True,
            )
            runs_of[name].append(run)
            if not args.keep:
                harness.remove(Path(spec["out"]))
            if "scratch" in spec:
                harness.remove(Path(spec["scratch"]))
    results: dict[str, dict[str, Any]] = {}
    for name, *_ in plan:
        best = dict(min(runs_of[name], key=lambda r: r["seconds"]))
        best.update(
            rows_per_s=best["rows_in"] / best["seconds"],
            runs_seconds=[r["seconds"] for r in runs_of[name]],
            peak_mib=max(r["peak_mib"] for r in runs_of[name]),
            load_before=[r["load_before"] for r in runs_of[name]],
        )
        results[name] = best

    # ---- correctness: every run of a variant, and ours vs python, keep the same rows
    checks = []
    for name, runs in runs_of.items():
        for run in runs:
            assert run["rows_out"] == run["output"]["rows"], (name, run["rows_out"])
            assert run["output"]["positions_ok"], (name, "position is not 0..n-1")
            assert run["output"]["per_source"] == runs[0]["output"]["per_source"], name
    pairs = [
        ("ours/union-concat", "python/union-concat"),
        ("ours/union-seeded", "python/union-seeded"),
        ("ours/union-concat", "ours/union-seeded"),
        ("ours/dedup", "python/dedup"),
    ]
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        ra, rb = results[a], results[b]
        assert ra["rows_in"] == rb["rows_in"], (a, b, ra["rows_in"], rb["rows_in"])
        assert ra["rows_out"] == rb["rows_out"], (a, b, ra["rows_out"], rb["rows_out"])
        assert ra["output"]["per_source"] == rb["output"]["per_source"], (a, b, "rows differ")
        checks.append(
            f"{a} = {b}: {ra['rows_in']:,} rows in, {ra['rows_out']:,} rows out, the same "
            f"rows per source ({len(ra['output']['per_source'])} sources)"
        )

    # ---- report
    print()
    print(
        f"input: {len(config_globs(folder_n))} configs x {per_config:,} rows = "
        f"{len(config_globs(folder_n)) * per_config:,} rows, "
        f"{input_bytes[str(folder_n)] / 2**20:,.0f} MiB zstd Parquet; DuckDB {_duckdb_version()}, "
        f"threads={args.threads}, memory_limit={args.memory_limit}, {os.cpu_count()} cpus"
    )
    header = (
        f"{'variant':<24}{'rows in':>12}{'rows out':>12}{'seconds':>10}{'rows/s':>11}"
        f"{'peak MiB':>10}{'base MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<24}{r['rows_in']:>12,}{r['rows_out']:>12,}{r['seconds']:>10.2f}"
            f"{r['rows_per_s']:>11,.0f}{r['peak_mib']:>10,.0f}{r['base_mib']:>10,.0f}"
        )
    print(
        "(seconds: the work only, best of the runs; rows/s: rows in per second; "
        "base MiB: RSS before the work)"
    )
    for name, r in results.items():
        if "plan_seconds" in r:
            print(f"({name}: plan_sources {r['plan_seconds']:.2f} s of {r['seconds']:.2f} s)")
        if "pass1_seconds" in r:
            print(f"({name}: pass 1 {r['pass1_seconds']:.2f} s of {r['seconds']:.2f} s)")
    buffer = args.shuffle_buffer
    print(
        "(python/union-seeded shuffles each source "
        + (f"through a {buffer:,}-row shuffle buffer" if buffer > 0 else "fully in memory")
        + "; ours is an exact seeded permutation per source)"
    )
    loads = [load for r in results.values() for load in r["load_before"]]
    cpus = os.cpu_count() or 1
    print(
        f"(1-min load average before the runs: {min(loads):.1f} to {max(loads):.1f} on "
        f"{cpus} cpus; other processes share the machine)"
    )
    if max(loads) > HIGH_LOAD * cpus:
        print(
            f"WARNING: the load average reached {max(loads):.1f} on {cpus} cpus: other work "
            "competed with the runs, timings are noisy"
        )
    print()
    for line in checks:
        print(f"check {line}")
    ratios: dict[str, float] = {}
    lines = []
    for variant in ("union-concat", "union-seeded", "dedup"):
        ours, py = results.get(f"ours/{variant}"), results.get(f"python/{variant}")
        if ours and py:
            ratio = ours["rows_per_s"] / py["rows_per_s"]
            mem = ours["peak_mib"] / py["peak_mib"]
            ratios[f"{variant}_vs_python"] = ratio
            ratios[f"{variant}_peak_mib_vs_python"] = mem
            lines.append(
                f"{variant}: ours/python = {ratio:.1f}x throughput "
                f"({ours['seconds']:.1f} s vs {py['seconds']:.1f} s), "
                f"{mem:.2f}x peak memory ({ours['peak_mib']:,.0f} vs {py['peak_mib']:,.0f} MiB)"
            )
    one, two = results.get("ours/dedup"), results.get("ours/dedup @2N")
    if one and two:
        mem = two["peak_mib"] / one["peak_mib"]
        ratios["dedup_memory_2n_over_n"] = mem
        lines.append(
            f"dedup: memory 2N/N = {mem:.2f}x ({one['peak_mib']:,.0f} -> "
            f"{two['peak_mib']:,.0f} MiB peak on {one['rows_in']:,} -> {two['rows_in']:,} rows; "
            f"flat if <= ~{FLAT_LIMIT:g}) " + ("ok" if mem <= FLAT_LIMIT else "NOT FLAT")
        )
        lines.append(
            f"dedup: time 2N/N = {two['seconds'] / one['seconds']:.2f}x "
            f"({one['seconds']:.1f} -> {two['seconds']:.1f} s)"
        )
    print()
    for line in lines:
        print(line)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for r in results.values():
        r["output"] = {k: v for k, v in r["output"].items() if k != "per_source"}
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "configs": len(config_globs(folder_n)),
        "rows_per_config": per_config,
        "input_bytes": input_bytes,
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "shuffle_buffer": args.shuffle_buffer,
        "cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": _duckdb_version(),
        "results": results,
        "ratios": ratios,
        "checks": checks,
    }
    path = RESULTS_DIR / f"unions-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


def _duckdb_version() -> str:
    import duckdb

    return duckdb.__version__


if __name__ == "__main__":
    sys.exit(main())
