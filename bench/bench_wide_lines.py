"""Benchmark the report of a malformed wide line: one teacher-TSV line of 10 million fields
among ordinary rows (issue 13 item 2: it ran 13+ minutes at 1.7 GB before the line census).

    PYTHONPATH=. python bench/bench_wide_lines.py [--fields 10000000] [--workdir DIR]
        [--engine-direct-fields 100000]

Variants, each in its own child process (time: the work only; memory: `VmHWM`):
- `ours/wide`: `hofstaetter.write_pairwise` on 300 ordinary rows around the wide line: it must
  publish 300 rows and report the one line, `file:151`, with a bounded report;
- `ours/same-size`: the same call on a file of the same byte size made of ordinary rows only
  (what reading that many bytes costs anyway);
- `ours/999-fields-8MiB`: one line just under the 8 MiB length limit with 999 fields (the
  review's case: 8.3 s when the field limit was 1,000, fields x length in DuckDB's rejects
  table); `ours/36-fields-8MiB`: the same length at the teacher TSV's field limit
  (4 x 5 + 16 = 36), the widest line that still reaches the engine (its rejects table
  then holds 31 rows of the line); each with its own line count as the baseline;
- `baseline/line-count`: counting the newlines of the wide-line file in 16 MiB chunks
  (`bytes.count`, what `wc -l` does): the floor for touching every byte once;
- `duckdb-direct` (only with `--engine-direct-fields N`, N fields): DuckDB's CSV reader with a
  rejects table on the same kind of file, as the readers used it before the census, for
  comparison (it grows with the square of N: keep N small).

The printout gives each time and the ratio of `ours/wide` to the line count measured in the
same run; the wide line must cost O(its length): seconds, not minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness

DEFAULT_WORKDIR = Path("/tmp/kd-bench-wide-lines")
ROW = b"1.5\t0.5\t1185869\t8841662\t2243627\n"
TARGET_SECONDS = 20.0  # the wide line reported within this
UNDER_LIMIT_FIELDS = (999, 36)  # lines just under 8 MiB: over the field limit, and at it


def _write_inputs(workdir: Path, fields: int) -> tuple[Path, Path]:
    wide = workdir / f"wide-{fields}.tsv"
    same = workdir / f"same-size-{fields}.tsv"
    if not wide.exists():
        with open(wide, "wb") as out:
            out.write(ROW * 150)
            out.write(b"\t".join([b"1"] * fields) + b"\n")
            out.write(ROW * 150)
    if not same.exists():
        with open(same, "wb") as out:
            out.write(ROW * (wide.stat().st_size // len(ROW)))
    return wide, same


def _write_under_limit(workdir: Path, fields: int) -> Path:
    """300 ordinary rows around one line of `fields` fields, 1 KiB under 8 MiB long."""
    path = workdir / f"under-8MiB-{fields}.tsv"
    if not path.exists():
        width = ((8 << 20) - 1024) // fields - 1
        with open(path, "wb") as out:
            out.write(ROW * 150)
            out.write(b"\t".join([b"1" * width] * fields) + b"\n")
            out.write(ROW * 150)
    return path


# ---- variants (in the child) -----------------------------------------------------------------
def ours(spec: dict[str, Any]) -> dict[str, Any]:
    from kd_pipeline.families.hofstaetter import write_pairwise

    con = harness.duckdb_connection(spec)
    out = Path(spec["out"])
    harness.remove(out)
    out.mkdir(parents=True)
    began = harness.mark()
    report = write_pairwise(con, Path(spec["input"]), out, Path(spec["input"]).name)
    return harness.done(
        began,
        rows=report.rows,
        malformed_lines=report.malformed_lines,
        examples=list(report.examples),
    )


def line_count(spec: dict[str, Any]) -> dict[str, Any]:
    began = harness.mark()
    lines = 0
    with open(spec["input"], "rb") as handle:
        while chunk := handle.read(16 << 20):
            lines += chunk.count(b"\n")
    return harness.done(began, lines=lines)


def duckdb_direct(spec: dict[str, Any]) -> dict[str, Any]:
    con = harness.duckdb_connection(spec)
    columns = "{'a': 'DOUBLE', 'b': 'DOUBLE', 'q': 'VARCHAR', 'p': 'VARCHAR', 'n': 'VARCHAR'}"
    began = harness.mark()
    (rows,) = con.execute(
        f"SELECT count(hash(a, b, q, p, n)) FROM read_csv('{spec['input']}', delim='\t', "
        f"header=false, auto_detect=false, quote='', escape='', columns={columns}, "
        "store_rejects=true)"
    ).fetchall()[0]
    (rejects,) = con.execute("SELECT count(*) FROM reject_errors").fetchall()[0]
    return harness.done(began, rows=rows, reject_rows=rejects)


CHILD_RUNNERS = {"ours": ours, "line-count": line_count, "duckdb-direct": duckdb_direct}


# ---- parent ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--engine-direct-fields", type=int, default=0)
    parser.add_argument("--child")
    args = parser.parse_args(argv)
    if args.child:
        harness.child_main(args.child, CHILD_RUNNERS)
        return 0
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    wide, same = _write_inputs(workdir, args.fields)
    common = {"memory_limit": "2GB", "threads": 2, "temp_dir": str(workdir / "spill")}
    runs = {
        "baseline/line-count": {"kind": "line-count", "input": str(wide)},
        "ours/wide": {"kind": "ours", "input": str(wide), "out": str(workdir / "out-wide")},
        "ours/same-size": {"kind": "ours", "input": str(same), "out": str(workdir / "out-same")},
    }
    for fields in UNDER_LIMIT_FIELDS:
        path = _write_under_limit(workdir, fields)
        runs[f"ours/{fields}-fields-8MiB"] = {
            "kind": "ours",
            "input": str(path),
            "out": str(workdir / f"out-{fields}"),
        }
        runs[f"baseline/line-count@{fields}"] = {"kind": "line-count", "input": str(path)}
    if args.engine_direct_fields:
        small, _ = _write_inputs(workdir, args.engine_direct_fields)
        runs[f"duckdb-direct@{args.engine_direct_fields}"] = {
            "kind": "duckdb-direct",
            "input": str(small),
        }
    results = {}
    for name, spec in runs.items():
        results[name] = harness.run_child(__file__, {**common, **spec, "name": name}, workdir)
    size_mib = wide.stat().st_size / 2**20
    print(f"input: {size_mib:.1f} MiB, 300 ordinary rows around one line of {args.fields:,} fields")
    for name, result in results.items():
        extra = {
            k: result[k] for k in ("rows", "malformed_lines", "lines", "reject_rows") if k in result
        }
        print(f"{name:28} {result['seconds']:8.2f} s  peak {result['peak_mib']:7.0f} MiB  {extra}")
    wide_s = results["ours/wide"]["seconds"]
    base_s = results["baseline/line-count"]["seconds"]
    print(f"ours/wide over the line count of the same file: {wide_s / max(base_s, 1e-9):.1f}x")
    print(f"report: {results['ours/wide']['examples']}")
    for fields in UNDER_LIMIT_FIELDS:
        under = results[f"ours/{fields}-fields-8MiB"]
        base = results[f"baseline/line-count@{fields}"]["seconds"]
        print(
            f"ours/{fields}-fields-8MiB over its line count: "
            f"{under['seconds'] / max(base, 1e-9):.1f}x ({under['seconds']:.2f} s); "
            f"report: {under['examples']}"
        )
    ok = all(
        results[name]["rows"] == 300
        and results[name]["malformed_lines"] == 1
        and results[name]["seconds"] < TARGET_SECONDS
        for name in ["ours/wide", *(f"ours/{f}-fields-8MiB" for f in UNDER_LIMIT_FIELDS)]
    )
    print(
        ("PASS" if ok else "FAIL")
        + f": each wide file 300 rows, 1 reported line, under {TARGET_SECONDS:.0f} s"
    )
    (workdir / "result.json").write_text(json.dumps(results, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
