"""The bad day, caused for real on the DuckLake lake: writers SIGKILLed at each phase of a
publish (the write, the audit, between audit and commit, the commit), a full and a nearly full
disk, two writers on one partition, parallel writers of one table, and readers browsing the
catalog meanwhile. After each fault the lake must read whole through DuckLake (what every
reader uses): each partition's rows equal the manifest recorded in `publications`, every file
the snapshot references exists, nothing is counted twice; and a rerun succeeds."""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kd_pipeline import ducklake
from kd_pipeline.lake import Lake
from kd_pipeline_tests.helpers import lighton_repo

ROOT = Path(__file__).resolve().parent.parent
ASSETS = [("lighton", name) for name in ("raw", "recommended", "top35", "similarity_3")]
RAW = ("lighton", "raw")


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


def env_for(tmp_path: Path, mirror: Path | None) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if mirror is not None:
        env["KD_PIPELINE_MIRROR"] = str(mirror)
    return env


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


# ---- the lake read the way readers read it ------------------------------------------------
State = dict[tuple[str, str], tuple[str, int]]  # (asset, partition) -> (version, rows)


def read_whole(lake: Lake) -> State:
    """Read the lake through DuckLake (read-only, one snapshot) and assert it is whole.

    Per publication: its manifest's rows and version equal the registry's, the table's rows
    of that partition equal them (a partition counted twice, or half, fails here), the
    table holds no partition the registry does not; every data and delete file the
    snapshot references (the tables' and the registry's own) exists, and a partition's
    data files lie in its published version folder. Returns the state it read."""

    def read() -> State:
        if lake.catalog.kind == "sqlite" and not Path(lake.catalog.target).exists():
            return {}  # before the first publish there is no catalog to read
        with lake.connect(read_only=True) as con:
            con.execute("BEGIN TRANSACTION")  # every query below reads one snapshot
            tables = {
                (schema, table)
                for schema, table in con.execute(
                    "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = $db",
                    {"db": ducklake.ALIAS},
                ).fetchall()
            }
            if ("main", "publications") not in tables:
                return {}
            rows = con.execute(
                "SELECT asset, partition, version, location, rows, manifest FROM publications"
            ).fetchall()
            state: State = {}
            by_table: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
            for asset, partition, version, location, count, manifest in rows:
                assert (asset, partition) not in state, f"{asset} [{partition}] registered twice"
                state[asset, partition] = (version, count)
                record = json.loads(manifest)
                assert (record["version"], record["rows"]) == (version, count), (asset, record)
                key = tuple(asset.split("/"))
                if lake.is_table(key):
                    by_table.setdefault(lake.table_name(key), {})[partition] = (location, count)
            for (schema, table), publications in sorted(by_table.items()):
                counted = dict(
                    con.execute(
                        f"SELECT partition, count(*) FROM {schema}.{table} GROUP BY ALL"
                    ).fetchall()
                )
                expected = {p: n for p, (_, n) in publications.items() if n}
                assert counted == expected, (
                    f"{schema}.{table}: read {counted}, published {expected}"
                )
                for path, partition in referenced_files(con, schema, table):
                    assert Path(path).is_file(), f"{schema}.{table} references missing {path}"
                    if partition is not None:
                        folder = Path(lake.root) / publications[partition][0]
                        assert Path(path).parent == folder, (path, folder)
            for path, _ in referenced_files(con, "main", "publications"):
                assert Path(path).is_file(), f"the registry references missing {path}"
            con.execute("COMMIT")
            return state

    return ducklake.with_retry(read)


def referenced_files(
    con: duckdb.DuckDBPyConnection, schema: str, table: str
) -> list[tuple[str, str | None]]:
    """(path, hive partition or None) of every data and delete file of the table."""
    found = []
    for data_file, delete_file in con.execute(
        "SELECT data_file, delete_file FROM ducklake_list_files($db, $t, schema => $s)",
        {"db": ducklake.ALIAS, "t": table, "s": schema},
    ).fetchall():
        hive = [p.split("=", 1)[1] for p in Path(data_file).parts if p.startswith("partition=")]
        found.append((data_file, hive[0] if hive else None))
        if delete_file:
            found.append((delete_file, None))
    return found


def raw_state(lake: Lake, partition: str = "agnews") -> tuple[str, int]:
    return read_whole(lake)["lighton/raw", partition]


def version_folders(lake_dir: Path, table: str = "raw", partition: str = "agnews") -> set[str]:
    """Every version folder on disk (published, superseded, or a killed writer's)."""
    folder = lake_dir / "data" / "lighton" / table / f"partition={partition}"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


class Browser(threading.Thread):
    """A person browsing the lake meanwhile: reads it whole again and again (read_whole);
    any read that is not whole is recorded (the test asserts there are none)."""

    def __init__(self, lake: Lake) -> None:
        super().__init__(daemon=True)
        self.lake = lake
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                read_whole(self.lake)
                self.reads += 1
            except AssertionError as exc:
                self.errors.append(f"torn read: {exc}")
            except Exception as exc:  # every failure to read is a finding
                self.errors.append(f"{type(exc).__name__}: {ducklake.first_line(exc)}")
            time.sleep(0.02)

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=120)


# ---- SIGKILL at each phase of a publish ---------------------------------------------------
# A writer that goes through the lake's real stage -> write -> audit -> publish, saying on
# stdout where it is, so the test kills it at a chosen phase.
WRITER = textwrap.dedent(
    """
    import sys, duckdb
    from kd_pipeline.lake import Lake
    rows, salt = int(sys.argv[1]), sys.argv[2]
    lake = Lake()
    with lake.stage(("lighton", "raw"), "agnews") as staged:
        print("staged", staged.version, flush=True)
        duckdb.execute(
            "COPY (SELECT 'q' || $s || i AS query, md5($s || i) || md5(i || $s) AS document "
            f"FROM range($n) t(i)) TO '{staged.path}/part-00000.parquet' (FORMAT parquet)",
            {"n": rows, "s": salt},
        )
        print("written", flush=True)
        (n, distinct) = duckdb.execute(
            f"SELECT count(*), count(DISTINCT query) FROM read_parquet('{staged.path}/*.parquet')"
        ).fetchone()
        assert n == distinct == rows
        print("audited", flush=True)
        lake.publish(staged, {"rows": n})
        print("published", flush=True)
    """
)
MILLION = 1_000_000


class Writer:
    """The WRITER in a subprocess; `until(phase)` reads its stdout up to that phase."""

    def __init__(self, salt: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(MILLION), salt],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started = time.monotonic()
        self.times: dict[str, float] = {}
        self.version = ""

    def until(self, phase: str) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            name, *rest = line.split() or [""]  # (DuckDB's progress bar prints blank lines)
            self.times[name] = time.monotonic() - self.started
            if name == "staged":
                self.version = rest[0]
            if name == phase:
                return
        raise AssertionError(f"the writer ended before {phase}: exit {self.process.wait()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()


class CreationWatch:
    """inotify on one folder (Linux): `wait(name)` returns the moment a file of that name
    is created or written in it, so a writer can be killed inside a window of milliseconds
    (a hot journal left by an earlier kill is reused, not created: hence the writes)."""

    EVENTS = 0x100 | 0x2  # IN_CREATE | IN_MODIFY

    def __init__(self, folder: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        watch = self.libc.inotify_add_watch(self.fd, bytes(folder), self.EVENTS)
        assert watch >= 0, os.strerror(ctypes.get_errno())

    def wait(self, name: str, process: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and process.poll() is None:
            if not select.select([self.fd], [], [], min(left, 0.5))[0]:
                continue
            buffer = os.read(self.fd, 65536)
            offset = 0
            while offset < len(buffer):
                _, _, _, length = struct.unpack_from("iIII", buffer, offset)
                created = buffer[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                if created == name:
                    return True
                offset += 16 + length
        return False

    def close(self) -> None:
        os.close(self.fd)


def test_sigkill_at_each_phase_of_a_publish_keeps_the_lake_whole(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1M-row partition republished and SIGKILLed: during the write, during the audit,
    right after the audit (the publish begins), inside the commit (the instant SQLite
    creates the catalog's rollback journal: the kill leaves a hot journal) and right after
    the commit (during snapshot expiry). After every kill the table reads exactly 1M rows
    for the partition (never 2M: the killed writers' files lie in the same partition folder
    but no snapshot references them) and the registry names the previous version, or the
    new one whole when the kill came after the commit; a browser reading throughout never
    sees anything else. Then a rerun publishes, and the orphan files of the killed writers
    are deleted once older than the retention age, leaving every referenced file."""
    lake = Lake(lake_dir)
    first = Writer("first")
    first.until("published")
    assert first.process.wait(timeout=120) == 0
    state = raw_state(lake)
    assert state == (first.version, MILLION)
    watch = CreationWatch(lake_dir)
    outcomes: dict[str, tuple[bool, bool]] = {}  # phase -> (new version committed, hot journal)
    killed_versions = set()
    try:
        with Browser(lake) as browser:
            for trial, phase in enumerate(
                ["write", "audit", "publish", "commit", "commit", "commit", "after commit"]
            ):
                writer = Writer(f"kill{trial}")
                if phase == "write":
                    writer.until("staged")
                    time.sleep(0.3)  # the COPY of 1M rows takes seconds
                elif phase == "audit":
                    writer.until("written")
                elif phase == "publish":
                    writer.until("audited")
                elif phase == "commit":
                    writer.until("audited")
                    assert watch.wait("catalog.sqlite-journal", writer.process, 120), (
                        "no commit seen"
                    )
                else:
                    writer.until("audited")
                    while raw_state(lake)[0] != writer.version:
                        assert writer.process.poll() is None, "the writer ended first"
                writer.kill()
                hot_journal = (lake_dir / "catalog.sqlite-journal").exists()
                now = raw_state(lake)
                assert now in (state, (writer.version, MILLION)), (phase, now, state)
                committed = now[0] == writer.version
                outcomes[f"{trial}:{phase}"] = (committed, hot_journal)
                if not committed:
                    killed_versions.add(writer.version)
                state = now
    finally:
        watch.close()
    print("kills (committed, hot journal left):", outcomes)
    assert browser.errors == [], browser.errors[:5]
    assert browser.reads > 0
    committed = [c for c, _ in outcomes.values()]
    assert committed[:3] == [False, False, False]  # killed before the commit: old version
    assert committed[-1] is True  # killed after the commit: the new version, whole
    assert any(hot for _, hot in list(outcomes.values())[3:6])  # killed inside a commit
    # the killed writers' files are on disk, in the partition's folder, and never counted
    assert killed_versions <= version_folders(lake_dir)

    rerun = Writer("rerun")
    rerun.until("published")
    assert rerun.process.wait(timeout=120) == 0
    assert raw_state(lake) == (rerun.version, MILLION)

    time.sleep(2)
    monkeypatch.setenv("KD_PIPELINE_RETENTION_DAYS", str(1 / 86400))  # one second
    lake.delete_orphaned_files()
    left = {
        folder
        for folder in killed_versions
        if any((lake_dir / "data/lighton/raw/partition=agnews" / folder).glob("*.parquet"))
    }
    assert left == set()
    assert raw_state(lake) == (rerun.version, MILLION)  # every referenced file is still there


def test_sigkill_of_materialize_at_polled_and_random_points(tmp_path, lake_dir) -> None:
    """The real `kd-pipeline materialize` (raw + three recipes, each write-audit-publish)
    SIGKILLed with its whole process group: when a new raw version folder appears (its
    write), when a new version folder of the last recipe appears (raw already republished),
    and at random moments of a run. After each kill every asset is still published and
    whole; a browser reading the catalog meanwhile never sees a torn state; a rerun
    publishes the new data."""
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 60_000, "v1")
    env = env_for(tmp_path, mirror)
    first = Run(env)
    assert first.wait() == 0, first.stderr()[-2000:]
    lake = Lake(lake_dir)
    assert {asset for asset, _ in read_whole(lake)} == {"/".join(k) for k in ASSETS}

    big_mirror(mirror, 70_000, "v2")  # a rerun publishes different data
    started = time.monotonic()
    warm = Run(env)  # timed warm (the first run also created the instance)
    assert warm.wait() == 0, warm.stderr()[-2000:]
    duration = time.monotonic() - started
    assert raw_state(lake)[1] == 70_000

    big_mirror(mirror, 60_000, "v3")
    replaced = []

    def new_folder(table: str) -> bool:
        # a listing only (a catalog read per poll was slower than a small recipe's write and
        # publish): the kill lands while the version is written or just after its commit
        return bool(version_folders(lake_dir, table) - seen[table])

    with Browser(lake) as browser:
        for point in ("raw", "top35", 0.25, 0.5, 0.75, 0.95):
            seen = {t: version_folders(lake_dir, t) for _, t in ASSETS}
            before = read_whole(lake)
            run = Run(env, start_new_session=True)
            if isinstance(point, str):
                deadline = time.monotonic() + duration * 2
                while not new_folder(point) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert run.process.poll() is None, f"the run ended before writing {point}"
            else:
                time.sleep(duration * random.uniform(point - 0.1, point + 0.05))
            os.killpg(run.process.pid, signal.SIGKILL)
            run.wait(timeout=30)
            after = read_whole(lake)
            assert set(after) == set(before)  # nothing unpublished
            assert after["lighton/raw", "agnews"][1] in (60_000, 70_000)
            replaced.append(sum(after[k] != before[k] for k in before))
    assert browser.errors == [], browser.errors[:5]
    assert browser.reads > 0

    final = Run(env)
    assert final.wait() == 0, final.stderr()[-2000:]
    assert raw_state(lake)[1] == 60_000
    assert len(read_whole(lake)) == 4
    print(f"run {duration:.0f}s; assets replaced per kill point:", replaced)
    assert replaced[0] == 0  # killed during the raw write: nothing replaced


# ---- full disks ---------------------------------------------------------------------------
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
    good = read_whole(lake)

    big_mirror(mirror, 400_000, "large")  # ~40 MB of Parquet to write: past the limit
    run = Run(env, preexec_fn=_limit_file_size(8 * 1024 * 1024))
    assert run.wait() != 0
    assert "File too large" in run.stderr()
    assert read_whole(lake) == good
    assert raw_state(lake)[1] == 20_000
    assert Run(env).wait() == 0  # the disk has room again
    assert raw_state(lake)[1] == 400_000


def small_config(mirror: Path, config: str = "quora", rows: int = 20) -> None:
    from kd_pipeline_tests.helpers import pairs, write_pairs

    write_pairs(lighton_repo(mirror) / config / "train-0.parquet", pairs(rows))


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_nearly_full_disk_never_publishes_a_partial_state(tmp_path) -> None:
    """The lake and its catalog on a small tmpfs filled to leave 60, 100 and 150 KB: each
    materialisation either publishes the new data whole (it fitted) or fails with exit 1
    and one line saying the lake commit failed for lack of space, the previous state
    intact and the catalog readable; never exit 0 with an emptied or stale catalog. With
    room again, the next run publishes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        mirror = tmp_path / "mirror"
        small_config(mirror, rows=20)
        env = {**env_for(tmp_path, mirror), "KD_PIPELINE_LAKE": str(disk / "lake")}
        first = Run(env, "quora")
        assert first.wait() == 0, first.stderr()[-2000:]
        lake = Lake(disk / "lake")
        state = read_whole(lake)
        failed_lines = []
        for free_kb in (60, 100, 150):
            rows = 20 + free_kb
            small_config(mirror, rows=rows)
            filler = disk / "filler"
            with open(filler, "wb") as handle:
                handle.write(b"\0" * (free_bytes(disk) - free_kb * 1024))
            run = Run(env, "quora")
            code = run.wait()
            filler.unlink()
            now = read_whole(lake)  # readable, and whole
            if code == 0:
                assert now["lighton/raw", "quora"][1] == rows, (free_kb, now)
            else:
                assert now == state, (free_kb, now, state)
                assert "FAILED" in run.stderr()
                failed_lines += [
                    line for line in run.stderr().splitlines() if "not published" in line
                ]
            state = now
            print(f"{free_kb} KB free: exit {code}")
        assert failed_lines, "no case ran out of room: the test proves nothing"
        small_config(mirror, rows=500)
        rerun = Run(env, "quora")
        assert rerun.wait() == 0, rerun.stderr()[-2000:]
        assert raw_state(lake, "quora")[1] == 500
        # the failure is one line naming the cause (today: DuckDB's 'Failed to commit')
        for line in failed_lines:
            assert "no space left" in line.lower() or "disk is full" in line.lower(), line
    finally:
        if subprocess.run(["umount", str(disk)]).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)])


def test_a_catalog_locked_for_a_moment_is_waited_for_not_reported_unreachable(
    lake_dir: Path,
) -> None:
    """Another process holds the SQLite catalog's write lock for a second (as a commit
    does): opening the lake waits for it and succeeds; it is not reported as an
    unreachable KD_PIPELINE_CATALOG."""
    lake_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "con.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(1.5)\n"
            "con.execute('COMMIT')\n",
            str(lake_dir / "catalog.sqlite"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Lake(lake_dir).connect() as con:
            assert con.execute("SELECT 1").fetchone() == (1,)
    finally:
        holder.wait(timeout=30)


# ---- writers at once, and a reader meanwhile ----------------------------------------------
def test_parallel_runs_on_one_table_all_commit_and_a_browser_sees_only_whole_states(
    tmp_path, lake_dir
) -> None:
    """Four runs at once on four partitions of the same tables (DuckLake conflicts are per
    table: their commits collide and are retried) all publish; a browser reading the
    catalog throughout only ever sees whole, committed states."""
    env = env_for(tmp_path, None)  # the sample mirror
    partitions = ["agnews", "npr", "quora", "fw2-jpn_Jpan"]
    lake = Lake(lake_dir)
    with Browser(lake) as browser:
        runs = [Run(env, p) for p in partitions]
        results = [(r.wait(), r.stderr()) for r in runs]
    assert all(code == 0 for code, _ in results), [e[-1500:] for c, e in results if c]
    assert browser.errors == [], browser.errors[:5]
    assert browser.reads > 0
    state = read_whole(lake)
    assert {(a, p) for a, p in state} == {("/".join(k), p) for k in ASSETS for p in partitions}
    assert all(rows == 200 for (a, _), (_, rows) in state.items() if a == "lighton/raw")


def test_a_partition_being_written_refuses_a_second_writer(tmp_path, lake_dir) -> None:
    """A run on a partition another writer on this machine holds fails at once naming it;
    two runs racing on one partition end with each asset published exactly once, whole."""
    env = env_for(tmp_path, None)
    lake = Lake(lake_dir)
    with lake.stage(RAW, "agnews"):  # another run holds the partition
        run = Run(env)
        code = run.wait()
    assert code == 1
    assert "lighton/raw/agnews is being written by another run" in run.stderr()
    assert not lake.is_published(RAW, "agnews")

    racers = [Run(env), Run(env)]
    outcomes = [(r.wait(), r.stderr()) for r in racers]
    # Per asset, one of the two writes it and the other is refused with a clear message
    # (both runs may each lose one step): never a torn or a doubly written partition.
    for code, err in outcomes:
        assert code == 0 or "being written by another run" in err, err[-2000:]
    state = read_whole(lake)  # one registry row per asset partition, rows as published
    assert {a for a, _ in state} == {"/".join(k) for k in ASSETS}
    assert state["lighton/raw", "agnews"][1] == 200


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
    state = read_whole(Lake(lake_dir))
    assert {a for a, p in state if p == "fw2-rus_Cyrl"} == {"/".join(k) for k in ASSETS}


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


def start_materialize(
    env: dict[str, str], log: Path, runs_at_once: int, *partitions: str
) -> subprocess.Popen:
    """`kd-pipeline materialize --runs-at-once N --partition ...` in the background, its
    stderr in `log`."""
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize"]
    args += ["--runs-at-once", str(runs_at_once)]
    for partition in partitions:
        args += ["--partition", partition]
    with open(log, "w") as err:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


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
    command = start_materialize(env, tmp_path / "stderr.log", 1, "agnews", "quora", "npr")
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
    command = start_materialize(env, tmp_path / "stderr.log", 2, "agnews", "npr", "quora")
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
    command = start_materialize(env, tmp_path / "stderr.log", 2, "agnews", "npr", "quora")
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


def test_a_killed_command_takes_its_workers_with_it(tmp_path, lake_dir) -> None:
    """SIGKILL of `kd-pipeline materialize` itself (not its process group) while a worker
    runs a big partition: the worker exits within seconds instead of finishing a run
    nobody reports and then waiting forever on the pool's pipe; nothing is published; the
    next command marks the dead run failed and publishes the partition."""
    mirror = tmp_path / "mirror"
    big_mirror(mirror, 1_500_000, "p")
    env = env_for(tmp_path, mirror)
    command = start_materialize(env, tmp_path / "stderr.log", 1, "agnews")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:

        def started_run() -> list[dg.DagsterRun]:
            return instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

        wait_for(started_run, 120, "the big run to start")
        (run,) = started_run()
        worker = int(run.tags["kd-pipeline/pid"])
        os.kill(command.pid, signal.SIGKILL)
        command.wait(timeout=30)

        def worker_gone() -> bool:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(worker_gone, 10, "the orphaned worker to exit")
        assert not Lake(lake_dir).is_published(("lighton", "raw"), "agnews")
        again = start_materialize(env, tmp_path / "again.log", 1, "agnews")
        assert again.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert Lake(lake_dir).is_published(("lighton", "raw"), "agnews")
