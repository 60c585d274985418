"""The loopback servers carry a real DuckLake: PostgreSQL holds its catalog, moto's S3 its data.

What the lake is built on (issue 15, "Proof"), checked end to end with DuckDB 1.5.5 and the
extension wheels, no mocks: a commit is visible to another process, its data files are in the
bucket, concurrent replaces of two partitions of one table conflict and a retry of the whole
short transaction succeeds, and a Parquet file uploaded beforehand registers with
``ducklake_add_data_files``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from kd_pipeline_tests import servers
from kd_pipeline_tests.servers import PostgresServer, S3Server, lake_connection

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Lake:
    """One DuckLake: a fresh catalog database and a fresh bucket, and how to attach it."""

    conninfo: str  # libpq connection string of the catalog database
    bucket: str
    data_path: str  # s3://<bucket>/lake/
    secret_sql: str  # CREATE SECRET pointing httpfs at the S3 server

    def attach(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A new DuckDB instance with the lake attached as ``lk`` (a reader omits DATA_PATH)."""
        con = lake_connection()
        con.execute(self.secret_sql)
        options = "READ_ONLY" if read_only else f"DATA_PATH '{self.data_path}'"
        con.execute(f"ATTACH 'ducklake:postgres:{self.conninfo}' AS lk ({options})")
        return con


@pytest.fixture
def lake(postgres_server: PostgresServer, s3_server: S3Server) -> Iterator[Lake]:
    """A lake of its own per test, created by a first writer's ATTACH."""
    name = f"lake_{uuid.uuid4().hex[:12]}"
    bucket = name.replace("_", "-")
    s3_server.create_bucket(bucket)
    lake = Lake(
        conninfo=postgres_server.create_database(name),
        bucket=bucket,
        data_path=f"s3://{bucket}/lake/",
        secret_sql=s3_server.duckdb_secret_sql(),
    )
    lake.attach().close()  # creates the catalog tables and fixes the data path for life
    yield lake


def _read_count_in_subprocess(lake: Lake, table: str) -> int:
    """COUNT(*) of ``table`` read by another Python process attached READ_ONLY."""
    script = (
        "import json, sys\n"
        "from kd_pipeline_tests.servers import lake_connection\n"
        "args = json.loads(sys.argv[1])\n"
        "con = lake_connection()\n"
        "con.execute(args['secret'])\n"
        "con.execute(f\"ATTACH 'ducklake:postgres:{args['conninfo']}' AS lk (READ_ONLY)\")\n"
        "print(con.execute(f\"SELECT count(*) FROM {args['table']}\").fetchone()[0])\n"
    )
    args = json.dumps({"secret": lake.secret_sql, "conninfo": lake.conninfo, "table": table})
    result = subprocess.run(
        [sys.executable, "-c", script, args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def _catalog_files(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The data file paths the catalog references for ``table`` (current snapshot)."""
    rows = con.execute("SELECT data_file FROM ducklake_list_files('lk', ?)", [table]).fetchall()
    return sorted(path for (path,) in rows)


def test_commit_is_read_by_another_process_and_its_files_are_in_the_bucket(
    lake: Lake, s3_server: S3Server
) -> None:
    con = lake.attach()
    con.execute("CREATE TABLE lk.pairs (partition VARCHAR, id BIGINT, score DOUBLE)")
    con.execute("ALTER TABLE lk.pairs SET PARTITIONED BY (partition)")
    con.execute("BEGIN")
    con.execute("INSERT INTO lk.pairs SELECT 'p' || (i % 2), i, i / 7 FROM range(1000) r(i)")
    assert _read_count_in_subprocess(lake, "lk.pairs") == 0  # not committed yet
    con.execute("COMMIT")

    assert _read_count_in_subprocess(lake, "lk.pairs") == 1000

    files = _catalog_files(con, "pairs")
    keys = s3_server.list_keys(lake.bucket, "lake/")
    assert len(files) == 2  # one Parquet file per partition, none inlined in the catalog
    assert [f"s3://{lake.bucket}/{key}" for key in keys] == files
    assert all(key.endswith(".parquet") for key in keys)
    assert {key.split("/")[-2] for key in keys} == {"partition=p0", "partition=p1"}


def _replace_partition(con: duckdb.DuckDBPyConnection, partition: str, rows: int) -> None:
    """Open a transaction that replaces ``partition`` with ``rows`` rows (no COMMIT)."""
    con.execute("BEGIN")
    con.execute("DELETE FROM lk.pairs WHERE partition = ?", [partition])
    con.execute("INSERT INTO lk.pairs SELECT ?, i, -1 FROM range(?) r(i)", [partition, rows])


def _partition_rows(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, float]]:
    """partition -> (row count, sum of score), read at the current snapshot."""
    rows = con.execute(
        "SELECT partition, count(*), sum(score) FROM lk.pairs GROUP BY partition"
    ).fetchall()
    return {partition: (count, total) for partition, count, total in rows}


def test_concurrent_replaces_of_two_partitions_conflict_and_a_retry_commits(lake: Lake) -> None:
    setup = lake.attach()
    setup.execute("CREATE TABLE lk.pairs (partition VARCHAR, id BIGINT, score DOUBLE)")
    setup.execute("ALTER TABLE lk.pairs SET PARTITIONED BY (partition)")
    setup.execute("INSERT INTO lk.pairs SELECT 'p' || (i % 2), i, 1 FROM range(1000) r(i)")
    before = _partition_rows(setup)
    assert before == {"p0": (500, 500.0), "p1": (500, 500.0)}

    first, second = lake.attach(), lake.attach()  # two DuckDB instances, like two processes
    _replace_partition(first, "p0", 100)
    _replace_partition(second, "p1", 200)
    first.execute("COMMIT")
    with pytest.raises(duckdb.TransactionException) as conflict:
        second.execute("COMMIT")
    message = str(conflict.value)
    assert "Failed to commit DuckLake transaction" in message
    assert "Transaction conflict" in message
    assert "another transaction has deleted from it" in message
    # The failed commit ended the transaction and left p1 as it was.
    assert _partition_rows(second) == {"p0": (100, -100.0), "p1": (500, 500.0)}

    _replace_partition(second, "p1", 200)  # the retry redoes the whole short transaction
    second.execute("COMMIT")

    assert _partition_rows(setup) == {"p0": (100, -100.0), "p1": (200, -200.0)}


def test_a_parquet_file_uploaded_first_registers_with_add_data_files(
    lake: Lake, s3_server: S3Server
) -> None:
    con = lake.attach()
    con.execute("CREATE TABLE lk.pairs (partition VARCHAR, id BIGINT, score DOUBLE)")
    con.execute("ALTER TABLE lk.pairs SET PARTITIONED BY (partition)")
    con.execute("INSERT INTO lk.pairs SELECT 'p0', i, 1 FROM range(300) r(i)")
    # A partitioned table takes a file only under a hive folder naming its partition value.
    staged = f"s3://{lake.bucket}/staging/run-1/partition=p1/part-0.parquet"
    con.execute(
        "COPY (SELECT 'p1' AS partition, i::BIGINT AS id, i::DOUBLE AS score FROM range(250) r(i))"
        f" TO '{staged}' (FORMAT parquet)"
    )
    assert s3_server.list_keys(lake.bucket, "staging/") == [
        "staging/run-1/partition=p1/part-0.parquet"
    ]

    con.execute("BEGIN")
    con.execute("CALL ducklake_add_data_files('lk', 'pairs', ?)", [staged])
    con.execute("COMMIT")

    assert _partition_rows(con) == {"p0": (300, 300.0), "p1": (250, float(sum(range(250))))}
    assert staged in _catalog_files(con, "pairs")
    assert _read_count_in_subprocess(lake, "lk.pairs WHERE partition = 'p1'") == 250


def _accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_both_servers_stop_and_leave_nothing_when_the_block_raises() -> None:
    with pytest.raises(ZeroDivisionError), PostgresServer() as pg, S3Server() as s3:
        pg_root, pg_port, s3_port = pg.root, pg.port, s3.port
        assert (pg_root / "data" / "postmaster.pid").is_file()
        assert _accepts_connections(pg_port) and _accepts_connections(s3_port)
        _ = 1 / 0
    assert not pg_root.exists()
    assert not _accepts_connections(pg_port)
    assert not _accepts_connections(s3_port)


def test_postgres_server_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    conninfo = postgres_server.create_database(f"probe_{uuid.uuid4().hex[:8]}")
    con = lake_connection()
    con.execute(f"ATTACH '{conninfo}' AS pg (TYPE postgres, READ_ONLY)")
    setting = con.execute(
        "SELECT * FROM postgres_query('pg', 'SELECT current_setting(''listen_addresses'')')"
    ).fetchone()
    assert setting == ("127.0.0.1",)


def test_missing_postgres_binaries_name_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version folder without initdb
    monkeypatch.setattr(servers, "_PG_BIN_GLOB", str(tmp_path / "*" / "bin"))
    with pytest.raises(servers.MissingServerError) as missing:
        PostgresServer()
    assert "\n" not in str(missing.value)
    assert "apt-get install postgresql" in str(missing.value)


def _stage(con: duckdb.DuckDBPyConnection, url: str, partition: str, rows: int) -> None:
    """Write ``rows`` rows of ``partition`` (score -2) as one Parquet file at ``url``."""
    con.execute(
        f"COPY (SELECT ? AS partition, i::BIGINT AS id, -2::DOUBLE AS score FROM range(?) r(i))"
        f" TO '{url}' (FORMAT parquet)",
        [partition, rows],
    )


def _swap_partition(con: duckdb.DuckDBPyConnection, partition: str, url: str) -> None:
    """Open the short transaction that swaps ``partition`` for the staged file (no COMMIT)."""
    con.execute("BEGIN")
    con.execute("DELETE FROM lk.pairs WHERE partition = ?", [partition])
    con.execute("CALL ducklake_add_data_files('lk', 'pairs', ?)", [url])


def test_a_staged_file_survives_a_conflicting_swap_and_the_retry_registers_it(
    lake: Lake, s3_server: S3Server
) -> None:
    setup = lake.attach()
    setup.execute("CREATE TABLE lk.pairs (partition VARCHAR, id BIGINT, score DOUBLE)")
    setup.execute("ALTER TABLE lk.pairs SET PARTITIONED BY (partition)")
    setup.execute("INSERT INTO lk.pairs SELECT 'p' || (i % 2), i, 1 FROM range(1000) r(i)")
    staged = {p: f"s3://{lake.bucket}/staging/partition={p}/part-0.parquet" for p in ("p0", "p1")}
    _stage(setup, staged["p0"], "p0", 30)
    _stage(setup, staged["p1"], "p1", 40)

    first, second = lake.attach(), lake.attach()
    _swap_partition(first, "p0", staged["p0"])
    _swap_partition(second, "p1", staged["p1"])
    first.execute("COMMIT")
    with pytest.raises(duckdb.TransactionException, match="another transaction has deleted"):
        second.execute("COMMIT")
    # Unlike rows written by INSERT, a registered file is not deleted when its commit fails.
    assert s3_server.list_keys(lake.bucket, "staging/") == [
        "staging/partition=p0/part-0.parquet",
        "staging/partition=p1/part-0.parquet",
    ]
    assert _partition_rows(second) == {"p0": (30, -60.0), "p1": (500, 500.0)}

    _swap_partition(second, "p1", staged["p1"])  # the retry registers the same file
    second.execute("COMMIT")

    assert _partition_rows(setup) == {"p0": (30, -60.0), "p1": (40, -80.0)}
    assert set(_catalog_files(setup, "pairs")) == set(staged.values())


def test_the_hive_folder_not_the_file_column_sets_a_registered_files_partition(
    lake: Lake,
) -> None:
    con = lake.attach()
    con.execute("CREATE TABLE lk.pairs (partition VARCHAR, id BIGINT, score DOUBLE)")
    con.execute("ALTER TABLE lk.pairs SET PARTITIONED BY (partition)")
    # The file's own column says p4; the folder says p3. An audit must compare the two.
    misfiled = f"s3://{lake.bucket}/staging/partition=p3/part-0.parquet"
    _stage(con, misfiled, "p4", 5)

    con.execute("CALL ducklake_add_data_files('lk', 'pairs', ?)", [misfiled])

    assert _partition_rows(con) == {"p3": (5, -10.0)}
    assert con.execute("SELECT count(*) FROM lk.pairs WHERE partition = 'p4'").fetchone() == (0,)


def test_the_postgres_fixture_fails_never_skips_without_the_binaries(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "_PG_BIN_GLOB", str(tmp_path / "*" / "bin"))
    pytester.makepyfile(
        test_needs_postgres="""
        from kd_pipeline_tests.servers import postgres_server

        def test_catalog(postgres_server):
            pass
        """
    )

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*apt-get install postgresql*"])
