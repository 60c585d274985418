"""A cluster on one machine, for real (issue 15, acceptance).

A real PostgreSQL server is both the DuckLake catalog and Dagster's instance storage; moto's
S3 server on loopback is the data path (`KD_PIPELINE_LAKE=s3://...`). The Dagster daemon
(QueuedRunCoordinator, DefaultRunLauncher) launches 12 queued runs of `lighton_partitions`,
at most 4 at once. The step writing the big partition is SIGKILLed mid-write and that
partition re-run; meanwhile another process reads the catalog over and over. At the end:
every partition published exactly once with the right rows, every file the catalog
references exists in the bucket, and the reader only ever saw committed states.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS
from kd_pipeline.lake import Lake
from kd_pipeline.settings import CatalogChoice
from kd_pipeline_tests.helpers import lighton_repo, pairs, submit_partition_run, write_pairs
from kd_pipeline_tests.servers import PostgresServer, S3Server
from kd_pipeline_tests.test_reliability import big_mirror

ROOT = Path(__file__).resolve().parent.parent
BIG = "agnews"  # the partition whose writer is killed
BIG_ROWS = 1_000_000
SMALL = [c for c in LIGHTON_CONFIGS if c != BIG][:11]
PARTITIONS = [BIG, *SMALL]
RUNS_AT_ONCE = 4
JOB = "lighton_partitions"
LOCATION = "kd_pipeline"
ASSETS = ("raw", "recommended", "top35", "similarity_3")


# ---- the reader process -------------------------------------------------------------------
def read_catalog_until_stopped(
    root: str, catalog: CatalogChoice, env: dict[str, str], out: str, stop: Any
) -> None:
    """In its own process: attach the catalog read-only, count lighton.raw per partition,
    append what it saw (or the error) to `out` as one JSON line; again until `stop` is set."""
    os.environ.update(env)
    lake = Lake(root, catalog)
    with open(out, "a") as log:
        while not stop.is_set():
            seen: dict[str, Any] = {"t": time.time()}
            try:
                with lake.connect(read_only=True) as con:
                    rows = con.execute(
                        "SELECT partition, count(*) FROM lighton.raw GROUP BY ALL"
                    ).fetchall()
                    seen["counts"] = {p: int(n) for p, n in rows}
            except duckdb.CatalogException as exc:
                if "lighton" not in str(exc) or "does not exist" not in str(exc):
                    seen["error"] = f"{type(exc).__name__}: {exc}"
                else:
                    seen["counts"] = {}  # nothing published yet
            except Exception as exc:  # every other error is a finding
                seen["error"] = f"{type(exc).__name__}: {exc}"
            log.write(json.dumps(seen) + "\n")
            log.flush()
            time.sleep(0.5)


# ---- set-up ---------------------------------------------------------------------------------
def upstream_counts(mirror: Path) -> dict[str, dict[str, int]]:
    """Per partition, the rows lighton/raw and lighton/recommended must have, counted from
    the upstream files (recommended = drop is false and not a duplicate, the recipe's
    rule in recipes/lighton_filters.yaml)."""
    expected: dict[str, dict[str, int]] = {}
    for config in PARTITIONS:
        files = str(lighton_repo(mirror) / config / "*.parquet")
        raw, recommended = duckdb.execute(
            'SELECT count(*), count(*) FILTER (WHERE NOT coalesce("drop", false) '
            "AND duplicate IS NULL) FROM read_parquet($files)",
            {"files": files},
        ).fetchone()
        expected[config] = {"raw": int(raw), "recommended": int(recommended)}
    return expected


def instance_yaml() -> str:
    """deploy/dagster-instance.yaml with this machine's launcher and limits: the storage
    section as shipped (its `env:` values set by `pg_environment`), DefaultRunLauncher
    instead of Kubernetes, 4 runs and 4 `duckdb` slots at once."""
    config = yaml.safe_load((ROOT / "deploy" / "dagster-instance.yaml").read_text())
    config["run_launcher"] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
    config["concurrency"]["runs"]["max_concurrent_runs"] = RUNS_AT_ONCE
    config["concurrency"]["pools"]["default_limit"] = RUNS_AT_ONCE
    return yaml.safe_dump(config)


def pg_environment(pg: PostgresServer, db: str) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_DB": db,
        "DAGSTER_PG_USERNAME": pg.user,
        "DAGSTER_PG_PASSWORD": "unused",  # trust authentication on loopback
    }


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group the test started (the daemon, its code server, run workers),
    SIGKILL if it has not ended after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)
    return found


# Each step in a process forked from a server that has imported dagster already (the
# default, `spawn`, imports it again for every step: seconds each on a busy machine).
RUN_CONFIG = {"execution": {"config": {"multiprocess": {"start_method": {"forkserver": {}}}}}}


@contextlib.contextmanager
def code_location(instance: dg.DagsterInstance, workspace: Path) -> Iterator[Any]:
    """The workspace's code location as the daemon loads it (one gRPC code server), to
    submit runs and stop sensors from this process as the UI would."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    target = WorkspaceFileTarget(paths=[str(workspace)])
    with WorkspaceProcessContext(instance, target) as context:
        yield context.create_request_context()


def stop_sensor(instance: dg.DagsterInstance, workspace: Any, name: str) -> None:
    """Stop a sensor that is on by default (the declarative automation would add runs of
    its own to the queue; this test audits the runs it submits)."""
    repo = next(iter(workspace.get_code_location(LOCATION).get_repositories().values()))
    sensor = repo.get_sensor(name)
    instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)


def submit_run(instance: dg.DagsterInstance, workspace: Any, partition: str) -> str:
    """Queue one run of JOB for `partition` (what the UI's "Launch run" does under a
    QueuedRunCoordinator); returns its run id."""
    return submit_partition_run(instance, workspace, LOCATION, JOB, partition, RUN_CONFIG)


# ---- the test -------------------------------------------------------------------------------
def test_a_cluster_on_one_machine(
    tmp_path: Path,
    postgres_server: PostgresServer,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    began = time.monotonic()
    timings: dict[str, float] = {}
    tag = secrets.token_hex(3)
    mirror = tmp_path / "mirror"
    big_mirror(mirror, BIG_ROWS, "cluster")
    for number, config in enumerate(SMALL):
        write_pairs(lighton_repo(mirror) / config / "train-0.parquet", pairs(30 + 11 * number))
    expected = upstream_counts(mirror)

    catalog = CatalogChoice("postgres", postgres_server.create_database(f"kd_lake_{tag}"))
    dagster_db = f"kd_dagster_{tag}"
    postgres_server.create_database(dagster_db)
    bucket = f"kd-cluster-{tag}"
    root = s3_server.create_bucket(bucket) + "/lake"

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml())
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "kd_pipeline.definitions",
                            "working_directory": str(ROOT),
                            "location_name": LOCATION,
                        }
                    }
                ]
            }
        )
    )
    settings_env = {
        **s3_server.environment(),
        **pg_environment(postgres_server, dagster_db),
        "KD_PIPELINE_HOME": str(tmp_path / "kd_home"),
        "KD_PIPELINE_LAKE": root,
        "KD_PIPELINE_CATALOG": f"postgres:{catalog.target}",
        "KD_PIPELINE_MIRROR": str(mirror),
        "KD_PIPELINE_DUCKDB_THREADS": "1",
        "DAGSTER_HOME": str(home),
    }
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, **settings_env}
    lake = Lake(root, catalog)
    with lake.connect():
        pass  # the catalog's tables exist before the reader's first read-only attach

    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        workspace = stack.enter_context(code_location(instance, home / "workspace.yaml"))
        stop_sensor(instance, workspace, "kd_automation")
        submitted = time.monotonic()
        first_runs = [submit_run(instance, workspace, partition) for partition in PARTITIONS]
        timings["submit"] = time.monotonic() - submitted

        spawn = multiprocessing.get_context("spawn")
        stop_reading = spawn.Event()
        reads_log = tmp_path / "reads.jsonl"
        reader = spawn.Process(
            target=read_catalog_until_stopped,
            args=(root, catalog, settings_env, str(reads_log), stop_reading),
        )
        reader.start()
        stack.callback(reader.join, 30)
        stack.callback(stop_reading.set)
        daemon_log = stack.enter_context(open(tmp_path / "daemon.log", "w"))
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=home,
            env=env,
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers are in its group
        )
        stack.callback(stop_process_group, daemon)
        started_at_once = []

        def runs(*statuses: dg.DagsterRunStatus) -> list[dg.DagsterRun]:
            filters = dg.RunsFilter(statuses=list(statuses)) if statuses else None
            return instance.get_runs(filters=filters)

        def poll() -> list[dg.DagsterRun]:
            assert daemon.poll() is None, "the daemon exited"
            started = runs(dg.DagsterRunStatus.STARTED)
            started_at_once.append(len(started))
            assert len(started) <= RUNS_AT_ONCE, [r.tags for r in started]
            return started

        # The big run's raw step, mid-write: its Parquet is being written in staging.
        def big_writer() -> tuple[dg.DagsterRun, int] | None:
            for run in poll():
                if run.tags.get("dagster/partition") != BIG:
                    continue
                for record in instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.STEP_START
                ).records:
                    event = record.event_log_entry.dagster_event
                    if event is not None and event.step_key == "lighton__raw":
                        return run, int(event.pid)
            return None

        big_run, writer = wait_for(big_writer, 300, "the big run's raw step to start")
        staging = tmp_path / "kd_home" / "lake-work" / ".staging" / "data" / "lighton"
        partial = staging / "raw" / f"partition={BIG}"

        def staged_bytes() -> int:
            poll()
            return sum(f.stat().st_size for f in partial.rglob("*.parquet") if f.is_file())

        # at least one row group flushed, the file not finished (the step is still running)
        wait_for(lambda: staged_bytes() >= 1 << 20, 300, "the big partition's Parquet to grow",
                 every=0.1)  # fmt: skip
        written = staged_bytes()
        os.kill(writer, signal.SIGKILL)
        timings["kill"] = time.monotonic() - submitted

        def finished() -> bool:
            poll()
            return all(r.is_finished for r in runs())

        wait_for(finished, 1500, "every queued run to finish")
        statuses = {r.tags["dagster/partition"]: r.status for r in runs()}
        assert statuses == {
            p: dg.DagsterRunStatus.FAILURE if p == BIG else dg.DagsterRunStatus.SUCCESS
            for p in PARTITIONS
        }
        assert {r.run_id for r in runs()} == set(first_runs)  # no other run was launched
        assert not lake.is_published(("lighton", "raw"), BIG)
        timings["runs"] = time.monotonic() - submitted

        rerun_began = time.monotonic()
        rerun_id = submit_run(instance, workspace, BIG)
        wait_for(finished, 600, "the re-run to finish")
        rerun = instance.get_run_by_id(rerun_id)
        assert rerun is not None and rerun.status == dg.DagsterRunStatus.SUCCESS, rerun
        assert rerun_id != big_run.run_id
        timings["rerun"] = time.monotonic() - rerun_began
        pool = instance.event_log_storage.get_concurrency_info("duckdb")
        assert pool.claimed_slots == [] and pool.pending_steps == []
        overlap = most_at_once(instance.get_run_records(dg.RunsFilter(run_ids=first_runs)))

    # ---- the audit ------------------------------------------------------------------------
    with lake.connect(read_only=True) as con:
        publications = con.execute(
            "SELECT asset, partition, rows, location FROM publications WHERE asset LIKE 'lighton/%'"
        ).fetchall()
        commits = con.execute(
            "SELECT commit_message, count(*) FROM ducklake_snapshots('lake') "
            "WHERE commit_message LIKE 'publish lighton/%' GROUP BY ALL"
        ).fetchall()
        in_tables = {
            name: dict(
                con.execute(
                    f"SELECT partition, count(*) FROM lighton.{name} GROUP BY ALL"
                ).fetchall()
            )
            for name in ASSETS
        }
        referenced = {
            path
            for name in ASSETS
            for (path,) in con.execute(
                "SELECT data_file FROM ducklake_list_files('lake', $t, schema => 'lighton')",
                {"t": name},
            ).fetchall()
        }
    # every partition of every asset published exactly once (the killed run: never)
    assert sorted(commits) == sorted(
        (f"publish lighton/{name} [{p}]", 1) for name in ASSETS for p in PARTITIONS
    )
    assert sorted((a, p) for a, p, _, _ in publications) == sorted(
        (f"lighton/{name}", p) for name in ASSETS for p in PARTITIONS
    )
    registered = {(a, p): n for a, p, n, _ in publications}
    for name in ("raw", "recommended"):
        want = {p: expected[p][name] for p in PARTITIONS}
        assert in_tables[name] == want, name
        assert {p: registered[(f"lighton/{name}", p)] for p in PARTITIONS} == want, name
    # every file the catalog references is in the bucket
    in_bucket = {f"s3://{bucket}/{key}" for key in s3_server.list_keys(bucket)}
    assert referenced and referenced <= in_bucket, sorted(referenced - in_bucket)[:5]
    # DuckLake registers no file for a version without rows: the only objects the catalog
    # does not reference are the Parquet files of empty versions (nothing a killed run left)
    orphans = sorted(in_bucket - referenced)
    empty = [f"{root}/{location}/" for _, _, n, location in publications if n == 0]
    assert all(any(o.startswith(folder) for folder in empty) for o in orphans), orphans

    # the reader only ever saw committed states: a partition absent or whole
    reads = [json.loads(line) for line in reads_log.read_text().splitlines()]
    errors = [r["error"] for r in reads if "error" in r]
    assert not errors, errors[:5]
    final = {p: expected[p]["raw"] for p in PARTITIONS}
    torn = [r["counts"] for r in reads if any(final.get(p) != n for p, n in r["counts"].items())]
    assert not torn, torn[:5]
    states = {tuple(sorted(r["counts"])) for r in reads}
    assert len(states) >= 3, states  # it read while partitions were being published

    leftovers = [p for p in staging.glob("*/partition=*/*") if p.is_dir()]
    timings["total"] = time.monotonic() - began
    print(
        f"cluster: {len(PARTITIONS)} runs + 1 re-run; runs STARTED at once: max "
        f"{max(started_at_once)} over {len(started_at_once)} polls, {overlap} by the run "
        "records' start and end times "
        f"(polls per count: {sorted(collections.Counter(started_at_once).items())}); "
        f"killed the raw step of {BIG} (pid {writer}) after {written} bytes of staged Parquet; "
        f"reader: {len(reads)} reads, {len(states)} distinct sets of partitions, 0 torn; "
        f"{len(referenced)} files referenced, unreferenced in the bucket: {orphans}; "
        f"left in local staging: {sorted(str(p.relative_to(staging)) for p in leftovers)}; "
        "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
    )
    # The daemon ran runs side by side (how many of the 4 allowed overlap depends on how fast
    # the small partitions finish); never more than 4 (also asserted at every poll).
    assert 2 <= overlap <= RUNS_AT_ONCE, overlap


@pytest.mark.parametrize("form", ["{url}", "{url}/"], ids=["bare", "trailing-slash"])
def test_a_publish_uploads_and_reads_back_whatever_the_endpoint_form(
    form: str,
    tmp_path: Path,
    postgres_server: PostgresServer,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upload (pyarrow's S3 client) and DuckDB's reads take AWS_ENDPOINT_URL the same
    way: with or without a trailing slash, the version lands in the bucket and reads back
    through the catalog."""
    tag = secrets.token_hex(3)
    catalog = CatalogChoice("postgres", postgres_server.create_database(f"kd_lake_{tag}"))
    bucket = f"kd-endpoint-{tag}"
    root = s3_server.create_bucket(bucket) + "/lake"
    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", form.format(url=s3_server.endpoint_url))
    monkeypatch.setenv("KD_PIPELINE_HOME", str(tmp_path / "kd_home"))
    lake = Lake(root, catalog)
    with lake.stage(("lighton", "raw"), "quora") as staged:
        write_pairs(staged.path / "part-00000.parquet", pairs(25))
        published = lake.publish(staged, {"rows": 25})
    with lake.connect(read_only=True) as con:
        assert con.execute(
            "SELECT partition, count(*) FROM lighton.raw GROUP BY ALL"
        ).fetchall() == [("quora", 25)]
    key = f"{str(published.location).removeprefix(f's3://{bucket}/')}/part-00000.parquet"
    assert key in s3_server.list_keys(bucket)


def most_at_once(records: list) -> int:
    """The most runs whose [start, end] times overlap (a sweep over the run records)."""
    events = sorted(
        (time_, step)
        for record in records
        if record.start_time is not None and record.end_time is not None
        for time_, step in ((record.start_time, 1), (record.end_time, -1))
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most
