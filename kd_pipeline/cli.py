"""The `kd-pipeline` command line: write the sample mirror, materialise the pipeline.

Every materialisation goes through Dagster with the persistent instance (DAGSTER_HOME), so
runs started here show up in `dagster dev` like runs started from the UI. Progress goes
to stderr; the last line of stdout is the path a script wants. Before any command runs,
every `KD_PIPELINE_*` setting is validated: a bad one is one line naming the variable, its
value and what is allowed, and exit code 2. SIGINT/SIGTERM/SIGHUP stop any command cleanly.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kd_pipeline import settings
from kd_pipeline.ducklake import CatalogUnreachable
from kd_pipeline.instance import (
    STOPPING,
    cli_run_tags,
    ensure_dagster_home,
    release_orphaned_runs,
    stop_cleanly_on_signals,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_sample(args: argparse.Namespace) -> int:
    from kd_pipeline.sample import write_sample_mirror

    out = Path(args.out).expanduser().resolve()
    write_sample_mirror(out, args.rows_per_config)
    print(out)
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, MAIN_JOBS, defs
    from kd_pipeline.families.lighton_configs import canonical_config_name
    from kd_pipeline.lake import Lake
    from kd_pipeline.main_job import (
        Step,
        default_runs_at_once,
        job_waits,
        main_job_steps,
        run_steps,
    )
    from kd_pipeline.prepare import QUIET_LOGS

    home = ensure_dagster_home()
    lake = Lake()
    with lake.connect():  # the catalog and the data path are reachable, before any run
        pass
    if args.partition:
        only = list(dict.fromkeys(canonical_config_name(p) for p in args.partition))
        steps = [Step(LIGHTON_PARTITIONED_JOB, p) for p in only]
    else:
        steps = main_job_steps(defs, MAIN_JOBS)
    waits = job_waits(defs, MAIN_JOBS)
    log(f"dagster instance: {home}")
    with dg.DagsterInstance.get() as instance:
        for run_id in release_orphaned_runs(instance):
            log(f"run {run_id[:8]}: its process is gone; marked failed, pool slots freed")
        at_once = args.runs_at_once or default_runs_at_once(instance, defs, MAIN_JOBS)
    log(f"{len(steps)} runs, {at_once} at a time")
    failed: list[str] = []
    started = time.monotonic()
    outcomes = run_steps(steps, waits, at_once, QUIET_LOGS, cli_run_tags)
    for number, outcome in enumerate(outcomes, 1):
        if STOPPING.is_set():  # the signal watcher reports and exits
            break
        status = "ok" if outcome.success else "FAILED"
        detail = f"run {outcome.run_id[:8]}" if outcome.run_id else outcome.error
        log(f"[{number}/{len(steps)}] {outcome.step.label}: {status} ({detail})")
        if not outcome.success:
            failed.append(outcome.step.label)
    if STOPPING.is_set():
        time.sleep(60)  # the signal watcher is canceling the runs; it exits the process
    lake.delete_orphaned_files()
    log(
        f"{len(steps) - len(failed)}/{len(steps)} runs succeeded in "
        f"{time.monotonic() - started:.0f}s; lake: {lake.root}; "
        f"catalog: {lake.catalog.describe()}"
    )
    if failed:
        log(f"failed: {', '.join(failed)} (see the runs in the Dagster UI)")
        return 1
    print(lake.root)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    import dagster as dg

    from kd_pipeline.lake import Lake
    from kd_pipeline.prepare import PrepareError, prepare
    from kd_pipeline.selectors import SelectorError

    ensure_dagster_home()
    try:
        with dg.DagsterInstance.get() as instance:
            path = prepare(args.selector, instance, Lake(settings.lake_root()), log)
    except (SelectorError, PrepareError) as exc:
        log(f"kd-pipeline prepare: {exc}")
        return 2
    print(path)
    return 0


def cmd_ids(args: argparse.Namespace) -> int:
    from kd_pipeline.prepare import describe_ids

    describe_ids(names=args.names)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one SQL query on the lake (attached read-only) and print the result."""
    import duckdb

    from kd_pipeline import ducklake, objectstore
    from kd_pipeline.lake import Lake

    lake = Lake()
    if lake.remote:  # an unreachable bucket is named as such, not as a lake not made yet
        objectstore.probe(str(lake.root))
    if lake.catalog.kind == "sqlite" and not Path(lake.catalog.target).is_file():
        log(f"kd-pipeline sql: no lake at {lake.root} yet (run `kd-pipeline materialize` first)")
        return 2
    try:
        with lake.connect(read_only=True) as con:
            relation = con.sql(args.query)
            if relation is None:
                return 0
            if args.csv:
                writer = csv.writer(sys.stdout, lineterminator="\n")
                writer.writerow(relation.columns)
                while batch := relation.fetchmany(10_000):
                    writer.writerows(batch)
            else:
                relation.show(max_rows=args.max_rows, max_width=10_000)
    except duckdb.Error as exc:
        log(f"kd-pipeline sql: {ducklake.first_line(exc)}")
        return 2
    return 0


def cmd_validate_splade(args: argparse.Namespace) -> int:
    """Judge a SPLADE folder with the export checks' rules: one line per violated rule."""
    import duckdb

    from kd_pipeline.checks.splade import LayoutError, validate_folder

    con = duckdb.connect()
    con.execute("SET threads = ?", [settings.duckdb_threads()])
    try:
        verdicts = validate_folder(
            con,
            Path(args.folder).expanduser(),
            scores=Path(args.scores).expanduser() if args.scores else None,
            splits=args.split or None,
        )
    except LayoutError as exc:
        log(f"kd-pipeline validate-splade: {exc}")
        return 2
    failed = [o for r, o in verdicts if r.blocking and not o.passed]
    for rule, outcome in verdicts:
        if not outcome.passed:
            print(("" if rule.blocking else "warning: ") + outcome.message())
    blocking = sum(r.blocking for r, _ in verdicts)
    warned = sum(not r.blocking and not o.passed for r, o in verdicts)
    log(
        f"{args.folder}: "
        + (f"INVALID, {len(failed)} of {blocking} rules violated" if failed else "valid")
        + (f" ({warned} warning(s))" if warned else "")
    )
    return 1 if failed else 0


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (else argparse's one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="write the deterministic sample mirror to a folder")
    sample.add_argument("--out", required=True, help="folder to write the mirror into")
    sample.add_argument(
        "--rows-per-config",
        type=int,
        default=None,
        help="rows per LightOn config (default: the embedded sample's size)",
    )
    sample.set_defaults(func=cmd_sample)

    mat = sub.add_parser("materialize", help="materialise every asset and check, all partitions")
    mat.add_argument(
        "--partition",
        action="append",
        default=[],
        help="only this LightOn config (repeatable; then the unions are skipped); "
        "default: the whole main job, every job over every partition",
    )
    mat.add_argument(
        "--runs-at-once",
        type=positive_int,
        default=None,
        help="runs executing at the same time (default: the instance's max_concurrent_runs, "
        "at most the duckdb pool's slots, from dagster.yaml; 1: one after another)",
    )
    mat.set_defaults(func=cmd_materialize)

    prep = sub.add_parser(
        "prepare",
        help="materialise one dataset variant by selector, print its published path",
        description="SELECTOR: id[key=value,...], e.g. "
        "'ai.lighton.embeddings_pre_training[name=fw-edu,filter_drop=false,top_percentile=0.35]'"
        " (see `kd-pipeline ids`). Reuses what is published; the last line of stdout is the path.",
    )
    prep.add_argument("selector")
    prep.set_defaults(func=cmd_prepare)

    ids = sub.add_parser("ids", help="list every dataset id and its knobs")
    ids.add_argument(
        "--names", action="store_true", help="list the LightOn config names (name=...) instead"
    )
    ids.set_defaults(func=cmd_ids)

    sql = sub.add_parser(
        "sql",
        help="query the lake (read-only), e.g. "
        "'SELECT count(*) FROM text.msmarco_passage_collection'",
        description="Tables: <family>.<name>, e.g. lighton.recommended (with a partition "
        "column), text.msmarco_passage_collection; views over the Parquet exports, e.g. "
        "exports.pointwise_denseon_lateon; `publications` (the current version of every "
        "asset partition and export). The lake of KD_PIPELINE_LAKE and KD_PIPELINE_CATALOG; "
        "time travel: ... FROM lighton.raw AT (VERSION => 12).",
    )
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown (default 40)")
    sql.add_argument("--csv", action="store_true", help="print CSV with a header (for scripts)")
    sql.set_defaults(func=cmd_sql)

    check = sub.add_parser(
        "validate-splade",
        help="check a SPLADE distillation folder (light-splade layout) against its rules",
        description="Exit 0 when every rule holds; else 1, with one line per violated rule "
        "naming the first offending ids (2: the folder is missing a file). Files may be "
        ".ndjson or .ndjson.gz; each path may be a file or a folder of such files.",
    )
    check.add_argument("folder", help="the folder holding train/ (and validation/)")
    check.add_argument(
        "--scores", help="the score file or folder (default: the one at the folder's root)"
    )
    check.add_argument(
        "--split",
        action="append",
        choices=["train", "validation"],
        help="only these splits (repeatable; default: train, and validation when present)",
    )
    check.set_defaults(func=cmd_validate_splade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = settings.settings_problems()
    if problems:
        for problem in problems:
            log(f"kd-pipeline: bad setting: {problem}")
        return 2
    if getattr(args, "rows_per_config", 0) is None:
        args.rows_per_config = settings.sample_rows_per_config()
    try:
        with stop_cleanly_on_signals(log):
            return args.func(args)
    except BrokenPipeError:
        # The reader of stdout left (`kd-pipeline ids | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (ValueError, OSError, RuntimeError) as exc:
        log(f"kd-pipeline: error: {exc}")
        return 2
    except CatalogUnreachable as exc:
        log(f"kd-pipeline: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
