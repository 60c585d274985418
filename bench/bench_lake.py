"""The DuckLake lake against the previous lake (folders + symlink swap + catalog.duckdb), in
one invocation on one machine (not a pytest test).

    .venv/bin/python bench/bench_lake.py [--rows 2000000] [--repeat 2] [--workdir DIR]
        [--baseline fa98ff9] [--only main,big] [--keep]

Both lakes run from the same venv (same DuckDB, Dagster, pyarrow): the DuckLake code is this
checkout, the baseline is `git archive <--baseline>` extracted under --workdir and put first
on PYTHONPATH (and used as the working directory) of every process that runs it; each child
reports the `kd_pipeline.__file__` it imported and the run stops if it is not the tree meant.

Measured, each in a fresh data home per run (KD_PIPELINE_HOME, DAGSTER_HOME inside it), the
two lakes alternating (baseline, ducklake, baseline, ducklake, ...), median of --repeat:
  1. `main`: `kd-pipeline materialize` on the embedded sample, wall time (the sample mirror
     is generated in the home beforehand, untimed);
  2. `big`: `kd-pipeline materialize --partition agnews` against a mirror whose only config
     is a --rows LightOn-shaped agnews (lighton/raw, then the recipes recommended, top35,
     similarity_3): the run's wall time, and each step's time from Dagster's STEP_SUCCESS
     events in the home's instance (the raw step is the fetch + canonicalise + audit +
     publish of a --rows partition; the recipe steps are raw -> recommended, raw -> top35);
  3. `publish`: the lake's own cost of publishing that --rows partition, isolated: a driver
     in the home of each `big` run stages a copy of the published lighton/raw files (copy
     untimed) and times `Lake.publish` as the pipeline calls it (plus `rebuild_catalog` for
     the baseline, which `audit_and_publish` ran after every publish), twice (the first
     replaces the run's version, the second the driver's), and the lake reads a recipe step
     makes before writing (`is_published`, `manifest`, `published_rows`; DuckLake: on the
     lake a step pins when it starts, `Lake.pinned`, the pin included);
  4. lake bytes / upstream bytes after each `main` and `big` run: DuckLake `data/` +
     `exports/` + the catalog file; the baseline `.versions/` + `catalog.duckdb`; upstream is
     the mirror the run read (the sample mirror, or the big mirror).
Ratios are DuckLake / baseline (target: at most 1.15 for the times). The 1-min load average
before each run is recorded: on a shared machine compare runs at similar load. The table is
printed; JSON goes to bench/results/lake-<date>.json.

The big mirror is made once from bench_filters' generator (its cached part files, 250k rows
each, under --workdir/filters-input) as upstream-shaped files (query, document, similarity,
drop, duplicate, index) under --workdir/mirror-<rows>, and reused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/kd-bench-lake")
LIGHTON_REPO_ID = "lightonai/embeddings-pre-training"
BIG_CONFIG = "agnews"
RAW_KEY = ("lighton", "raw")
TARGET = 1.15
MIRROR_VERSION = 1  # bump when the mirror layout changes, so a cached mirror is rebuilt


# ---- the two code trees -------------------------------------------------------------------
def baseline_tree(workdir: Path, commit: str) -> Path:
    """`git archive <commit>` of this repository, extracted once under workdir."""
    sha = subprocess.run(
        ["git", "rev-parse", f"{commit}^{{commit}}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = workdir / f"baseline-{sha[:12]}"
    if not (tree / "kd_pipeline" / "lake.py").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def environment(tree: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process of one lake: its code first on the path, its own homes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_PIPELINE_", "DAGSTER"))}
    env["PYTHONPATH"] = str(tree)
    env["KD_PIPELINE_HOME"] = str(home)
    env["DAGSTER_HOME"] = str(home / "dagster")
    env.update(extra)
    return env


def check_tree(tree: Path) -> dict[str, str]:
    """Which kd_pipeline and DuckDB a process of this tree imports; exits if not tree's."""
    probe = (
        "import json, duckdb, kd_pipeline, kd_pipeline.lake as lake; print(json.dumps("
        "{'kd_pipeline': kd_pipeline.__file__, 'duckdb': duckdb.__version__, "
        "'ducklake': not hasattr(lake.Lake, 'rebuild_catalog')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tree,
        env=environment(tree, Path("/nonexistent")),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    if not Path(found["kd_pipeline"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{tree}: imported {found['kd_pipeline']} instead of this tree's kd_pipeline")
    return found


# ---- the big mirror -------------------------------------------------------------------------
def big_mirror(workdir: Path, rows: int) -> Path:
    """A mirror whose LightOn repository holds one config, agnews, of `rows` rows in
    upstream shape, one file per bench_filters part; made once and reused."""
    import duckdb

    sys.path.insert(0, str(REPO / "bench"))
    import bench_filters

    mirror = workdir / f"mirror-{rows}-v{MIRROR_VERSION}"
    if (mirror / ".complete").exists():
        return mirror
    shutil.rmtree(mirror, ignore_errors=True)
    parts = sorted(bench_filters.dataset(workdir / "filters-input", rows).glob("*.parquet"))
    folder = mirror / "hf" / "datasets" / LIGHTON_REPO_ID / BIG_CONFIG
    folder.mkdir(parents=True)
    con = duckdb.connect()
    for number, part in enumerate(parts):
        target = folder / f"train-{number:05d}-of-{len(parts):05d}.parquet"
        con.execute(
            'COPY (SELECT query, document, similarity, "drop", duplicate, "index" '
            f"FROM read_parquet('{part.resolve()}')) TO '{target}' "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
        )
    con.close()
    (mirror / ".complete").touch()
    return mirror


# ---- measuring ------------------------------------------------------------------------------
def tree_bytes(*paths: Path) -> int:
    """Bytes of the files under paths (apparent size; symlinks not followed)."""
    total = 0
    for path in paths:
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
        elif path.is_dir():
            for dirpath, _, files in os.walk(path):
                for name in files:
                    file = Path(dirpath, name)
                    if not file.is_symlink():
                        total += file.stat().st_size
    return total


def lake_bytes(ducklake: bool, root: Path) -> dict[str, int]:
    """What a lake keeps on disk, by part (see the module docstring)."""
    if ducklake:
        parts = {
            "data": root / "data",
            "exports": root / "exports",
            "catalog": root / "catalog.sqlite",
            "catalog_wal": root / "catalog.sqlite-wal",
        }
    else:
        parts = {
            "data": root / ".versions",
            "exports": root / ".versions" / "exports",
            "catalog": root / "catalog.duckdb",
        }
    sizes = {name: tree_bytes(path) for name, path in parts.items()}
    if not ducklake:
        sizes["data"] -= sizes["exports"]
    sizes["total"] = sum(sizes.values())
    return sizes


def step_seconds(dagster_home: Path) -> dict[str, float]:
    """Seconds of every successful step of every run in the instance (STEP_SUCCESS
    duration), summed per step key (the main job runs a step once per partition)."""
    import dagster as dg

    totals: dict[str, float] = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs():
            for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
                event = record.dagster_event
                seconds = event.event_specific_data.duration_ms / 1000
                totals[event.step_key] = totals.get(event.step_key, 0.0) + seconds
    return totals


def run_cli(
    lake: str, tree: Path, home: Path, args: list[str], limit: int = 0, **extra: str
) -> dict[str, Any]:
    """Time one `kd-pipeline <args>` of a lake in home (limit > 0: the main job's first
    `limit` runs only, see cli_child); exits with its stderr on failure."""
    env = environment(tree, home, **extra)
    command = ["-m", "kd_pipeline.cli", *args]
    if limit:
        spec = json.dumps({"args": args, "limit": limit})
        command = [str(Path(__file__).resolve()), "--cli-child", spec]
    log = home / "cli.log"
    load = os.getloadavg()[0]
    began = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, *command],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=False,
        )
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"{lake} {' '.join(args)}: exit {proc.returncode}\n{log.read_text()[-3000:]}")
    if limit and f"kd_pipeline: {tree.resolve()}/" not in log.read_text():
        sys.exit(f"{lake}: the run did not import the kd_pipeline of {tree}")
    summary = [line for line in log.read_text().splitlines() if "runs succeeded" in line]
    return {
        "seconds": seconds,
        "load": load,
        "summary": summary[-1] if summary else "",
        "lake_root": proc.stdout.strip().splitlines()[-1],
    }


# The sample mirror's generation moved from resources.py (the baseline tree) to fetch.py.
GENERATE_SAMPLE = """
try:
    from kd_pipeline.fetch import sample_mirror
except ImportError:
    from kd_pipeline.resources import sample_mirror
sample_mirror()
"""


def fresh_home(workdir: Path, name: str) -> Path:
    home = workdir / "homes" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    return home


def measure_main(lake: str, tree: Path, ducklake: bool, home: Path, limit: int) -> dict[str, Any]:
    """The sample main job in a fresh home: wall time, step times, bytes."""
    subprocess.run(
        [sys.executable, "-c", GENERATE_SAMPLE],
        cwd=tree,
        env=environment(tree, home),
        check=True,
        capture_output=True,
    )
    result = run_cli(lake, tree, home, ["materialize"], limit=limit)
    result["steps"] = step_seconds(home / "dagster")
    result["lake_bytes"] = lake_bytes(ducklake, Path(result["lake_root"]))
    result["upstream_bytes"] = tree_bytes(home / "sample-mirror")
    return result


def measure_big(lake: str, tree: Path, ducklake: bool, home: Path, mirror: Path) -> dict[str, Any]:
    """One partition of --rows through the pipeline, then the isolated publish driver."""
    extra = {"KD_PIPELINE_MIRROR": str(mirror), "KD_PIPELINE_SOURCE": "mirror"}
    result = run_cli(lake, tree, home, ["materialize", "--partition", BIG_CONFIG], **extra)
    result["steps"] = step_seconds(home / "dagster")
    result["lake_bytes"] = lake_bytes(ducklake, Path(result["lake_root"]))
    result["upstream_bytes"] = tree_bytes(mirror / "hf")
    spec = {"partition": BIG_CONFIG, "publishes": 2}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--publish-child", json.dumps(spec)],
        cwd=tree,
        env=environment(tree, home, **extra),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{lake} publish driver: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    result["publish"] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(result["publish"]["kd_pipeline"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{lake} publish driver imported {result['publish']['kd_pipeline']}")
    return result


def cli_child(spec: dict[str, Any]) -> int:
    """`kd-pipeline <args>` of the tree on the path, its main job cut to the first
    `limit` runs (main_job_steps is looked up by cmd_materialize at call time; the first
    runs are LightOn partitions, which wait on nothing). Everything else is the CLI's."""
    import kd_pipeline
    import kd_pipeline.cli
    import kd_pipeline.main_job as main_job

    whole = main_job.main_job_steps

    def first_steps(*args: Any, **kwargs: Any) -> list:
        return list(whole(*args, **kwargs))[: spec["limit"]]

    main_job.main_job_steps = first_steps
    print(f"kd_pipeline: {kd_pipeline.__file__}", file=sys.stderr, flush=True)
    return kd_pipeline.cli.main(spec["args"])


def publish_child(spec: dict[str, Any]) -> None:
    """In a lake's home (its code on the path): stage copies of the published raw partition
    and time the lake's publish of them; prints one JSON line."""
    import duckdb

    import kd_pipeline
    from kd_pipeline import settings
    from kd_pipeline.lake import Lake

    lake = Lake(settings.lake_root())
    partition = spec["partition"]
    sources = sorted(Path(lake.published_path(RAW_KEY, partition)).glob("*.parquet"))
    (rows,) = duckdb.execute(
        "SELECT sum(num_rows) FROM parquet_file_metadata($files)",
        {"files": [str(f) for f in sources]},
    ).fetchone()
    rebuild = getattr(lake, "rebuild_catalog", None)  # the baseline's step after a publish
    publishes, reads = [], []
    for number in range(spec["publishes"]):
        began = time.perf_counter()
        step = lake.pinned() if hasattr(lake, "pinned") else lake  # as a step reads now
        assert step.is_published(RAW_KEY, partition)
        step.manifest(RAW_KEY, partition)
        assert step.published_rows(RAW_KEY, partition) == rows
        reads.append(time.perf_counter() - began)
        with lake.stage(RAW_KEY, partition) as staged:
            for source in sources:
                shutil.copyfile(source, staged.path / source.name)
            began = time.perf_counter()
            lake.publish(staged, {"rows": int(rows), "run_id": f"bench-{number}"})
            if rebuild is not None:
                rebuild()
            publishes.append(time.perf_counter() - began)
    assert lake.published_rows(RAW_KEY, partition) == rows
    print(
        json.dumps(
            {
                "kd_pipeline": kd_pipeline.__file__,
                "rows": int(rows),
                "files": len(sources),
                "file_bytes": sum(f.stat().st_size for f in sources),
                "publish_seconds": publishes,
                "read_seconds": reads,
            }
        )
    )


# ---- reporting ------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio_row(name: str, per_lake: dict[str, list[float]], unit: str = "s") -> dict[str, Any]:
    """Medians per lake, and each lake's ratio to the baseline's median."""
    medians = {lake: median(values) for lake, values in per_lake.items()}
    base = medians["baseline"]
    return {
        "measure": name,
        "median": medians,
        "ratio": {lake: m / base if base else float("nan") for lake, m in medians.items()},
        "unit": unit,
        "n": min(len(values) for values in per_lake.values()),
    }


def summarise(
    runs: list[dict[str, Any]], lakes: list[str], main_runs: int = 0
) -> list[dict[str, Any]]:
    """One row per measure: medians per lake and the ratios lake / baseline."""

    def values(phase: str, pick) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {lake: [] for lake in lakes}
        for run in runs:
            if run["phase"] == phase:
                value = pick(run)
                if value is not None:
                    out[run["lake"]].append(value)
        return out

    rows = []
    if any(r["phase"] == "main" for r in runs):
        which = f"first {main_runs} runs" if main_runs else "all runs"
        rows.append(ratio_row(f"main job ({which}), wall", values("main", lambda r: r["seconds"])))
        step_sum = values("main", lambda r: sum(r["steps"].values()))
        rows.append(ratio_row("main job, sum of step times", step_sum))
    if any(r["phase"] == "big" for r in runs):
        rows.append(ratio_row("big partition run, wall", values("big", lambda r: r["seconds"])))
        steps = sorted({k for r in runs if r["phase"] == "big" for k in r["steps"]})
        for step in steps:
            rows.append(
                ratio_row(f"  step {step}", values("big", lambda r, s=step: r["steps"].get(s)))
            )
        publish: dict[str, list[float]] = {lake: [] for lake in lakes}
        reads: dict[str, list[float]] = {lake: [] for lake in lakes}
        for run in runs:
            if run["phase"] == "big":
                publish[run["lake"]].extend(run["publish"]["publish_seconds"])
                reads[run["lake"]].extend(run["publish"]["read_seconds"])
        rows.append(ratio_row("publish of the partition (isolated)", publish))
        rows.append(ratio_row("lake reads before a write (isolated)", reads))
    for phase in ("main", "big"):
        if any(r["phase"] == phase for r in runs):
            rows.append(
                ratio_row(
                    f"{phase}: lake bytes / upstream bytes",
                    values(phase, lambda r: r["lake_bytes"]["total"] / r["upstream_bytes"]),
                    unit="x",
                )
            )
    return rows


def print_table(rows: list[dict[str, Any]], lakes: list[str]) -> None:
    others = [lake for lake in lakes if lake != "baseline"]
    width = max(10, *(len(lake) for lake in lakes))
    header = "".join(f" {lake:>{width}}" for lake in lakes)
    header += "".join(f" {lake + '/base':>{width + 5}}" for lake in others)
    print(f"{'measure':<40}{header}  n")
    for row in rows:
        if row["unit"] == "x":
            cells = "".join(f" {row['median'][lake]:>{width}.3f}" for lake in lakes)
        else:
            cells = "".join(f" {row['median'][lake]:>{width - 1}.2f}s" for lake in lakes)
        cells += "".join(f" {row['ratio'][lake]:>{width + 4}.2f}x" for lake in others)
        flag = ""
        over = [lake for lake in others if row["ratio"][lake] > TARGET]
        if row["unit"] == "s" and over and not row["measure"].startswith("  "):
            flag = f"  > {TARGET}x: {', '.join(over)}"
        print(f"{row['measure']:<40}{cells}  {row['n']}{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--baseline", default="fa98ff9", help="the commit of the previous lake")
    parser.add_argument("--only", default="main,big", help="phases: main, big (default both)")
    parser.add_argument("--keep", action="store_true", help="keep the data homes")
    parser.add_argument(
        "--main-runs",
        type=int,
        default=0,
        help="time only the main job's first N runs (LightOn partitions); 0 = all (default)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another code tree to measure alongside (e.g. a DuckLake lake with a fix)",
    )
    parser.add_argument("--publish-child", help=argparse.SUPPRESS)
    parser.add_argument("--cli-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish_child:
        publish_child(json.loads(args.publish_child))
        return 0
    if args.cli_child:
        return cli_child(json.loads(args.cli_child))

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": baseline_tree(workdir, args.baseline), "ducklake": REPO}
    for extra in args.tree:
        name, _, path = extra.partition("=")
        trees[name] = Path(path).resolve()
    lakes = list(trees)
    imports = {lake: check_tree(tree) for lake, tree in trees.items()}
    for lake, found in imports.items():
        print(f"{lake}: kd_pipeline {found['kd_pipeline']}, duckdb {found['duckdb']}")
        if found["ducklake"] == (lake == "baseline"):
            sys.exit(f"{lake}: the tree {trees[lake]} has the other lake's code")
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    mirror = big_mirror(workdir, args.rows) if "big" in phases else None
    print(f"cores {os.cpu_count()}, load {os.getloadavg()}, workdir {workdir}", flush=True)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"lake-{stamp}.json"
    report: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "main_runs": args.main_runs or "all",
        "baseline_commit": args.baseline,
        "trees": {lake: str(tree) for lake, tree in trees.items()},
        "imports": imports,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": [],
    }

    def save() -> None:  # after every run, so a stopped bench keeps what it measured
        out.write_text(json.dumps(report, indent=2, default=str))

    runs: list[dict[str, Any]] = report["runs"]
    for phase in phases:
        for number in range(args.repeat):
            for lake in lakes:
                home = fresh_home(workdir, f"{phase}-{lake}-{number}")
                ducklake = imports[lake]["ducklake"]
                if phase == "main":
                    result = measure_main(lake, trees[lake], ducklake, home, args.main_runs)
                else:
                    result = measure_big(lake, trees[lake], ducklake, home, mirror)
                result.update(phase=phase, lake=lake, repeat=number)
                runs.append(result)
                save()
                extra = ""
                if "publish" in result:
                    extra = ", publish " + ", ".join(
                        f"{s:.2f}" for s in result["publish"]["publish_seconds"]
                    )
                print(
                    f"{phase} #{number} {lake:>8}: {result['seconds']:7.1f} s wall (load before "
                    f"{result['load']:.1f}), lake {result['lake_bytes']['total'] / 2**20:.1f} MiB"
                    f" / upstream {result['upstream_bytes'] / 2**20:.1f} MiB{extra}",
                    flush=True,
                )
                if not args.keep:
                    shutil.rmtree(home, ignore_errors=True)

    report["summary"] = summarise(runs, lakes, args.main_runs)
    print()
    print_table(report["summary"], lakes)
    report["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime at the end: {report['uptime_end']}")
    save()
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
