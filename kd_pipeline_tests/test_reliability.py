"""The bad day, caused for real: runs killed mid-write, a full disk, parallel writers and a
reader browsing the catalog meanwhile. Every published partition must stay readable and
consistent with its manifest; reruns must succeed."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline.lake import MANIFEST_NAME, Lake
from kd_pipeline_tests.helpers import lighton_repo

ROOT = Path(__file__).resolve().parent.parent
ASSETS = [("lighton", name) for name in ("raw", "recommended", "top35", "similarity_3")]


def big_mirror(mirror: Path, rows: int, salt: str) -> None:
    """One config, agnews, with rows of ~300 characters of hard-to-compress text."""
    target = lighton_repo(mirror) / "agnews" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    duckdb.execute(
        "COPY (SELECT 'query ' || $salt || i AS query, "
        "md5($salt || i) || ' ' || md5(i || 'a') || ' ' || md5(i || 'b') || ' ' || "
        "md5(i || 'c') || ' ' || md5(i || 'd') || ' ' || md5(i || 'e') AS document, "
        '(i % 500) / 100.0 AS similarity, i % 3 = 0 AS "drop", '
        "CASE WHEN i % 11 = 0 THEN 0 END AS duplicate FROM range($rows) t(i)) "
        f"TO '{tmp}' (FORMAT parquet)",
        {"rows": rows, "salt": salt},
    )
    os.replace(tmp, target)


def env_for(tmp_path: Path, mirror: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "KD_PIPELINE_MIRROR": str(mirror), "DAGSTER_HOME": str(home)}


class Run:
    """A `kd-pipeline materialize` subprocess; its stderr goes to a file (no pipe to fill)."""

    def __init__(self, env: dict[str, str], partition: str = "agnews", **kwargs) -> None:
        self.log = Path(env["DAGSTER_HOME"]) / f"run-{time.monotonic_ns()}.log"
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", partition],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                **kwargs,
            )

    def wait(self, timeout: float = 900) -> int:
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.log.read_text()


def snapshot(lake: Lake, partition: str = "agnews") -> dict[tuple[str, str], str]:
    """Per published asset: a hash of its files (what a reader would read)."""
    state = {}
    for key in ASSETS:
        if lake.is_published(key, partition):
            folder = lake.published_path(key, partition)
            digest = hashlib.sha256()
            for part in sorted(folder.iterdir()):
                digest.update(part.name.encode() + part.read_bytes())
            state[key] = digest.hexdigest()
    return state


def assert_consistent(lake: Lake, partition: str = "agnews") -> None:
    """Every published version is whole: its Parquet row count equals its manifest's."""
    for key in ASSETS:
        if lake.is_published(key, partition):
            manifest = lake.manifest(key, partition)
            (rows,) = duckdb.execute(
                "SELECT count(*) FROM read_parquet($g)", {"g": lake.parquet_glob(key, partition)}
            ).fetchone()
            assert rows == manifest["rows"], (key, rows, manifest["rows"])


def test_sigkill_at_any_point_leaves_published_partitions_whole(tmp_path, lake_dir) -> None:
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 60_000, "v1")
    env = env_for(tmp_path, mirror)
    first = Run(env)
    assert first.wait() == 0, first.stderr()[-2000:]
    lake = Lake(lake_dir)
    good = snapshot(lake)
    assert len(good) == 4

    big_mirror(mirror, 70_000, "v2")  # a rerun publishes different data
    started = time.monotonic()
    warm = Run(env)  # timed warm (the first run also created the instance)
    assert warm.wait() == 0, warm.stderr()[-2000:]
    duration = time.monotonic() - started
    good = snapshot(lake)

    big_mirror(mirror, 60_000, "v3")
    outcomes = []
    for fraction in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        run = Run(env, start_new_session=True)
        time.sleep(duration * fraction)
        os.killpg(run.process.pid, signal.SIGKILL)
        run.wait(timeout=30)
        now = snapshot(lake)
        assert set(now) == set(good)  # nothing unpublished
        outcomes.append(sum(now[k] != good[k] for k in good))
        assert_consistent(lake)
        catalog = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
        assert catalog.execute("SELECT count(*) FROM lighton.raw").fetchone()[0] in (
            60_000,
            70_000,
        )
        catalog.close()

    final = Run(env)
    assert final.wait() == 0, final.stderr()[-2000:]
    assert_consistent(lake)
    assert lake.manifest(("lighton", "raw"), "agnews")["rows"] == 60_000
    for key in ASSETS:  # the rerun cleared what the killed runs left in staging
        staging = lake_dir / ".staging" / Path(*key) / "agnews"
        assert not any(staging.iterdir())
    print("assets replaced per kill point:", outcomes)
    assert outcomes[0] < 4  # the early kills did land mid-run


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failing_write_publishes_nothing(tmp_path, lake_dir) -> None:
    """A full disk, simulated by a file-size limit on the run's process."""
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 20_000, "small")
    env = env_for(tmp_path, mirror)
    assert Run(env).wait() == 0
    lake = Lake(lake_dir)
    good = snapshot(lake)

    big_mirror(mirror, 400_000, "large")  # ~40 MB of Parquet to write: past the limit
    run = Run(env, preexec_fn=_limit_file_size(8 * 1024 * 1024))
    assert run.wait() != 0
    assert snapshot(lake) == good
    assert_consistent(lake)
    assert lake.manifest(("lighton", "raw"), "agnews")["rows"] == 20_000
    assert Run(env).wait() == 0  # the disk has room again
    assert lake.manifest(("lighton", "raw"), "agnews")["rows"] == 400_000


def test_parallel_runs_and_a_catalog_reader(tmp_path, lake_dir) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    partitions = ["agnews", "npr", "quora", "fw2-jpn_Jpan"]
    errors: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        catalog = lake_dir / "catalog.duckdb"
        while not stop.is_set():
            if catalog.exists():
                try:
                    con = duckdb.connect(str(catalog), read_only=True)
                    try:
                        for partition, rows in con.execute(
                            "SELECT partition, count(*) FROM lighton.raw GROUP BY 1"
                        ).fetchall():
                            if rows != 200:
                                errors.append(f"torn read: {partition} has {rows} rows")
                        reads += 1
                    finally:
                        con.close()
                except duckdb.CatalogException:
                    pass  # the catalog exists but lighton.raw is not published yet
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        runs = [Run(env, p) for p in partitions]
        results = [(r.wait(), r.stderr()) for r in runs]
    finally:
        stop.set()
        thread.join()
    assert all(code == 0 for code, _ in results), [e[-1500:] for c, e in results if c]
    assert errors == []
    assert reads > 0
    lake = Lake(lake_dir)
    for partition in partitions:
        assert_consistent(lake, partition)


def test_a_partition_being_written_refuses_a_second_writer(tmp_path, lake_dir) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    lake = Lake(lake_dir)
    with lake.stage(("lighton", "raw"), "agnews"):  # another run holds the partition
        run = Run(env)
        code = run.wait()
    assert code == 1
    assert "lighton/raw/agnews is being written by another run" in run.stderr()
    assert not lake.is_published(("lighton", "raw"), "agnews")

    racers = [Run(env), Run(env)]
    outcomes = [(r.wait(), r.stderr()) for r in racers]
    # Per asset, one of the two writes it and the other is refused with a clear message
    # (both runs may each lose one step): never a torn or a doubly written partition.
    for code, err in outcomes:
        assert code == 0 or "being written by another run" in err, err[-2000:]
    assert all(lake.is_published(key, "agnews") for key in ASSETS)
    assert_consistent(lake)
    versions = lake_dir / ".versions" / "lighton" / "raw" / "agnews"
    assert (lake.published_path(("lighton", "raw"), "agnews") / MANIFEST_NAME).exists()
    assert len(list(versions.iterdir())) <= 2


def partitioned_job() -> dg.JobDefinition:
    from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs

    return defs.resolve_job_def(LIGHTON_PARTITIONED_JOB)


def test_multiprocess_executor_runs_recipes_in_parallel_processes(tmp_path, lake_dir) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(
            dg.reconstructable(partitioned_job),
            instance=instance,
            tags={"dagster/partition": "fw2-rus_Cyrl"},
            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
        )
        assert result.success
        pids = {e.pid for e in result.all_events if e.event_type_value == "STEP_START"}
    assert len(pids) == 4  # one process per step
    assert_consistent(Lake(lake_dir), "fw2-rus_Cyrl")


# ---- killed runs release their pool slots; signals stop commands (issue 13 item 7) --------
def pool_of_one(env: dict[str, str]) -> None:
    """The instance at DAGSTER_HOME with one duckdb slot: a slot a dead run keeps would
    block every later run forever."""
    (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text(
        "concurrency:\n  pools:\n    default_limit: 1\n    granularity: op\n"
        "telemetry:\n  enabled: false\n"
    )
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]):
        pass  # storage created here, not raced by the processes the test starts


def claimed_slots(env: dict[str, str]) -> list[str]:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        info = instance.event_log_storage.get_concurrency_info("duckdb")
        return [slot.run_id for slot in info.claimed_slots]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def small_config(mirror: Path, config: str = "quora") -> None:
    from kd_pipeline_tests.helpers import pairs, write_pairs

    write_pairs(lighton_repo(mirror) / config / "train-0.parquet", pairs(20))


def sigkilled_dagster_run(tmp_path: Path) -> tuple[dict[str, str], str]:
    """A `dagster asset materialize` of a big agnews, SIGKILLed while its step holds the only
    duckdb slot; returns the environment and the dead run's id (whose slot stays claimed)."""
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 1_500_000, "k")
    small_config(mirror)
    env = env_for(tmp_path, mirror)
    pool_of_one(env)
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m"]
    command += ["kd_pipeline.definitions", "--select", "lighton/raw", "--partition", "agnews"]
    with open(tmp_path / "dagster-cli.log", "w") as err:
        killed = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=err, stderr=err, start_new_session=True
        )
    try:
        wait_for(lambda: claimed_slots(env), 120, "the dagster run to claim the slot")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    (dead_run,) = claimed_slots(env)
    return env, dead_run


def test_a_sigkilled_dagster_cli_run_does_not_wedge_the_pool(tmp_path, lake_dir) -> None:
    """The next `kd-pipeline` command sees the killed run's process is gone, fails the run,
    frees the slot, and its own run finishes."""
    env, dead_run = sigkilled_dagster_run(tmp_path)
    follower = Run(env, partition="quora")
    assert follower.wait(timeout=300) == 0, follower.stderr()[-3000:]
    assert f"run {dead_run[:8]}: its process is gone" in follower.stderr()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
    assert claimed_slots(env) == []
    assert not Lake(lake_dir).is_published(("lighton", "raw"), "agnews")
    assert Lake(lake_dir).is_published(("lighton", "raw"), "quora")


def test_the_daemon_sensor_releases_dead_runs_too(tmp_path, lake_dir) -> None:
    """The same release from the `release_dead_runs` sensor (what `dagster dev`'s daemon
    runs every minute), so runs started from the UI or dagster's CLI are covered too; then
    another `dagster asset materialize` finishes."""
    from kd_pipeline.definitions import defs

    env, dead_run = sigkilled_dagster_run(tmp_path)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        sensor = defs.get_sensor_def("release_dead_runs")
        result = sensor(dg.build_sensor_context(instance=instance))
        assert "1 dead run(s) released" in str(result)
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
    assert claimed_slots(env) == []
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m"]
    command += ["kd_pipeline.definitions", "--select", "lighton/raw", "--partition", "quora"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigterm_and_sigint_stop_a_run_blocked_on_the_pool(tmp_path, lake_dir) -> None:
    """A `kd-pipeline materialize` waiting for a slot another (live) holder keeps stops on
    SIGTERM / SIGINT / SIGHUP within seconds: exit 143 / 130 / 129, its run canceled, no
    slot or pending claim left behind, nothing published."""
    mirror = tmp_path / "mirror"
    small_config(mirror)
    env = env_for(tmp_path, mirror)
    pool_of_one(env)
    Run(env, partition="quora").wait()  # creates the instance and slots
    lake = Lake(lake_dir)
    version = lake.manifest(("lighton", "raw"), "quora")["version"]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        storage = instance.event_log_storage
        assert storage.claim_concurrency_slot("duckdb", "holder", "step").is_claimed
        try:
            for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)):
                blocked = Run(env, partition="quora")
                wait_for(
                    lambda: storage.get_concurrency_info("duckdb").pending_step_count > 0,
                    120,
                    "the run to wait on the pool",
                )
                blocked.process.send_signal(sig)
                assert blocked.wait(timeout=20) == code, blocked.stderr()[-2000:]
                assert f"stopped by {sig.name}" in blocked.stderr()
                assert "FAILED" not in blocked.stderr()
                info = storage.get_concurrency_info("duckdb")
                assert [s.run_id for s in info.claimed_slots] == ["holder"]
                assert [p.run_id for p in info.pending_steps] == ["holder"]
        finally:
            storage.free_concurrency_slot_for_step("holder", "step")
        runs = instance.get_runs(limit=3)
        assert [r.status for r in runs] == [dg.DagsterRunStatus.CANCELED] * 3
    assert lake.manifest(("lighton", "raw"), "quora")["version"] == version


def test_a_killed_worker_fails_its_run_and_the_rest_run_on_a_new_pool(tmp_path, lake_dir) -> None:
    """SIGKILL of the worker executing a big partition (what the OOM killer does): its run
    ends FAILURE with its pool slot freed, the partitions not started yet run on a new pool
    of workers and are published, the command exits 1 naming only the killed partition."""
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 1_500_000, "w")
    small_config(mirror, "quora")
    small_config(mirror, "npr")
    env = env_for(tmp_path, mirror)
    pool_of_one(env)
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--runs-at-once", "1"]
    for config in ("agnews", "quora", "npr"):
        args += ["--partition", config]
    with open(tmp_path / "stderr.log", "w") as err:
        command = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:

        def started_run() -> list[dg.DagsterRun]:
            return instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

        try:
            wait_for(lambda: started_run() and claimed_slots(env), 120, "the big run to start")
        finally:
            (killed,) = started_run()
            worker = int(killed.tags["kd-pipeline/pid"])
            assert worker != command.pid
            os.kill(worker, signal.SIGKILL)
        assert command.wait(timeout=300) == 1, (tmp_path / "stderr.log").read_text()
        stderr = (tmp_path / "stderr.log").read_text()
        assert "lighton_partitions [agnews]: FAILED (its worker process died" in stderr
        assert "2/3 runs succeeded" in stderr
        assert "failed: lighton_partitions [agnews] " in stderr
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        statuses = {r.tags["dagster/partition"]: r.status for r in instance.get_runs()}
        assert statuses == {
            "agnews": dg.DagsterRunStatus.FAILURE,
            "quora": dg.DagsterRunStatus.SUCCESS,
            "npr": dg.DagsterRunStatus.SUCCESS,
        }
        info = instance.event_log_storage.get_concurrency_info("duckdb")
        assert info.claimed_slots == [] and info.pending_steps == []
    lake = Lake(lake_dir)
    assert lake.is_published(("lighton", "recommended"), "quora")
    assert lake.is_published(("lighton", "recommended"), "npr")
    assert not lake.is_published(("lighton", "raw"), "agnews")


def test_a_killed_worker_ends_its_sibling_run_too_and_frees_every_slot(tmp_path, lake_dir) -> None:
    """Two big partitions on two workers, one worker SIGKILLed: Python stops the other
    worker too; neither run is left unfinished, no pool claim is left, and the small
    partition not started yet runs on a new pool and is published."""
    import shutil

    mirror = tmp_path / "mirror"
    big_mirror(mirror, 1_500_000, "s")
    (lighton_repo(mirror) / "npr").mkdir(parents=True)
    shutil.copy(
        lighton_repo(mirror) / "agnews" / "train-00000-of-00001.parquet",
        lighton_repo(mirror) / "npr" / "train-00000-of-00001.parquet",
    )
    small_config(mirror, "quora")
    env = env_for(tmp_path, mirror)
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--runs-at-once", "2"]
    for config in ("agnews", "npr", "quora"):
        args += ["--partition", config]
    with open(tmp_path / "stderr.log", "w") as err:
        command = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:

        def started() -> list[dg.DagsterRun]:
            return instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

        try:
            wait_for(
                lambda: {r.tags["dagster/partition"] for r in started()} == {"agnews", "npr"},
                180,
                "both big runs to start",
            )
        finally:
            victim = next(r for r in started() if r.tags["dagster/partition"] == "agnews")
            os.kill(int(victim.tags["kd-pipeline/pid"]), signal.SIGKILL)
        assert command.wait(timeout=600) == 1, (tmp_path / "stderr.log").read_text()
        statuses = {r.tags["dagster/partition"]: r.status for r in instance.get_runs()}
        assert statuses["agnews"] == dg.DagsterRunStatus.FAILURE
        assert statuses["quora"] == dg.DagsterRunStatus.SUCCESS
        assert all(r.is_finished for r in instance.get_runs())  # the sibling's run too
        info = instance.event_log_storage.get_concurrency_info("duckdb")
        assert info.claimed_slots == [] and info.pending_steps == []
    stderr = (tmp_path / "stderr.log").read_text()
    assert "lighton_partitions [quora]: ok" in stderr
    assert "lighton_partitions [agnews]: FAILED (its worker process died" in stderr
    assert Lake(lake_dir).is_published(("lighton", "recommended"), "quora")


def pool_workers(command_pid: int) -> list[int]:
    """The worker processes of a `kd-pipeline materialize` (its spawned children)."""
    children = Path(f"/proc/{command_pid}/task/{command_pid}/children").read_text().split()
    workers = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(int(pid))
    return workers


def test_a_worker_killed_before_its_run_started_loses_no_step(tmp_path, lake_dir) -> None:
    """A worker dies while the steps are queued on the pool but before any run exists (the
    CI case: a step submitted just as a sibling worker died). Those steps never started, so
    they are not failures: every one runs on a new pool and the command succeeds."""
    mirror = tmp_path / "mirror"
    for config in ("agnews", "npr", "quora"):
        small_config(mirror, config)
    env = env_for(tmp_path, mirror)
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--runs-at-once", "2"]
    for config in ("agnews", "npr", "quora"):
        args += ["--partition", config]
    with open(tmp_path / "stderr.log", "w") as err:
        command = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    # The workers import the code location for seconds before they take a step.
    wait_for(lambda: len(pool_workers(command.pid)) == 2, 60, "the two workers to spawn")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_runs() == []
        os.kill(pool_workers(command.pid)[0], signal.SIGKILL)
        stderr = lambda: (tmp_path / "stderr.log").read_text()  # noqa: E731
        assert command.wait(timeout=600) == 0, stderr()
        statuses = {r.tags["dagster/partition"]: r.status for r in instance.get_runs()}
    assert statuses == dict.fromkeys(("agnews", "npr", "quora"), dg.DagsterRunStatus.SUCCESS)
    assert "3/3 runs succeeded" in stderr()
    for config in ("agnews", "npr", "quora"):
        assert Lake(lake_dir).is_published(("lighton", "recommended"), config)
