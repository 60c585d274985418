"""Dagster's SQLite event log for the main job's workers: the index shard kept open.

Dagster's `SqliteEventLogStorage` opens a new SQLAlchemy engine and connection for every
statement it makes: four for each check result of a run (the run's shard, then three times
the index shard `index.db` that asset and check views read, once only to ask whether a table
exists). A sample run reports about 45
checks, so a worker spent most of a small run's CPU making and closing SQLite connections.

`PooledIndexEventLogStorage` keeps one engine with a small pool for the index shard for the
life of the process; the run shards stay as Dagster makes them, because the UI's run view
watches a run's own `.db` file and is woken by the write-back each closed connection makes.
Same files, same schema, same WAL journal: the UI and the daemon read what the workers write
as before. `WorkerSqliteStorage` is Dagster's default SQLite storage (`DagsterSqliteStorage`,
the same `base_dir`) with that event log; `instance.command_instance` gives it to the workers
of `kd-pipeline materialize` when dagster.yaml keeps the default storage.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _runs_directory

_ENGINE_LOCK = threading.Lock()  # one index engine per storage, whichever thread asks first


class PooledIndexEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log (the same `base_dir` layout), its index shard
    reached through one engine kept for the process (a pool of up to 5 connections, as
    SQLAlchemy's default), its run shards through a new connection per statement."""

    _index_engine: sa.Engine | None = None
    _tables_found: frozenset[str] = frozenset()

    def _index(self) -> sa.Engine:
        """The index shard's engine, made (and the shard created) on first use."""
        with _ENGINE_LOCK:
            if self._index_engine is not None:
                return self._index_engine
            engine = sa.create_engine(
                self.conn_string_for_shard(INDEX_SHARD_NAME),
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            if INDEX_SHARD_NAME not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(INDEX_SHARD_NAME)
            self._index_engine = engine
            return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        if shard != INDEX_SHARD_NAME:
            with super()._connect(shard) as conn:
                yield conn
            return
        with self._db_lock, self._index().connect() as conn, conn.begin():
            yield conn

    def has_table(self, table_name: str) -> bool:
        """Whether the index shard has the table (asked before each check result is stored;
        a table found stays found: Dagster's migrations add tables, never drop them)."""
        if table_name in self._tables_found:
            return True
        engine = self._index()  # not under _db_lock: Dagster asks this inside _connect blocks
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables_found = self._tables_found | {table_name}
        return found

    def dispose(self) -> None:
        if self._index_engine is not None:
            self._index_engine.dispose()
            self._index_engine = None
        super().dispose()


class PooledRunStorage(SqliteRunStorage):
    """Dagster's SQLite run storage (`runs.db`), reached through one engine kept for the
    process instead of a new one per statement (about 30 per small run)."""

    _engine: sa.Engine | None = None

    @contextlib.contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with _ENGINE_LOCK:
            if self._engine is None:
                self._engine = sa.create_engine(self._conn_string)
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        super().dispose()


class WorkerSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage of `base_dir` (runs, event logs, schedules in the same
    files), its run storage a `PooledRunStorage` and its event log a
    `PooledIndexEventLogStorage`."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        super().__init__(base_dir, inst_data)
        self._run_storage = PooledRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledIndexEventLogStorage(
            self._event_log_storage._base_dir  # the folder Dagster chose: history/runs
        )

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)
