"""Benchmark the filter recipes on a LightOn-shaped Parquet folder (not a pytest test).

    python bench/bench_filters.py [--rows 2000000] [--workdir DIR] [--keep]

Measures raw -> recommended and raw -> top_percentile=0.35 as kd_pipeline runs them
(`apply_filter` on a connection set up like `engine_connection`), against
(a) a per-row Python streaming filter with the same semantics (pyarrow batches ->
    `to_pylist()` -> one dict check per row -> `ParquetWriter`), the way a row-iterating
    peer tool filters; top_percentile is two passes there (exact threshold from a sorted list
    of the eligible similarities, then the filter);
(b) DuckDB's own `COPY (SELECT * ... WHERE ...) TO ... (FORMAT parquet, COMPRESSION zstd)`
    of the same files (for top_percentile: the same threshold query first, then the COPY).

Every variant runs in its own child process: its time is the wall clock of the work only
(imports and connection setup excluded), its memory the child's peak RSS (`ru_maxrss`).
ours/recommended and ours/top35 also run on a 2N-row folder to show memory stays flat as
the input doubles. Row counts (and thresholds) of all variants are checked against each
other. Results are printed and written to bench/results/filters-<date>.json.

The input is generated once and cached under --workdir: part files of ROWS_PER_PART rows
(zstd, row groups of 100k rows, like the lake's copies), shared between the N and 2N folders
through symlinks. Outputs are deleted after each run unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/kd-bench-filters")

GEN_VERSION = 1  # bump when the generator changes, so cached parts are rebuilt
ROWS_PER_PART = 250_000
GEN_BATCH = 50_000
DOCS_PER_QUERY = 8  # each query text appears with this many documents, as upstream
DROP_RATE = 0.40
DUPLICATE_RATE = 0.08
TOP_P = 0.35
# DuckDB's default zstd level, which copy_parquet and the COPY baseline use; pyarrow's own
# default is 1, so the Python baseline names it to write the same compression as ours.
ZSTD_LEVEL = 3

TARGET_PYTHON = 15.0
TARGET_COPY = 0.7
FLAT_LIMIT = 1.3


# ---- input generation --------------------------------------------------------------------
def _corpus(seed: int = 7, words: int = 4_000_000):
    """A long text of random words with Zipf-like frequencies (~27 MB), plus the offsets
    where words start; documents and queries are slices of it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab_size = 30_000
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    letter_p = 1.0 / np.arange(1, 27) ** 0.9
    letter_p /= letter_p.sum()
    lengths = np.clip(rng.poisson(5, vocab_size) + 2, 2, 14)
    vocab = [bytes(rng.choice(letters, size=n, p=letter_p)).decode() for n in lengths]
    word_p = 1.0 / (np.arange(vocab_size) + 10.0)
    word_p /= word_p.sum()
    text = " ".join(vocab[i] for i in rng.choice(vocab_size, size=words, p=word_p))
    buf = np.frombuffer(text.encode(), dtype=np.uint8)
    word_starts = np.flatnonzero(buf == 32) + 1
    return buf, word_starts


def _slices(rng, buf, word_starts, lo: int, hi: int, count: int):
    """`count` strings of lo..hi characters, each starting at a word of the corpus."""
    import numpy as np
    import pyarrow as pa

    usable = word_starts[word_starts < len(buf) - hi - 1]
    starts = usable[rng.integers(0, len(usable), count)]
    lengths = rng.integers(lo, hi + 1, count)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    data = buf[gather]
    return pa.StringArray.from_buffers(
        count, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
    )


def _write_part(path: Path, part: int, rows: int, corpus) -> None:
    """Part `part` of the raw table: rows part*ROWS_PER_PART ..., deterministic per part."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    buf, word_starts = corpus
    rng = np.random.default_rng(1000 + part)
    first = part * ROWS_PER_PART
    batches = []
    for start in range(0, rows, GEN_BATCH):
        n = min(GEN_BATCH, rows - start)
        index = np.arange(first + start, first + start + n, dtype=np.int64)
        groups = index // DOCS_PER_QUERY
        # one query text per group: slice it from a generator seeded by the group id
        unique_groups, where = np.unique(groups, return_inverse=True)
        qrng = np.random.default_rng([2000, int(unique_groups[0])])
        queries = _slices(qrng, buf, word_starts, 30, 80, len(unique_groups)).take(pa.array(where))
        documents = _slices(rng, buf, word_starts, 300, 1500, n)
        similarity = np.round(np.clip(rng.normal(0.62, 0.14, n), 0.0, 1.0), 2)
        drop = rng.random(n) < DROP_RATE
        is_dup = rng.random(n) < DUPLICATE_RATE
        duplicate = pa.array(
            np.floor(rng.random(n) * np.maximum(index, 1)).astype(np.int64), mask=~is_dup
        )
        batches.append(
            pa.table(
                {
                    "query": queries,
                    "document": documents,
                    "similarity": pa.array(similarity, pa.float64()),
                    "drop": pa.array(drop),
                    "duplicate": duplicate,
                    "index": pa.array(index),
                }
            )
        )
    table = pa.concat_tables(batches)
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


def dataset(workdir: Path, rows: int) -> Path:
    """A folder of part-NNNNN.parquet files with `rows` rows (generated parts are cached and
    shared between datasets through symlinks)."""
    pool = workdir / f"parts-v{GEN_VERSION}"
    folder = workdir / f"raw-{rows}"
    pool.mkdir(parents=True, exist_ok=True)
    sizes = [min(ROWS_PER_PART, rows - first) for first in range(0, rows, ROWS_PER_PART)]
    missing = [
        (k, n) for k, n in enumerate(sizes) if not (pool / f"part-{k:05d}-{n}.parquet").exists()
    ]
    if missing:
        began = time.perf_counter()
        print(f"generating {sum(n for _, n in missing):,} rows into {pool} ...", flush=True)
        corpus = _corpus()
        for k, n in missing:
            _write_part(pool / f"part-{k:05d}-{n}.parquet", k, n, corpus)
        print(f"  generated in {time.perf_counter() - began:.1f} s", flush=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for k, n in enumerate(sizes):
        (folder / f"part-{k:05d}.parquet").symlink_to(pool / f"part-{k:05d}-{n}.parquet")
    return folder


def warm_page_cache(folder: Path) -> int:
    """Read every input file once so each variant starts from the same (warm) cache."""
    total = 0
    for path in sorted(folder.glob("*.parquet")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


# ---- the variants (each runs in a child process) -----------------------------------------
def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from kd_pipeline.checks.rules import Table
    from kd_pipeline.recipes.filters import FilterKnobs, apply_filter

    con = harness.duckdb_connection(spec)
    knobs = FilterKnobs(top_percentile=spec["top"])
    source = Table("read_parquet($g)", {"g": spec["glob"]})
    began = harness.mark()
    result = apply_filter(con, source, knobs, Path(spec["out"]))
    return harness.done(began, rows_out=result.counts["rows_out"], threshold=result.threshold)


def run_duckdb_copy(spec: dict[str, Any]) -> dict[str, Any]:
    con = harness.duckdb_connection(spec)
    source = f"read_parquet({_sql_literal(spec['glob'])})"
    eligible = 'NOT "drop" AND duplicate IS NULL'
    began = harness.mark()
    where, threshold = eligible, None
    if spec["top"] is not None:
        (n,) = con.execute(f"SELECT count(*) FROM {source} WHERE {eligible}").fetchone()
        k = max(1, math.floor(Fraction(str(spec["top"])) * n))
        (threshold,) = con.execute(
            f"SELECT similarity FROM {source} WHERE {eligible} "
            f"ORDER BY similarity DESC LIMIT 1 OFFSET {k - 1}"
        ).fetchone()
        where = f"{eligible} AND similarity >= {float(threshold)!r}"
    (rows_out,) = con.execute(
        f"COPY (SELECT * FROM {source} WHERE {where}) TO {_sql_literal(spec['out'])} "
        "(FORMAT parquet, COMPRESSION zstd)"
    ).fetchone()
    return harness.done(began, rows_out=rows_out, threshold=threshold)


def run_python(spec: dict[str, Any]) -> dict[str, Any]:
    """The per-row streaming filter: every row becomes a dict and is checked in Python."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(spec["folder"]).glob("*.parquet"))
    limit = spec["limit"]
    schema = pq.read_schema(files[0])

    def rows(columns=None):
        seen = 0
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=columns):
                for row in batch.to_pylist():
                    if seen >= limit:
                        return
                    seen += 1
                    yield row

    def eligible(row) -> bool:
        return not row["drop"] and row["duplicate"] is None

    began = harness.mark()
    threshold = None
    if spec["top"] is not None:
        # pass 1 (reads only the three small columns, which favours this baseline)
        similarities = [
            row["similarity"] for row in rows(["similarity", "drop", "duplicate"]) if eligible(row)
        ]
        if similarities:
            similarities.sort(reverse=True)
            k = max(1, math.floor(Fraction(str(spec["top"])) * len(similarities)))
            threshold = similarities[k - 1]
        del similarities
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    kept, pending = 0, []
    with pq.ParquetWriter(
        out / "part-0.parquet", schema, compression="zstd", compression_level=ZSTD_LEVEL
    ) as writer:
        for row in rows():
            if eligible(row) and (
                spec["top"] is None or (threshold is not None and row["similarity"] >= threshold)
            ):
                pending.append(row)
                if len(pending) == 10_000:
                    writer.write_table(pa.Table.from_pylist(pending, schema))
                    kept += len(pending)
                    pending = []
        if pending:
            writer.write_table(pa.Table.from_pylist(pending, schema))
            kept += len(pending)
    return harness.done(began, rows_out=kept, threshold=threshold)


CHILD_RUNNERS = {"ours": run_ours, "duckdb-copy": run_duckdb_copy, "python": run_python}


# ---- the parent: run children, check, report ---------------------------------------------
def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    harness.remove(Path(spec["out"]))
    result = harness.run_child(__file__, spec, workdir)
    result["rows_written"] = harness.count_rows(Path(spec["out"]))
    return result


def expected_subset(folder: Path, limit: int, top: float | None) -> tuple[int, float | None]:
    """Rows out (and threshold) of the recipe on the first `limit` rows, computed in DuckDB,
    to check the Python baseline when it only reads a prefix of the input."""
    import duckdb

    con = duckdb.connect()
    src = f"(SELECT * FROM read_parquet({_sql_literal(str(folder / '*.parquet'))}) "
    src += f'WHERE "index" < {int(limit)})'
    eligible = 'NOT "drop" AND duplicate IS NULL'
    (n,) = con.execute(f"SELECT count(*) FROM {src} WHERE {eligible}").fetchone()
    if top is None:
        return n, None
    if n == 0:
        return 0, None
    k = max(1, math.floor(Fraction(str(top)) * n))
    (t,) = con.execute(
        f"SELECT similarity FROM {src} WHERE {eligible} ORDER BY similarity DESC "
        f"LIMIT 1 OFFSET {k - 1}"
    ).fetchone()
    (kept,) = con.execute(
        f"SELECT count(*) FROM {src} WHERE {eligible} AND similarity >= ?", [t]
    ).fetchone()
    return kept, t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the input (N)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="keep the filter outputs")
    parser.add_argument(
        "--python-rows",
        type=int,
        default=None,
        help="rows the Python baseline reads (a prefix of the input; default all N)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of R for DuckDB variants")
    parser.add_argument(
        "--python-repeat", type=int, default=1, help="best of R for the Python baseline"
    )
    parser.add_argument("--skip-2n", action="store_true", help="skip the 2N memory runs")
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
    n_rows = args.rows
    py_rows = min(args.python_rows or n_rows, n_rows)
    folder_n = dataset(workdir, n_rows)
    folder_2n = None if args.skip_2n else dataset(workdir, 2 * n_rows)
    input_bytes = {
        str(f): sum(p.resolve().stat().st_size for p in f.glob("*.parquet"))
        for f in filter(None, [folder_n, folder_2n])
    }
    common = {"memory_limit": args.memory_limit, "threads": args.threads, "temp_dir": str(scratch)}

    plan: list[tuple[str, dict[str, Any], int, int]] = []  # name, spec, rows, repeats
    for label, top in (("recommended", None), ("top35", TOP_P)):
        for folder, rows in filter(lambda x: x[0], ((folder_n, n_rows), (folder_2n, 2 * n_rows))):
            suffix = "" if rows == n_rows else " @2N"
            glob = str(folder / "*.parquet")
            plan.append(
                (
                    f"ours/{label}{suffix}",
                    {
                        "kind": "ours",
                        "glob": glob,
                        "top": top,
                        "out": str(workdir / "out" / slug(f"ours-{label}{suffix}")),
                    },
                    rows,
                    args.repeat,
                )
            )
        plan.append(
            (
                f"duckdb-copy/{label}",
                {
                    "kind": "duckdb-copy",
                    "glob": str(folder_n / "*.parquet"),
                    "top": top,
                    "out": str(workdir / "out" / f"duckdb-copy-{label}.parquet"),
                },
                n_rows,
                args.repeat,
            )
        )
        plan.append(
            (
                f"python/{label}",
                {
                    "kind": "python",
                    "folder": str(folder_n),
                    "limit": py_rows,
                    "top": top,
                    "out": str(workdir / "out" / f"python-{label}"),
                },
                py_rows,
                args.python_repeat,
            )
        )

    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for folder in filter(None, [folder_n, folder_2n]):
        warm_page_cache(folder)
    # rounds interleave the variants, so background load drifting hits them all alike
    for round_no in range(max(repeats for *_, repeats in plan)):
        for name, spec, rows, repeats in plan:
            if round_no >= repeats:
                continue
            print(f"round {round_no + 1}: {name} on {rows:,} rows ...", flush=True)
            load = os.getloadavg()[0]
            run = run_child({**common, **spec, "name": name}, workdir)
            run["load_before"] = load
            runs[name].append(run)
            if not args.keep:
                harness.remove(Path(spec["out"]))
    for name, _spec, rows, _repeats in plan:
        best = dict(min(runs[name], key=lambda r: r["seconds"]))
        best.update(
            rows=rows,
            rows_per_s=rows / best["seconds"],
            runs_seconds=[r["seconds"] for r in runs[name]],
            peak_mib=max(r["peak_mib"] for r in runs[name]),
            load_before=[r["load_before"] for r in runs[name]],
        )
        results[name] = best

    # ---- correctness: the same knobs give the same rows everywhere
    checks = []
    for label, top in (("recommended", None), ("top35", TOP_P)):
        ours, copy, py = (results[f"{v}/{label}"] for v in ("ours", "duckdb-copy", "python"))
        for name in (f"ours/{label}", f"duckdb-copy/{label}", f"python/{label}"):
            r = results[name]
            assert r["rows_out"] == r["rows_written"], (name, r["rows_out"], r["rows_written"])
        assert ours["rows_out"] == copy["rows_out"], (label, ours["rows_out"], copy["rows_out"])
        assert ours["threshold"] == copy["threshold"], (label, ours["threshold"], copy["threshold"])
        if py_rows == n_rows:
            want_py, want_t = ours["rows_out"], ours["threshold"]
        else:
            want_py, want_t = expected_subset(folder_n, py_rows, top)
        assert py["rows_out"] == want_py, (label, py["rows_out"], want_py)
        assert py["threshold"] == want_t, (label, py["threshold"], want_t)
        checks.append(
            f"{label}: ours {ours['rows_out']:,} = duckdb-copy {copy['rows_out']:,} rows"
            + (f", threshold {ours['threshold']}" if top is not None else "")
            + f"; python {py['rows_out']:,} rows"
            + ("" if py_rows == n_rows else f" = expected on the first {py_rows:,} rows")
        )

    # ---- report
    print()
    print(
        f"input: {n_rows:,} rows, {input_bytes[str(folder_n)] / 2**20:,.0f} MiB zstd Parquet "
        f"({len(list(folder_n.glob('*.parquet')))} files); DuckDB {_duckdb_version()}, "
        f"threads={args.threads}, memory_limit={args.memory_limit}, {os.cpu_count()} cpus"
    )
    header = (
        f"{'variant':<26}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak MiB':>10}{'base MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<26}{r['rows']:>12,}{r['seconds']:>10.2f}{r['rows_per_s']:>12,.0f}"
            f"{r['peak_mib']:>10,.0f}{r['base_mib']:>10,.0f}"
        )
    print("(seconds: the work only, best of the runs; base MiB: RSS before the work)")
    loads = [load for r in results.values() for load in r["load_before"]]
    print(
        f"(1-min load average before the runs: {min(loads):.1f} to {max(loads):.1f} on "
        f"{os.cpu_count()} cpus; other processes share the machine)"
    )
    if py_rows != n_rows:
        print(f"(python baseline measured on the first {py_rows:,} rows; ratios use rows/s)")
    print()
    for line in checks:
        print(f"check {line}")
    ratios: dict[str, float] = {}
    lines = []
    for label in ("recommended", "top35"):
        ours = results[f"ours/{label}"]["rows_per_s"]
        vs_py = ours / results[f"python/{label}"]["rows_per_s"]
        vs_copy = ours / results[f"duckdb-copy/{label}"]["rows_per_s"]
        ratios[f"{label}_vs_python"] = vs_py
        ratios[f"{label}_vs_duckdb_copy"] = vs_copy
        lines.append(
            f"{label}: ours/python = {vs_py:.1f}x (target >= {TARGET_PYTHON:g}x) "
            + ("ok" if vs_py >= TARGET_PYTHON else "MISSED")
        )
        lines.append(
            f"{label}: ours/duckdb-copy = {vs_copy:.2f}x (target >= {TARGET_COPY:g}x) "
            + ("ok" if vs_copy >= TARGET_COPY else "MISSED")
        )
    if folder_2n is not None:
        for label in ("recommended", "top35"):
            one, two = results[f"ours/{label}"], results[f"ours/{label} @2N"]
            mem = two["peak_mib"] / one["peak_mib"]
            ratios[f"{label}_memory_2n_over_n"] = mem
            lines.append(
                f"{label}: memory 2N/N = {mem:.2f}x "
                f"({one['peak_mib']:,.0f} -> {two['peak_mib']:,.0f} MiB peak; "
                f"flat if <= ~{FLAT_LIMIT:g}) " + ("ok" if mem <= FLAT_LIMIT else "NOT FLAT")
            )
    print()
    for line in lines:
        print(line)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "rows": n_rows,
        "python_rows": py_rows,
        "input_bytes": input_bytes,
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": _duckdb_version(),
        "results": results,
        "ratios": ratios,
        "checks": checks,
    }
    path = RESULTS_DIR / f"filters-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


def slug(name: str) -> str:
    return name.replace("/", "-").replace(" @", "-")


def _duckdb_version() -> str:
    import duckdb

    return duckdb.__version__


if __name__ == "__main__":
    sys.exit(main())
