"""The main job's wall time on the sample: runs one after another vs several at a time.

```sh
.venv/bin/python bench/bench_main_job.py [--variants loop,sequential,parallel]
    [--runs-at-once N] [--repeat R] [--workdir DIR] [--keep]
```

Each variant runs every asset and check over every partition of the sample (167 runs) in a
data home of its own, the sample mirror generated there beforehand so the timing is the
runs only:
  - `loop`: the sequential loop the command was before the worker pool (d81d1db^): one
    process executing the runs one after another (`execute_in_process`) on the instance of
    DAGSTER_HOME as Dagster builds it, then the lake's orphan sweep as the command does now;
    the tree's own definitions and lake, so only the way of running differs;
  - `sequential`: `kd-pipeline materialize --runs-at-once 1`: the worker pool with one
    worker (its storage kept open, its compute-log capture), one run after another;
  - `parallel`: `kd-pipeline materialize`: the instance's `max_concurrent_runs`, at most the
    `duckdb` pool's slots (dagster.yaml: 4 and 2, so 2), or `--runs-at-once`.
Prints each variant's wall time, the CPU seconds of its processes, the 1-min load average
before it, and the ratios loop / parallel (the issue's target) and sequential / parallel
(what running several at once adds). `--repeat R` runs R rounds, the variants alternating
(the machine's load drifts), and prints each round's ratios and their medians.
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


def sequential_loop() -> int:
    """The `loop` variant, in its own process: every run of the main job one after another
    in this process, as `kd-pipeline materialize` ran them before the worker pool. Prints
    the lake's path last, as the command does; returns 1 when a run failed."""
    import dagster as dg

    from kd_pipeline.definitions import MAIN_JOBS, defs
    from kd_pipeline.instance import cli_run_tags, ensure_dagster_home
    from kd_pipeline.lake import Lake
    from kd_pipeline.main_job import main_job_steps
    from kd_pipeline.prepare import QUIET_LOGS

    ensure_dagster_home()
    steps = main_job_steps(defs, MAIN_JOBS)
    failed = 0
    with dg.DagsterInstance.get() as instance:
        for step in steps:
            result = defs.resolve_job_def(step.job).execute_in_process(
                partition_key=step.partition,
                instance=instance,
                raise_on_error=False,
                run_config=QUIET_LOGS,
                tags=cli_run_tags(),
            )
            failed += not result.success
    lake = Lake()
    lake.delete_orphaned_files()
    print(f"{len(steps) - failed}/{len(steps)} runs succeeded", file=sys.stderr)
    print(lake.root)
    return 1 if failed else 0


def run_variant(name: str, home: Path, runs_at_once: int | None) -> dict:
    """Generate the sample in `home`, then time the variant's one invocation there."""
    env = environment(home)
    subprocess.run(
        [sys.executable, "-c", "from kd_pipeline.fetch import sample_mirror; sample_mirror()"],
        env=env,
        cwd=REPO,
        check=True,
    )
    if name == "loop":
        args = [sys.executable, __file__, "--loop-child"]
    else:
        args = [*CLI, "materialize"]
        args += [f"--runs-at-once={runs_at_once}"] if runs_at_once else []
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


VARIANTS = ("loop", "sequential", "parallel")


def at_least_one(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected at least 1")
    return number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs-at-once",
        type=at_least_one,
        default=None,
        help="runs at once of `parallel` (default: the instance's, 2 with this dagster.yaml)",
    )
    parser.add_argument(
        "--repeat", type=at_least_one, default=1, help="rounds of variants (default 1)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, among loop, sequential, parallel; `parallel` and at least one "
        "other (default: all three)",
    )
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the data homes")
    parser.add_argument("--loop-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_child:
        sys.path.insert(0, str(REPO))  # this checkout's package, as `-m kd_pipeline.cli` runs
        sys.exit(sequential_loop())
    asked = {name.strip() for name in args.variants.split(",") if name.strip()}
    variants = [v for v in VARIANTS if v in asked]
    if asked - set(VARIANTS) or "parallel" not in variants or len(variants) < 2:
        unknown = ", ".join(sorted(asked - set(VARIANTS)))
        parser.error(
            (f"--variants: unknown {unknown}; " if unknown else "--variants: ")
            + "give `parallel` and at least one of `loop`, `sequential`"
        )
    at_once = {"loop": None, "sequential": 1, "parallel": args.runs_at_once}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kd-bench-main-job-"))
    print(f"cores: {os.cpu_count()}; data homes under {workdir}", flush=True)
    try:
        ratios: dict[str, list[float]] = {v: [] for v in variants if v != "parallel"}
        counts = None
        for round_ in range(1, args.repeat + 1):
            results = {}
            for name in variants:
                home = workdir / f"{name}-{round_}"
                shutil.rmtree(home, ignore_errors=True)
                result = run_variant(name, home, at_once[name])
                print(
                    f"{name:>10}: {result['seconds']:7.1f} s wall, "
                    f"{result['cpu_seconds']:7.1f} s CPU, load before {result['load']:.2f}; "
                    f"{result['summary']}",
                    flush=True,
                )
                if counts is not None and result["counts"] != counts:
                    sys.exit(f"{name} published another catalog than the first variant")
                counts = result["counts"]
                results[name] = result
            parallel = results["parallel"]
            for name, listed in ratios.items():
                listed.append(results[name]["seconds"] / parallel["seconds"])
                print(
                    f"main job (round {round_}): {name} {results[name]['seconds']:.1f} s / "
                    f"parallel {parallel['seconds']:.1f} s = {listed[-1]:.2f}x; CPU "
                    f"{results[name]['cpu_seconds']:.1f} s vs {parallel['cpu_seconds']:.1f} s "
                    f"({len(counts)} catalog views, same row counts)",
                    flush=True,
                )
        if args.repeat > 1:
            for name, listed in ratios.items():
                shown = ", ".join(f"{r:.2f}x" for r in listed)
                print(f"{name} / parallel: {shown}; median {statistics.median(listed):.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
