"""Operations of a deployment driven by the daemon: the daily lake maintenance, the ids
listing, a refused PostgreSQL catalog, asset keys that collide on one table, and runs whose
worker process died."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from kd_pipeline.lake import Lake
from kd_pipeline.selectors import SelectorError
from kd_pipeline_tests.helpers import submit_partition_run
from kd_pipeline_tests.test_lake import publish_ids, table_ids, write_rows

KEY = ("fam", "asset")
DAY = 86400.0
LOCATION = "kd_pipeline"
REPO_ROOT = Path(__file__).resolve().parents[1]


def backdate(path: Path, days: float) -> None:
    """Set a file's modification time `days` in the past (what a day's wait would do)."""
    then = time.time() - days * DAY
    os.utime(path, (then, then))


# ---- 1. the daily lake maintenance --------------------------------------------------------
def test_the_maintenance_job_expires_snapshots_and_deletes_only_old_orphans(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `lake_maintenance` job of the code location, run on its own (nothing publishes):
    an orphan file older than the retention goes, a young one (a writer still running) and
    every file a live snapshot references stay; a version superseded longer than the
    retention is expired with its files."""
    retention_s = 8
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", str(retention_s / DAY))
    from kd_pipeline.definitions import build_definitions

    job = build_definitions().get_job_def("lake_maintenance")
    lake = Lake(lake_dir)
    superseded = publish_ids(lake, KEY, "p1", [1, 2])
    current = publish_ids(lake, KEY, "p1", [3])
    other = publish_ids(lake, KEY, "p2", [4, 5])
    referenced = [*Path(current.location).glob("*.parquet"), *Path(other.location).glob("*.parq*")]
    for file in referenced:  # old, so only being referenced keeps them
        backdate(file, 2)
    partition = lake_dir / "data" / "fam" / "asset" / "partition=p1"
    old_orphan = partition / "20260101T000000Z-dead"
    old_orphan.mkdir()
    write_rows(old_orphan, [666])
    backdate(old_orphan / "part-00000.parquet", 2)
    time.sleep(retention_s + 1)  # the superseded snapshot is now older than the window
    assert list(Path(superseded.location).glob("*.parquet"))  # nothing expired it yet
    young_orphan = partition / "20260101T000001Z-writing"
    young_orphan.mkdir()
    write_rows(young_orphan, [777])

    with lake.connect(read_only=True) as con:
        (before,) = con.execute("SELECT count(*) FROM snapshots()").fetchone()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        said = [
            e.user_message for e in instance.all_logs(result.run_id) if "expired" in e.user_message
        ]
    assert result.success
    assert said == [
        f"lake {lake.root}: {before - 1} snapshot(s) expired and 1 orphan file(s) deleted, "
        f"older than {retention_s / DAY:g} day(s)"
    ]
    assert not (old_orphan / "part-00000.parquet").exists()
    assert (young_orphan / "part-00000.parquet").is_file()
    assert all(file.is_file() for file in referenced)
    assert not list(Path(superseded.location).glob("*.parquet"))  # expired with its files
    assert table_ids(lake, KEY) == [3, 4, 5]
    with lake.connect(read_only=True) as con:
        (live,) = con.execute("SELECT list(snapshot_id) FROM snapshots()").fetchone()
    assert live == [other.snapshot]  # the newest snapshot older than the window stays


def test_the_maintenance_schedule_runs_the_job_daily_and_is_on_by_default() -> None:
    from kd_pipeline.definitions import defs

    schedule = defs.get_schedule_def("lake_maintenance_daily")
    assert schedule.job_name == "lake_maintenance"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "15 4 * * *"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.job_name in (None, "lake_maintenance")


# ---- 2. `kd-pipeline ids` counts configs, not configs and aliases -------------------------
def test_ids_counts_the_configs_and_lists_the_aliases_apart() -> None:
    """73 configs (what `ids --names` lists) and 3 aliases, each with its config; an alias
    still selects its config, and a misspelled alias is suggested like a config."""
    from kd_pipeline.families.lighton_configs import LIGHTON_CONFIG_ALIASES, LIGHTON_CONFIGS

    listing = subprocess.run(
        [str(Path(sys.executable).parent / "kd-pipeline"), "ids"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (line,) = [x.strip() for x in listing.splitlines() if x.strip().startswith("name=<")]
    assert len(LIGHTON_CONFIGS) == 73 and len(LIGHTON_CONFIG_ALIASES) == 3
    assert line.startswith("name=<one of the 73 configs `kd-pipeline ids --names` lists> or ")
    assert "76" not in line
    for alias, config in LIGHTON_CONFIG_ALIASES.items():
        assert f"{alias} = {config}" in line
    from kd_pipeline.prepare import registry

    axis = registry()["ai.lighton.embeddings_pre_training"].axes[0]
    assert axis.parse("fw_edu") == "fw_edu" and axis.parse("fw-edu") == "fw-edu"
    with pytest.raises(SelectorError, match=r"did you mean 'hlp_wikipedia_cm'\?.*the configs"):
        axis.parse("hlp_wikipedia_cmx")


# ---- 3. a refused catalog is one readable line --------------------------------------------
def kd_pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "kd-pipeline"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def refused_catalog_line(tmp_path: Path, catalog: str) -> str:
    """The one stderr line of `kd-pipeline sql` (exit 2) with KD_PIPELINE_CATALOG=catalog."""
    env = {
        **os.environ,
        "KD_PIPELINE_HOME": str(tmp_path / "home"),
        "KD_PIPELINE_LAKE": str(tmp_path / "lake"),
        "KD_PIPELINE_CATALOG": catalog,
    }
    proc = kd_pipeline(env, "sql", "SELECT 1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize(
    ("wrong", "cause"),
    [
        ("port", 'connection to server at "127.0.0.1", port 1 failed: Connection refused; '),
        ("dbname", 'failed: FATAL: database "no_such_db" does not exist'),
        ("user", 'failed: FATAL: role "no_such_role" does not exist'),
    ],
)
def test_a_refused_postgres_catalog_is_one_readable_line_naming_the_setting(
    postgres_server, tmp_path: Path, wrong: str, cause: str
) -> None:
    """A real PostgreSQL refusing the catalog (wrong port, database or user): the command
    exits 2 with one line, `KD_PIPELINE_CATALOG: cannot open the lake catalog <value>:
    <libpq's reason>`, the connection string named once, none of DuckDB's wrapping."""
    postgres_server.create_database(f"kd_ops_{wrong}")
    fields = {
        "dbname": f"kd_ops_{wrong}",
        "host": "127.0.0.1",
        "port": str(postgres_server.port),
        "user": postgres_server.user,
    }
    fields[wrong] = {"port": "1", "dbname": "no_such_db", "user": "no_such_role"}[wrong]
    target = " ".join(f"{k}={v}" for k, v in fields.items())
    line = refused_catalog_line(tmp_path, f"postgres:{target}")
    prefix = f"kd-pipeline: KD_PIPELINE_CATALOG: cannot open the lake catalog postgres:{target}: "
    assert line.startswith(prefix), line
    assert cause in line[len(prefix) :]
    assert line.count(target) == 1
    assert "Failed to attach" not in line and "IO Error" not in line


def test_an_unopenable_sqlite_catalog_is_one_readable_line_too(tmp_path: Path) -> None:
    """The sibling on SQLite: a catalog file that is not a database names the setting and
    SQLite's reason, without DuckLake's 'Failed to probe' wrapping and its probe query."""
    garbage = tmp_path / "catalog.sqlite"
    garbage.write_bytes(b"not a database\n" * 512)
    line = refused_catalog_line(tmp_path, f"sqlite:{garbage}")
    assert line.startswith(
        f"kd-pipeline: KD_PIPELINE_CATALOG: cannot open the lake catalog sqlite:{garbage}: "
    ), line
    assert line.endswith(f"sqlite:{garbage}: file is not a database"), line


# ---- 4. asset keys that would be one lake table -------------------------------------------
def recipe(name: str) -> dg.AssetsDefinition:
    """A filter recipe asset built by the real factory, as an entry `name:` in
    lighton_filters.yaml makes it."""
    from kd_pipeline.recipes.factory import build_filter_asset
    from kd_pipeline.recipes.filters import FilterKnobs
    from kd_pipeline.recipes.specs import FilterSpec

    return build_filter_asset(FilterSpec(name, f"recipe {name}", FilterKnobs(min_similarity=2.0)))


def test_a_recipe_whose_key_reads_as_an_existing_table_is_refused_when_the_definitions_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`lighton/similarity-3` next to `lighton/similarity_3`: both would be the table
    `lighton.similarity_3` and replace each other's rows; the code location refuses to load
    with one line naming both keys and the table. A distinct name loads."""
    import kd_pipeline.defs.recipes as recipes_module
    from kd_pipeline.definitions import TableNameCollision, build_definitions

    declared = recipes_module.defs
    monkeypatch.setattr(
        recipes_module, "defs", dg.Definitions.merge(declared, dg.Definitions([recipe("sim-2")]))
    )
    loaded = build_definitions().resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey(["lighton", "sim-2"]) in loaded
    for colliding in ("similarity-3", "Similarity_3"):
        extra = dg.Definitions([recipe(colliding)])
        monkeypatch.setattr(recipes_module, "defs", dg.Definitions.merge(declared, extra))
        with pytest.raises(TableNameCollision) as refused:
            build_definitions()
        assert str(refused.value) == (
            f"asset keys lighton/{colliding} and lighton/similarity_3 are both the lake table "
            "lighton.similarity_3: rename one of them"
        )


def test_keys_colliding_in_any_schema_are_each_named() -> None:
    """The same rule for every kind of key: a schema part (`text-x/a`, `text_x/a`), an
    export's last part (`exports/splade/x`, `exports/pylate/x` are both `exports.x`); one
    line per collision, distinct keys pass."""
    from kd_pipeline.definitions import TableNameCollision, refuse_table_name_collisions

    keys = [
        dg.AssetKey(["text-x", "a"]),
        dg.AssetKey(["text_x", "a"]),
        dg.AssetKey(["exports", "splade", "x"]),
        dg.AssetKey(["exports", "pylate", "x"]),
        dg.AssetKey(["exports", "pylate", "y"]),
        dg.AssetKey(["text_x", "a", "b"]),
    ]
    with pytest.raises(TableNameCollision) as refused:
        refuse_table_name_collisions(keys)
    assert str(refused.value).splitlines() == [
        "asset keys exports/pylate/x and exports/splade/x are both the lake table exports.x: "
        "rename one of them",
        "asset keys text-x/a and text_x/a are both the lake table text_x.a: rename one of them",
    ]
    refuse_table_name_collisions(
        [k for k in keys if k.path[0] != "text-x" and k.path[1] != "splade"]
    )


# ---- 5. runs the daemon launched, whose worker died ---------------------------------------
def submit(instance: dg.DagsterInstance, workspace: Any, job_name: str, partition: str) -> str:
    """Queue one run of a job of the code location for `partition`, as the UI's "Launch run"
    does (the daemon's QueuedRunCoordinator launches it); returns its run id."""
    return submit_partition_run(instance, workspace, LOCATION, job_name, partition)


def test_a_daemon_launched_run_whose_worker_dies_is_marked_failed(
    tmp_path: Path, postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared deployment's instance (PostgreSQL storage, as several machines share it;
    the DefaultRunLauncher, whose workers Dagster's run monitoring cannot check) and the
    real daemon. A run waits on the `duckdb` pool (its one slot held):

    1. its worker SIGKILLed alone: the code server that launched it fails it (Dagster),
       and the daemon's monitoring frees the pool claim the run left
       (`free_slots_after_run_end_seconds` of the shipped instance file);
    2. the whole daemon group SIGKILLed with a run in flight (machine or container lost):
       nothing is left to notice; the next daemon's `release_dead_runs` sensor fails it and
       frees its pool claim, because the run worker tagged the run with its host and pid
       (`tagging_executor`) -- without those tags a run on shared storage is never judged.
    """
    from kd_pipeline.instance import HOST_TAG, PID_TAG, run_process_id
    from kd_pipeline_tests.test_cluster import (
        code_location,
        instance_yaml,
        pg_environment,
        stop_process_group,
        stop_sensor,
        wait_for,
    )

    dagster_db = f"kd_ops_dagster_{os.getpid()}"
    postgres_server.create_database(dagster_db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load(instance_yaml())
    config["concurrency"]["pools"]["default_limit"] = 1
    # launch runs whose step must wait on a full pool (the queue holds them back otherwise)
    config["concurrency"]["pools"]["op_granularity_run_buffer"] = 4
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "kd_pipeline.definitions",
                            "working_directory": str(REPO_ROOT),
                            "location_name": LOCATION,
                        }
                    }
                ]
            }
        )
    )
    settings_env = {
        **pg_environment(postgres_server, dagster_db),
        "KD_PIPELINE_HOME": str(tmp_path / "kd_home"),
        "KD_PIPELINE_LAKE": str(tmp_path / "lake"),
        "DAGSTER_HOME": str(home),
    }
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, **settings_env}

    def stop_if_running(daemon: subprocess.Popen[bytes]) -> None:
        if daemon.poll() is None:
            stop_process_group(daemon)

    def start_daemon(log: Path) -> subprocess.Popen[bytes]:
        with open(log, "w") as out:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run"],
                cwd=home,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its code server and run workers are in its group
            )

    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        workspace = stack.enter_context(code_location(instance, home / "workspace.yaml"))
        stop_sensor(instance, workspace, "kd_automation")  # its runs would join the queue
        storage = instance.event_log_storage
        storage.set_concurrency_slots("duckdb", 1)
        assert storage.claim_concurrency_slot("duckdb", "holder", "step").is_claimed
        stack.callback(storage.free_concurrency_slot_for_step, "holder", "step")

        def waiting_on_the_pool(run_id: str) -> dg.DagsterRun | None:
            run = instance.get_run_by_id(run_id)
            pending = storage.get_concurrency_info("duckdb").pending_steps
            waiting = any(p.run_id == run_id for p in pending)
            ready = run.status == dg.DagsterRunStatus.STARTED and waiting
            return run if ready and run_process_id(instance, run) else None

        def status(run_id: str) -> dg.DagsterRunStatus:
            return instance.get_run_by_id(run_id).status

        daemon = start_daemon(tmp_path / "daemon-1.log")
        stack.callback(stop_if_running, daemon)
        # 1. the worker alone
        first = submit(instance, workspace, "lighton_raw_refresh", "quora")
        run = wait_for(lambda: waiting_on_the_pool(first), 180, "the first run to wait")
        worker = run_process_id(instance, run)
        assert run.tags[HOST_TAG] == socket.gethostname() and run.tags[PID_TAG] == str(worker)
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: status(first) == dg.DagsterRunStatus.FAILURE, 60, "the code server")
        print(f"worker SIGKILLed alone: run FAILURE after {time.monotonic() - killed_at:.1f}s")

        # 2. the daemon, its code server and the run worker, all at once
        second = submit(instance, workspace, "lighton_raw_refresh", "npr")
        run = wait_for(lambda: waiting_on_the_pool(second), 180, "the second run to wait")
        worker = run_process_id(instance, run)
        assert run.tags[HOST_TAG] == socket.gethostname() and run.tags[PID_TAG] == str(worker)
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
        killed_at = time.monotonic()
        wait_for(lambda: not _alive(worker), 30, "the worker to be gone")
        time.sleep(5)
        assert status(second) == dg.DagsterRunStatus.STARTED  # no process left to notice
        daemon = start_daemon(tmp_path / "daemon-2.log")
        stack.callback(stop_if_running, daemon)
        wait_for(lambda: status(second) == dg.DagsterRunStatus.FAILURE, 240, "release_dead_runs")
        print(f"daemon group SIGKILLed: run FAILURE after {time.monotonic() - killed_at:.1f}s")

        def pending_claims() -> list[str]:
            return [p.run_id for p in storage.get_concurrency_info("duckdb").pending_steps]

        # the first run's claim, which the code server's failure left: freed by Dagster's
        # monitoring (free_slots_after_run_end_seconds); the second's by release_dead_runs
        assert second not in pending_claims()
        wait_for(lambda: pending_claims() == ["holder"], 150, "the first run's claim to go")
        records = instance.get_records_for_run(second, of_type=dg.DagsterEventType.RUN_FAILURE)
        (failure,) = records.records
        assert f"the process running this run (pid {worker}) is gone" in str(
            failure.event_log_entry.dagster_event.message
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_maintenance_job_fails_in_one_line_on_a_catalog_it_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily maintenance on a catalog that is no database: the run fails with one line
    naming the lake and the catalog setting (a dg.Failure), not an engine traceback."""
    from kd_pipeline.definitions import build_definitions

    bad = tmp_path / "catalog.sqlite"
    bad.write_text("not a database")
    monkeypatch.setenv("KD_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KD_PIPELINE_CATALOG", f"sqlite:{bad}")
    job = build_definitions().get_job_def("lake_maintenance")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("clean_lake")
    assert failure is not None
    assert failure.user_failure_data is not None
    (line,) = failure.user_failure_data.description.splitlines()
    assert line.startswith("lake ") and "maintenance failed: KD_PIPELINE_CATALOG" in line
    assert "file is not a database" in line
