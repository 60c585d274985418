"""Benchmark the upstream text parsers: a TREC run and a teacher-score TSV into canonical
Parquet (not a pytest test).

    PYTHONPATH=. python bench/bench_parsers.py [--lines 5000000] [--workdir DIR] [--keep]

Measures kd_pipeline's own code path, `rank_distillm.write_run` (TREC run, top 500) and
`hofstaetter.write_pairwise` (5-column TSV -> pairwise table with the margin), each on a
connection from `engine_connection` (the pipeline's memory limit, threads, spill folder and
insertion order), against
(a) a per-row Python parser: `for line in file: line.split()`, casts, lists of rows, then
    `pyarrow` tables written with a `ParquetWriter` (zstd) every 100k rows;
(b) DuckDB's own `COPY (SELECT * FROM read_csv(file, delim=..., header=false)) TO x.parquet
    (FORMAT parquet, COMPRESSION zstd)`: the reader sniffs the types itself (ids become
    integers there, which are cheaper to write than our VARCHAR ids, and there is no margin
    column); and, for information, (b') the same COPY told our types, writing our columns.

Every variant runs in its own child process: time is the wall clock of the parse only
(imports excluded), memory the child's peak RSS as `ru_maxrss` (and `VmHWM`, the same
high-water mark without what Linux carries over from the parent through fork + exec; the
parent imports neither DuckDB nor pyarrow, so the two agree closely). `ours/*` also run
on a 2N-line file: the parse streams, so memory should not grow with the file. Row counts of
all variants are checked against each other. Results are printed and written to
bench/results/parsers-<date>.json.

Inputs are generated once (in a child, with DuckDB) and cached under --workdir: a BM25-style
run (`qid Q0 pid rank score bm25`, single spaces, 500 passages a query) and a teacher TSV
(`pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`), with MS MARCO-sized ids.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/kd-bench-parsers")
GEN_VERSION = 1
TOP_K = 500

TARGET_PYTHON = 4.0  # ours must be at least this many times faster than (a)
TARGET_DUCKDB = 0.8  # and at least this fraction of (b)'s speed
FLAT_LIMIT = 1.3  # peak memory at 2N over N


# ---- inputs (generated in a child) --------------------------------------------------------
def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the run and the TSV of `lines` lines with DuckDB (deterministic arithmetic)."""
    import duckdb

    con = duckdb.connect()
    n = spec["lines"]
    run, tsv = Path(spec["run"]), Path(spec["tsv"])
    # queries of 500 ranked passages; ids spread like MS MARCO's (qid < 1.2M, pid < 8.8M)
    con.execute(
        f"COPY (SELECT (i // {TOP_K}) * 7919 % 1185869 AS qid, 'Q0' AS q0, "
        "(i * 2654435761) % 8841823 AS pid, i % 500 + 1 AS rank, "
        "round(30.0 - (i % 500) * 0.031 - ((i * 40503) % 97) / 1000.0, 4) AS score, "
        f"'bm25' AS system FROM range({n}) t(i)) TO $p "
        "(FORMAT csv, DELIMITER ' ', HEADER false, QUOTE '')",
        {"p": str(run)},
    )
    con.execute(
        "COPY (SELECT round(8.0 + ((i * 69069) % 4001) / 1000.0, 6) AS pos_score, "
        "round(-2.0 + ((i * 1103515245) % 6007) / 1000.0, 6) AS neg_score, "
        "(i // 40) * 7919 % 1185869 AS qid, (i * 2654435761) % 8841823 AS pos_pid, "
        f"(i * 40503 + 17) % 8841823 AS neg_pid FROM range({n}) t(i)) TO $p "
        "(FORMAT csv, DELIMITER '\t', HEADER false, QUOTE '')",
        {"p": str(tsv)},
    )
    return {"run_bytes": run.stat().st_size, "tsv_bytes": tsv.stat().st_size}


def inputs(workdir: Path, lines: int) -> dict[str, Path]:
    """The cached input files for `lines` lines, generated on first use."""
    folder = workdir / f"v{GEN_VERSION}-{lines}"
    paths = {"run": folder / "bm25.run", "tsv": folder / "teacher.tsv"}
    if not all(p.exists() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        print(f"generating {lines:,}-line inputs in {folder} ...", flush=True)
        spec = {"kind": "generate", "lines": lines, **{k: str(v) for k, v in paths.items()}}
        run_child({**spec, "name": "generate", "out": str(folder / "none")}, workdir)
    return paths


# ---- the variants (each runs in a child process) -----------------------------------------
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from kd_pipeline.engine import default_duckdb_resource, engine_connection
    from kd_pipeline.families.hofstaetter import write_pairwise
    from kd_pipeline.families.rank_distillm import write_run
    from kd_pipeline.lake import Lake

    os.environ["KD_PIPELINE_DUCKDB_MEMORY"] = spec["memory_limit"]
    os.environ["KD_PIPELINE_DUCKDB_THREADS"] = str(spec["threads"])
    lake = Lake(Path(spec["workdir"]) / "lake")
    with engine_connection(default_duckdb_resource(), lake) as con:
        began = _mark()
        if spec["format"] == "run":
            report = write_run(con, Path(spec["input"]), Path(spec["out"]), TOP_K)
        else:
            report = write_pairwise(con, Path(spec["input"]), Path(spec["out"]))
        result = _done(began, rows_out=report.rows)
    assert report.malformed_lines == 0, report.examples
    return result


def run_duckdb(spec: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = ?", [spec["memory_limit"]])
    con.execute("SET threads = ?", [spec["threads"]])
    delimiter = " " if spec["format"] == "run" else "\t"
    began = _mark()
    (rows,) = con.execute(
        "COPY (SELECT * FROM read_csv($input, delim = $delim, header = false)) TO "
        f"'{spec['out']}' (FORMAT parquet, COMPRESSION zstd)",
        {"input": spec["input"], "delim": delimiter},
    ).fetchone()
    return _done(began, rows_out=rows)


def run_duckdb_typed(spec: dict[str, Any]) -> dict[str, Any]:
    """(b') DuckDB's read_csv told our column types, writing our output columns: the cost
    of the canonical table itself (string ids, the margin), without our checks and recovery."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = ?", [spec["memory_limit"]])
    con.execute("SET threads = ?", [spec["threads"]])
    if spec["format"] == "run":
        names = "'q': 'VARCHAR', 'q0': 'VARCHAR', 'd': 'VARCHAR', 'r': 'INTEGER', 's': 'DOUBLE'"
        columns = "{" + names + ", 'x': 'VARCHAR'}"
        select, delimiter = "q, d, r, s, CAST(NULL AS BOOLEAN)", " "
    else:
        names = "'p': 'DOUBLE', 'n': 'DOUBLE', 'q': 'VARCHAR', 'pi': 'VARCHAR'"
        columns = "{" + names + ", 'ni': 'VARCHAR'}"
        select, delimiter = "q, pi, ni, p, n, p - n", "\t"
    began = _mark()
    (rows,) = con.execute(
        f"COPY (SELECT {select} FROM read_csv($input, delim = $delim, header = false, "
        f"columns = {columns})) TO '{spec['out']}' (FORMAT parquet, COMPRESSION zstd)",
        {"input": spec["input"], "delim": delimiter},
    ).fetchone()
    return _done(began, rows_out=rows)


def run_python(spec: dict[str, Any]) -> dict[str, Any]:
    """The per-row parser: split, cast and keep each line in Python, write in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if spec["format"] == "run":
        schema = pa.schema(
            [
                ("query_id", pa.string()),
                ("doc_id", pa.string()),
                ("rank", pa.int32()),
                ("score", pa.float64()),
                ("is_positive", pa.bool_()),
            ]
        )

        def parse(fields: list[str]) -> tuple | None:
            rank = int(fields[3])
            return (fields[0], fields[2], rank, float(fields[4]), None) if rank <= TOP_K else None

        width = 6
    else:
        schema = pa.schema(
            [
                ("query_id", pa.string()),
                ("pos_id", pa.string()),
                ("neg_id", pa.string()),
                ("pos_score", pa.float64()),
                ("neg_score", pa.float64()),
                ("margin", pa.float64()),
            ]
        )

        def parse(fields: list[str]) -> tuple | None:
            pos, neg = float(fields[0]), float(fields[1])
            return (fields[2], fields[3], fields[4], pos, neg, pos - neg)

        width = 5
    names = schema.names
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    began = _mark()
    kept, pending = 0, []
    with (
        open(spec["input"], encoding="utf-8") as lines,
        pq.ParquetWriter(out / "part-0.parquet", schema, compression="zstd") as writer,
    ):
        for line in lines:
            fields = line.split()
            if len(fields) != width:
                continue
            row = parse(fields)
            if row is not None:
                pending.append(row)
            if len(pending) == 100_000:
                columns = list(zip(*pending, strict=True))
                writer.write_table(pa.table(dict(zip(names, columns, strict=True)), schema=schema))
                kept += len(pending)
                pending = []
        if pending:
            columns = list(zip(*pending, strict=True))
            writer.write_table(pa.table(dict(zip(names, columns, strict=True)), schema=schema))
            kept += len(pending)
    return _done(began, rows_out=kept)


def _vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _mark() -> tuple[float, float]:
    return time.perf_counter(), _maxrss_mib()


def _done(began: tuple[float, float], **fields: Any) -> dict[str, Any]:
    return {
        "seconds": time.perf_counter() - began[0],
        "base_mib": began[1],
        "peak_mib": _maxrss_mib(),
        "vmhwm_mib": _vmhwm_mib(),
        **fields,
    }


CHILD_RUNNERS = {
    "generate": generate,
    "ours": run_ours,
    "duckdb": run_duckdb,
    "duckdb-typed": run_duckdb_typed,
    "python": run_python,
}


# ---- the parent: run children, check, report ---------------------------------------------
def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = Path(spec["out"])
    harness.remove(out)
    result = harness.run_child(__file__, spec, workdir)
    if out.exists():  # counted by the parent: the check costs the child no memory
        result["rows_written"] = harness.count_rows(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5_000_000, help="lines of each input (N)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="keep the Parquet outputs")
    parser.add_argument("--repeat", type=int, default=2, help="best of R for DuckDB variants")
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
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    n = args.lines
    files = {n: inputs(workdir, n)}
    if not args.skip_2n:
        files[2 * n] = inputs(workdir, 2 * n)
    common = {"memory_limit": args.memory_limit, "threads": args.threads, "workdir": str(workdir)}

    plan: list[tuple[str, dict[str, Any], int, int]] = []  # name, spec, lines, repeats
    for fmt in ("run", "tsv"):
        for lines, paths in files.items():
            suffix = "" if lines == n else " @2N"
            name = f"ours/{fmt}{suffix}"
            spec = {"kind": "ours", "format": fmt, "input": str(paths[fmt])}
            plan.append((name, spec, lines, args.repeat))
        for kind, repeats in (
            ("duckdb", args.repeat),
            ("duckdb-typed", args.repeat),
            ("python", 1),
        ):
            spec = {"kind": kind, "format": fmt, "input": str(files[n][fmt])}
            plan.append((f"{kind}/{fmt}", spec, n, repeats))

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for round_no in range(max(r for *_, r in plan)):
        for name, spec, lines, repeats in plan:
            if round_no >= repeats:
                continue
            out = workdir / "out" / name.replace("/", "-").replace(" @", "-")
            if spec["kind"].startswith("duckdb"):
                out = out.with_suffix(".parquet")
            print(f"round {round_no + 1}: {name} on {lines:,} lines ...", flush=True)
            load = os.getloadavg()[0]
            run = run_child({**common, **spec, "name": name, "out": str(out)}, workdir)
            run["load_before"] = load
            runs[name].append(run)
            if not args.keep:
                harness.remove(out)

    results: dict[str, dict[str, Any]] = {}
    for name, _spec, lines, _repeats in plan:
        best = dict(min(runs[name], key=lambda r: r["seconds"]))
        best.update(
            lines=lines,
            lines_per_s=lines / best["seconds"],
            runs_seconds=[r["seconds"] for r in runs[name]],
            peak_mib=max(r["peak_mib"] for r in runs[name]),
            vmhwm_mib=max(r["vmhwm_mib"] for r in runs[name]),
            load_before=[r["load_before"] for r in runs[name]],
        )
        assert best["rows_out"] == best["rows_written"] == lines, (name, best)
        results[name] = best

    loads = [load for r in results.values() for load in r["load_before"]]
    print(
        f"\n1-min load average before the runs: {min(loads):.1f} .. {max(loads):.1f} "
        f"on {os.cpu_count()} CPUs (compare runs only at similar load)"
    )
    ratios: dict[str, float] = {}
    print(
        f"\n{'variant':<18}{'lines':>12}{'seconds':>9}{'lines/s':>12}{'ru_maxrss':>11}{'VmHWM':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<18}{r['lines']:>12,}{r['seconds']:>9.2f}{r['lines_per_s']:>12,.0f}"
            f"{r['peak_mib']:>8.0f}MiB{r['vmhwm_mib']:>6.0f}MiB"
        )
    speed = {name: r["lines_per_s"] for name, r in results.items()}
    targets = {"python": TARGET_PYTHON, "duckdb": TARGET_DUCKDB}
    verdicts: list[tuple[str, bool, str]] = []
    for fmt in ("run", "tsv"):
        for baseline in ("python", "duckdb", "duckdb-typed"):
            label = f"{fmt}: ours / {baseline}"
            ratios[label] = speed[f"ours/{fmt}"] / speed[f"{baseline}/{fmt}"]
            if baseline in targets:
                target = targets[baseline]
                verdicts.append((label, ratios[label] >= target, f">= {target}"))
        if f"ours/{fmt} @2N" in results:
            label = f"{fmt}: memory 2N / N"
            ratios[label] = (
                results[f"ours/{fmt} @2N"]["peak_mib"] / results[f"ours/{fmt}"]["peak_mib"]
            )
            verdicts.append((label, ratios[label] <= FLAT_LIMIT, f"<= {FLAT_LIMIT}"))
    print()
    judged = {label: (ok, target) for label, ok, target in verdicts}
    for label, value in ratios.items():
        if label in judged:
            ok, target = judged[label]
            note = f"target {target}: {'met' if ok else 'MISSED'}"
        else:
            note = "same output schema as ours; informational"
        print(f"{label:<28}{value:>7.2f}  ({note})")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = RESULTS_DIR / f"parsers-{dt.date.today().isoformat()}.json"
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "lines": n,
        "input_bytes": {
            f"{fmt}@{lines}": paths[fmt].stat().st_size
            for lines, paths in files.items()
            for fmt in ("run", "tsv")
        },
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "results": results,
        "ratios": ratios,
        "targets": {label: {"met": ok, "target": t} for label, ok, t in verdicts},
    }
    target.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {target}")
    return 0 if all(ok for _, ok, _ in verdicts) else 1  # exit 1: a target was missed


if __name__ == "__main__":
    sys.exit(main())
