"""Where a lake's time goes per step: the lake calls a partition run makes, timed one by one
(not a pytest test).

    PYTHONPATH=<tree> .venv/bin/python bench/profile_lake.py [--partitions 10] [--rows 1000]

Runs against the kd_pipeline on the path (this checkout, or a baseline tree first on
PYTHONPATH, as bench_lake.py runs it), in a fresh lake under a temporary folder. For each
of --partitions partitions of `lighton/raw` (or --partitions publishes of the same partition
with --same) it does what a step does: the reads before the
write (`is_published`, `published_rows`, `manifest`), then stage a --rows Parquet file and
`publish` it (+ `rebuild_catalog` for the baseline). Every method of the lake and of
kd_pipeline.ducklake is wrapped with a timer, so the report gives, per method, its calls and
seconds in all (nested: `publish` includes the `connect` calls it makes), and the time per
partition of the whole sequence.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = ("lighton", "raw")
TOTALS: dict[str, list[float]] = collections.defaultdict(list)


def timed(name: str, function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TOTALS[name].append(time.perf_counter() - began)

    return wrapper


def timed_context(name: str, function: Any) -> Any:
    """A context manager's setup + teardown time (not the time inside the block)."""
    import contextlib

    @functools.wraps(function)
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        with function(*args, **kwargs) as value:
            entered = time.perf_counter()
            yield value
            left = time.perf_counter()
        TOTALS[name].append(entered - began + time.perf_counter() - left)

    return wrapper


def instrument() -> None:
    import kd_pipeline.lake as lake_module

    lake_class = lake_module.Lake
    for name in (
        "is_published",
        "published_rows",
        "manifest",
        "publish",
        "rebuild_catalog",
        "_registry",
        "_create_table",
        "expire_old_versions",
        "attach",
        "published_assets",
    ):
        if name in vars(lake_class):
            setattr(lake_class, name, timed(f"Lake.{name}", vars(lake_class)[name]))
    for name in ("_table_columns", "_widen", "_register", "_fsync_tree", "_has_table"):
        if hasattr(lake_module, name):
            setattr(lake_module, name, timed(f"lake.{name}", getattr(lake_module, name)))
    for name in ("_swap_partition",):
        if name in vars(lake_class):
            setattr(lake_class, name, timed(f"Lake.{name}", vars(lake_class)[name]))
    for name in ("connect", "stage"):
        if name in vars(lake_class):
            setattr(lake_class, name, timed_context(f"Lake.{name}", vars(lake_class)[name]))
    try:
        import kd_pipeline.ducklake as ducklake
    except ImportError:
        return
    for name in ("load_extension", "attach"):
        setattr(ducklake, name, timed(f"ducklake.{name}", getattr(ducklake, name)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--same", action="store_true", help="publish one partition again")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument(
        "--source",
        type=Path,
        help="a folder of raw-shaped Parquet files to publish instead (e.g. bench_filters' "
        "raw-2000000): every partition gets a copy of them",
    )
    args = parser.parse_args()

    import duckdb

    import kd_pipeline
    from kd_pipeline.lake import Lake

    instrument()
    workdir = Path(tempfile.mkdtemp(prefix="kd-profile-lake-"))
    try:
        source = workdir / "source.parquet"
        duckdb.execute(
            "COPY (SELECT md5(i::VARCHAR) AS query_id, md5((i * 7)::VARCHAR) AS doc_id, "
            "'q ' || i AS query, 'd ' || i AS document, (i % 100) / 100.0 AS similarity, "
            "i % 3 = 0 AS drop, NULL::BIGINT AS duplicate, i AS index "
            f"FROM range({args.rows}) t(i)) TO '{source}' (FORMAT parquet)"
        )
        sources = sorted(args.source.glob("*.parquet")) if args.source else [source]
        rows = duckdb.execute(
            "SELECT sum(num_rows) FROM parquet_file_metadata($f)",
            {"f": [str(f) for f in sources]},
        ).fetchone()[0]
        lake = Lake(workdir / "lake")
        rebuild = getattr(lake, "rebuild_catalog", None)
        per_partition = []
        for number in range(args.partitions):
            partition = "p000" if args.same else f"p{number:03d}"
            began = time.perf_counter()
            lake.is_published(KEY, partition)
            lake.published_rows(KEY, partition)
            with lake.stage(KEY, partition) as staged:
                for number_, file in enumerate(sources):
                    shutil.copyfile(file, staged.path / f"part-{number_:05d}.parquet")
                lake.publish(staged, {"rows": int(rows), "run_id": "profile"})
                if rebuild is not None:
                    rebuild()
            lake.manifest(KEY, partition)
            per_partition.append(time.perf_counter() - began)
        report = {
            "kd_pipeline": kd_pipeline.__file__,
            "partitions": args.partitions,
            "seconds_per_partition": sum(per_partition) / len(per_partition),
            "first_partition": per_partition[0],
            "last_partition": per_partition[-1],
            "methods": {
                name: {
                    "calls": len(times),
                    "seconds": sum(times),
                    "first_calls": times[:3],
                    "last_calls": times[-3:],
                }
                for name, times in sorted(TOTALS.items(), key=lambda kv: -sum(kv[1]))
            },
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"kd_pipeline: {report['kd_pipeline']}")
    print(
        f"{report['partitions']} partitions: {report['seconds_per_partition']:.3f} s each "
        f"(first {report['first_partition']:.3f} s, last {report['last_partition']:.3f} s)"
    )
    for name, entry in report["methods"].items():
        first = " ".join(f"{t:.3f}" for t in entry["first_calls"])
        last = " ".join(f"{t:.3f}" for t in entry["last_calls"])
        print(
            f"  {name:<28} {entry['calls']:>5} calls {entry['seconds']:8.3f} s"
            f"   first calls {first}   last calls {last}"
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
