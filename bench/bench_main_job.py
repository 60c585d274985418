"""The main job's wall time on the sample: runs one after another vs several at a time.

```sh
.venv/bin/python bench/bench_main_job.py [--runs-at-once N] [--repeat R] [--workdir DIR] [--keep]
```

Each variant is `kd-pipeline materialize` (every asset and check over every partition of the
sample, 167 runs) in a data home of its own, the sample mirror generated there beforehand
so the timing is the runs only:
  - `sequential`: `--runs-at-once 1`, one run after another, as the command did before;
  - `parallel`: the instance's `max_concurrent_runs`, at most the `duckdb` pool's slots
    (dagster.yaml: 4 and 2, so 2), or `--runs-at-once`.
Prints each variant's wall time, the CPU seconds of its processes, the 1-min load average
before it, and the ratio sequential / parallel. `--repeat R` runs R pairs, the two variants
alternating (the machine's load drifts), and prints each pair's ratio and their median.
Every variant must succeed (exit 0, last stdout line the lake) and publish the same catalog
views with the same row counts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kd_pipeline.cli"]


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_PIPELINE_", "DAGSTER"))}
    env["KD_PIPELINE_HOME"] = str(home)
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def catalog_counts(lake: Path) -> dict[str, int]:
    """Rows of every table and view of the lake (read through DuckLake)."""
    from kd_pipeline.lake import Lake

    with Lake(lake).connect(read_only=True) as con:
        names = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake' "
            "UNION ALL SELECT schema_name, view_name FROM duckdb_views() "
            "WHERE database_name = 'lake' AND NOT internal"
        ).fetchall()
        return {
            f"{s}.{t}": con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0]
            for s, t in names
        }


def run_variant(name: str, home: Path, runs_at_once: int | None) -> dict:
    """Generate the sample in `home`, then time one `kd-pipeline materialize` there."""
    env = environment(home)
    subprocess.run(
        [sys.executable, "-c", "from kd_pipeline.fetch import sample_mirror; sample_mirror()"],
        env=env,
        cwd=REPO,
        check=True,
    )
    args = [*CLI, "materialize"] + ([f"--runs-at-once={runs_at_once}"] if runs_at_once else [])
    load = os.getloadavg()[0]
    cpu = children_cpu()
    began = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    lake = Path(proc.stdout.strip().splitlines()[-1])
    summary = [line for line in proc.stderr.splitlines() if "runs succeeded" in line]
    return {
        "name": name,
        "seconds": seconds,
        "cpu_seconds": children_cpu() - cpu,
        "load": load,
        "summary": summary[-1] if summary else "",
        "counts": catalog_counts(lake),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-at-once", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of variants (default 1)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the data homes")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kd-bench-main-job-"))
    print(f"cores: {os.cpu_count()}; data homes under {workdir}", flush=True)
    try:
        ratios = []
        counts = None
        for pair in range(1, args.repeat + 1):
            results = []
            for name, at_once in (("sequential", 1), ("parallel", args.runs_at_once)):
                home = workdir / f"{name}-{pair}"
                shutil.rmtree(home, ignore_errors=True)
                result = run_variant(name, home, at_once)
                print(
                    f"{name:>10}: {result['seconds']:7.1f} s wall, "
                    f"{result['cpu_seconds']:7.1f} s CPU, load before {result['load']:.2f}; "
                    f"{result['summary']}",
                    flush=True,
                )
                if counts is not None and result["counts"] != counts:
                    sys.exit(f"{name} published another catalog than the first variant")
                counts = result["counts"]
                results.append(result)
            sequential, parallel = results
            ratios.append(sequential["seconds"] / parallel["seconds"])
            print(
                f"main job (pair {pair}): sequential {sequential['seconds']:.1f} s, parallel "
                f"{parallel['seconds']:.1f} s, ratio {ratios[-1]:.2f}x; CPU "
                f"{sequential['cpu_seconds']:.1f} s vs {parallel['cpu_seconds']:.1f} s "
                f"({len(counts)} catalog views, same row counts)",
                flush=True,
            )
        if len(ratios) > 1:
            listed = ", ".join(f"{r:.2f}x" for r in ratios)
            print(f"ratios: {listed}; median {statistics.median(ratios):.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
