"""The lake: every asset partition published atomically, as a DuckLake table or an export.

DuckLake (DuckDB's lakehouse format) keeps the tables' metadata, snapshots and transactions in
the catalog (`KD_PIPELINE_CATALOG`: SQLite by default, PostgreSQL for many machines) and their
Parquet files under the data path (`KD_PIPELINE_LAKE`: a folder or `s3://bucket/prefix`)::

    <lake>/catalog.sqlite                           the default catalog of a folder lake
    <lake>/data/<schema>/<table>/partition=<key>/<version>/part-NNNNN.parquet
    <lake>/data/<schema>/<table>/<version>/part-NNNNN.parquet        (unpartitioned)
    <lake>/exports/<format>/<name>/<partition or _>/<version>/       an export's files
    .locks/ .scratch/ .staging/   on the machine: writer locks, DuckDB spill, object-store staging

An asset key `lighton/recommended` is the table `lighton.recommended` (schema = the first
part, table = the rest joined by `_`, see `catalog_view_names`), with a `partition` column
when the asset is partitioned. Exports stay plain files for the trainers, in immutable
version folders; the table `publications` registers the current version of everything.

Write, audit, publish: a step writes a new version folder and audits its files; only then
does `publish` run one short DuckLake transaction that swaps the partition (delete its rows,
register the new files with `ducklake_add_data_files`) and records the version in
`publications`. A conflict with another writer retries that transaction, never the write.
Readers see the previous snapshot or the new one, never half of either; a failed or killed
step leaves the published version as it was. A step reads through `Lake.pinned()`: the
registry once, at the snapshot current when it starts, for all of its inputs. Superseded
versions stay readable for `KD_PIPELINE_RETENTION_DAYS`, then DuckLake's snapshot expiry
and file cleanup remove them.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from kd_pipeline import ducklake, objectstore, settings
from kd_pipeline.checks.rules import PARQUET_READ
from kd_pipeline.settings import CatalogChoice

MANIFEST_NAME = "_manifest.json"  # written into export folders (provenance for the trainer)
PUBLICATIONS = "publications"  # the registry table, in the lake's `main` schema
_UNPARTITIONED = "_"
# Under this much room left, a failed commit is reported as a full disk (the catalog's
# commit writes a rollback journal and pages of a few KiB each).
LOW_DISK_BYTES = 4 * 1024 * 1024
# One DuckDB database per process, lake and mode, the extensions loaded and the lake attached
# once: a new database pays ~0.25 s per signed extension LOAD (the 35 MB files are verified
# on every load) plus the ATTACH, and a step made six of them (see Lake.connect).
_SHARED: dict[tuple[int, str, str, bool], duckdb.DuckDBPyConnection] = {}
_SHARED_LOCK = threading.Lock()
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
# The longest a catalog transaction waits for its turn on this machine (Lake._catalog_turn).
CATALOG_TURN_SECONDS = 120.0
_TURN = threading.local()  # whether this thread holds its catalog turn
# Keys whose versions stay files (the trainers read files) instead of DuckLake tables.
FILE_SCHEMAS = frozenset({"exports"})


class LakeError(Exception):
    """A lake operation that cannot proceed; the message says which asset and why."""


class PartitionBusyError(LakeError):
    """Another run on this machine is writing the same asset partition right now."""


def safe_name(value: str, what: str) -> str:
    """Return value if it is safe as one path component and hive partition value, else
    raise naming it.

    Asset key parts, partition keys and spec names all end up as folder names: this is the
    one gate that keeps them from escaping the lake (`..`, `/`, absolute paths, NUL, `=`).
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise LakeError(
            f"{what} {value!r} is not a safe name: use letters, digits and _ . + - "
            "(no path separators, no leading dot, no '..')"
        )
    return value


@dataclass
class StagedVersion:
    """A version being written: its key, partition, version id and local folder."""

    key: tuple[str, ...]
    partition: str | None
    version: str
    path: Path
    published: bool = field(default=False)

    def parquet_glob(self) -> str:
        return str(self.path / "*.parquet")


@dataclass(frozen=True)
class Publication:
    """What `publish` recorded: where the version lives and the DuckLake snapshot it made."""

    location: Path | str
    snapshot: int
    version: str


@dataclass(frozen=True)
class _Entry:
    """A registry row: the current version of an asset partition (location relative to the
    lake root)."""

    version: str
    location: str
    rows: int


@dataclass(frozen=True)
class _Pin:
    """The registry at one snapshot, and the lake's tables then ((schema, table) pairs)."""

    snapshot: int
    entries: Mapping[tuple[str, str], _Entry]
    tables: AbstractSet[tuple[str, str]]
    # manifests read so far, by asset then partition (a pinned manifest never changes)
    manifests: dict[str, dict[str, str]] = field(default_factory=dict)


class Lake:
    """Staging, atomic publication and reads of the lake at `root` with its catalog.

    root: a folder or an `s3://bucket/prefix` URL (default `settings.lake_root()`);
    catalog: the DuckLake metadata database (default `settings.catalog()`, which for a folder
    lake given here explicitly is `<root>/catalog.sqlite`); retention_days: how long
    superseded versions are kept (default `settings.retention_days()`, read when used)."""

    def __init__(
        self,
        root: Path | str | None = None,
        catalog: CatalogChoice | None = None,
        retention_days: float | None = None,
    ) -> None:
        if root is None:
            root = settings.lake_root()
        self.remote = isinstance(root, str) and "://" in root
        self.root: Path | str = str(root).rstrip("/") if self.remote else Path(root).resolve()
        if catalog is None:
            catalog = settings.catalog()
            if not os.environ.get(settings.CATALOG_ENV) and not self.remote:
                catalog = CatalogChoice("sqlite", str(Path(self.root) / "catalog.sqlite"))
        self.catalog = catalog
        self._retention_days = retention_days
        self._pin: _Pin | None = None  # set on the copies `pinned` returns
        # Locks, spill space and the staging of an object-store lake stay on this machine.
        self.work_dir = Path(self.root) if not self.remote else settings.data_home() / "lake-work"

    # ---- names and places ----------------------------------------------------------------
    def _key_parts(self, key: Sequence[str]) -> tuple[str, ...]:
        if not key:
            raise LakeError("an asset key needs at least one part")
        return tuple(safe_name(part, "asset key part") for part in key)

    def _partition_part(self, partition: str | None) -> str:
        return _UNPARTITIONED if partition is None else safe_name(partition, "partition key")

    def is_table(self, key: Sequence[str]) -> bool:
        """Whether key's versions are a DuckLake table (else an export's files)."""
        return self._key_parts(key)[0] not in FILE_SCHEMAS

    def table_name(self, key: Sequence[str]) -> tuple[str, str]:
        """(schema, table) of a key in the lake, both plain SQL identifiers."""
        parts = self._key_parts(key)
        return catalog_view_names([parts])[parts]

    def _relative_folder(self, key: tuple[str, ...], partition: str | None, version: str) -> str:
        if self.is_table(key):
            schema, table = self.table_name(key)
            hive = [] if partition is None else [f"partition={partition}"]
            return "/".join(["data", schema, table, *hive, version])
        return "/".join([*key, self._partition_part(partition), version])

    def _location(self, relative: str) -> Path | str:
        return f"{self.root}/{relative}" if self.remote else Path(self.root) / relative

    @property
    def data_path(self) -> str:
        """The DuckLake DATA_PATH (the `data/` folder or prefix of the lake), ending in `/`."""
        return f"{self.root}/data/"

    def scratch_dir(self) -> Path:
        """DuckDB spill space (the lake's disk for a folder lake, which has the room)."""
        path = self.work_dir / ".scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- connections ---------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with the lake attached as `lake` (`USE lake` done, so
        `SELECT * FROM lighton.raw` works). Raises ducklake.CatalogUnreachable naming the
        setting when the catalog or the data path cannot be opened.

        Calls made one after another in a process share one database (a new cursor each);
        a call made while another such connection is open (nested, or another thread) gets
        a database of its own: an idle open connection of the same database holds the SQLite
        catalog and makes the other's COMMIT fail with "database is locked". A connection
        whose block raised is not reused."""
        if not _SHARED_LOCK.acquire(blocking=False):
            con = duckdb.connect()
            try:
                self.attach(con, read_only=read_only)
                con.execute(f"USE {ducklake.ALIAS}")
                yield con
            finally:
                con.close()
            return
        key = (os.getpid(), str(self.root), self.catalog.attach_string, read_only)
        try:
            database = _SHARED.get(key)
            if database is None:
                database = duckdb.connect()
                try:
                    self.attach(database, read_only=read_only)
                except BaseException:
                    database.close()
                    raise
                _SHARED[key] = database
            con = database.cursor()
            try:
                con.execute(f"USE {ducklake.ALIAS}")
                yield con
            except BaseException:
                con.close()
                _SHARED.pop(key, None)
                database.close()
                raise
            con.close()
        finally:
            _SHARED_LOCK.release()

    def attach(self, con: duckdb.DuckDBPyConnection, *, read_only: bool = False) -> None:
        """Attach the lake to an existing connection (a step's engine connection). An
        object-store lake is first probed (`objectstore.probe`, once per process): ATTACH
        never touches the bucket. Raises ducklake.CatalogUnreachable naming the setting
        when the bucket or the catalog cannot be reached."""
        if self.remote:
            objectstore.probe(str(self.root))
        elif not read_only:
            Path(self.root, "data").mkdir(parents=True, exist_ok=True)

        def attach() -> None:
            ducklake.attach(con, self.catalog, self.data_path, read_only=read_only)

        new_sqlite = self.catalog.kind == "sqlite" and not Path(self.catalog.target).exists()
        if not new_sqlite or read_only:
            ducklake.with_retry(attach)
            return
        # DuckLake creates a new catalog's tables in several statements: two processes doing
        # it at once leave one with "database is locked". One creates it; the others wait.
        lock_file = self.work_dir / ".locks" / "catalog-init.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                ducklake.with_retry(attach)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- reads ---------------------------------------------------------------------------
    def pinned(self) -> Lake:
        """This lake fixed at the snapshot current now, for one step: every read of the copy
        (`is_published`, `parquet_glob`, `published_path`, `published_rows`,
        `published_partitions`, `manifest`) answers from the registry as it was at that
        snapshot (`publications AT (VERSION => n)`, read once), so a step sees one
        consistent state of all its inputs however many publishes land meanwhile, and its
        lineage names the snapshot (`read_snapshot`). Publishing through the copy works as
        through the lake. The Parquet files a pinned read names are the ones snapshot n
        references; they stay on disk for the retention period after they are replaced.
        Raises ducklake.CatalogUnreachable naming the setting."""
        pinned = copy.copy(self)
        pinned._pin = ducklake.with_retry(self._read_pin)
        return pinned

    @property
    def read_snapshot(self) -> int | None:
        """The snapshot a pinned lake reads at (0 on a lake nothing was published to yet);
        None when not pinned."""
        return None if self._pin is None else self._pin.snapshot

    def _read_pin(self) -> _Pin:
        with self._catalog_turn(exclusive=False), self.connect() as con:
            (snapshot,) = con.execute(
                "SELECT id FROM ducklake_current_snapshot($alias)", {"alias": ducklake.ALIAS}
            ).fetchone()
            tables = frozenset(
                con.execute(
                    "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = $db",
                    {"db": ducklake.ALIAS},
                ).fetchall()
            )
            if ("main", PUBLICATIONS) not in tables:
                return _Pin(int(snapshot), {}, tables)
            rows = con.execute(
                "SELECT asset, partition, version, location, rows "
                f"FROM main.{PUBLICATIONS} AT (VERSION => {int(snapshot)})"
            ).fetchall()
        entries = {
            (asset, part): _Entry(version, location, int(count or 0))
            for asset, part, version, location, count in rows
        }
        return _Pin(int(snapshot), entries, tables)

    def _current(
        self, key: Sequence[str], partition: str | None, *, live: bool = False
    ) -> _Entry | None:
        """The registry's entry for key and partition: from the pin when pinned (unless
        live), else read now."""
        asset = "/".join(self._key_parts(key))
        part = self._partition_part(partition)
        if self._pin is not None and not live:
            return self._pin.entries.get((asset, part))
        rows = self._registry(
            f"SELECT version, location, rows FROM main.{PUBLICATIONS} "
            "WHERE asset = $asset AND partition = $partition",
            {"asset": asset, "partition": part},
        )
        return _Entry(rows[0][0], rows[0][1], int(rows[0][2] or 0)) if rows else None

    def _registry(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Rows of a query on the registry as it is now; [] before the first publish."""

        def read() -> list[tuple]:
            with self._catalog_turn(exclusive=False), self.connect(read_only=False) as con:
                if not _has_table(con, "main", PUBLICATIONS):
                    return []
                return con.execute(sql, params or {}).fetchall()

        return ducklake.with_retry(read)

    def published_partitions(self, key: Sequence[str]) -> list[str]:
        """The partitions of key with a published version, sorted."""
        asset = "/".join(self._key_parts(key))
        if self._pin is not None:
            found = [part for (name, part) in self._pin.entries if name == asset]
        else:
            rows = self._registry(
                f"SELECT partition FROM main.{PUBLICATIONS} WHERE asset = $asset",
                {"asset": asset},
            )
            found = [part for (part,) in rows]
        return sorted(part for part in found if part != _UNPARTITIONED)

    def published_path(self, key: Sequence[str], partition: str | None = None) -> Path | str:
        """The folder (or URL) of the published version of key (and partition). Raises
        LakeError when nothing is published there."""
        current = self._current(key, partition)
        if current is None:
            where = _where(key, partition)
            raise LakeError(f"nothing published for {where}")
        return self._location(current.location)

    def parquet_glob(self, key: Sequence[str], partition: str | None = None) -> str | list[str]:
        """The published Parquet files of key (and partition) as a glob DuckDB reads; for
        a partitioned asset read whole (partition None), one glob per published partition.
        These are exactly the files the table's current snapshot references (a version is
        always registered and removed whole)."""
        partitions = self.published_partitions(key) if partition is None else []
        if partitions:
            return [f"{self.published_path(key, p)}/*.parquet" for p in partitions]
        return f"{self.published_path(key, partition)}/*.parquet"

    def is_published(self, key: Sequence[str], partition: str | None = None) -> bool:
        return self._current(key, partition) is not None

    def published_rows(
        self, key: Sequence[str], partition: str | None = None, *, live: bool = False
    ) -> int | None:
        """Rows of the published version (on a pinned lake: as of the pin, unless live),
        None when nothing is published."""
        current = self._current(key, partition, live=live)
        return None if current is None else current.rows

    def manifest(self, key: Sequence[str], partition: str | None = None) -> dict[str, Any]:
        """The manifest recorded with the published version (version, rows, snapshot,
        lineage, metadata), as of the pin on a pinned lake (the manifests of all of an
        asset's partitions read at once, on its first call); raises LakeError when nothing
        is published."""
        where = _where(key, partition)
        asset, part = "/".join(self._key_parts(key)), self._partition_part(partition)
        if self._pin is None:
            rows = self._registry(
                f"SELECT manifest FROM main.{PUBLICATIONS} "
                "WHERE asset = $asset AND partition = $partition",
                {"asset": asset, "partition": part},
            )
            found = rows[0][0] if rows else None
        else:
            if asset not in self._pin.manifests:
                self._pin.manifests[asset] = dict(
                    self._registry(
                        f"SELECT partition, manifest FROM main.{PUBLICATIONS} "
                        f"AT (VERSION => {self._pin.snapshot}) WHERE asset = $asset",
                        {"asset": asset},
                    )
                )
            found = self._pin.manifests[asset].get(part)
        if found is None:
            raise LakeError(f"nothing published for {where}")
        return json.loads(found)

    # ---- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catalog_turn(self, *, exclusive: bool) -> Iterator[None]:
        """This machine's processes take turns at the catalog: a write transaction
        (exclusive) waits for the reads and writes in flight here instead of colliding with
        them ("database is locked" on SQLite, a conflict on one table) and redoing itself on
        a new connection; reads share. Two flocks under `.locks/`: `catalog.gate`, held
        only while queueing, so a waiting writer is not starved by a stream of readers, and
        `catalog.lock`, shared or exclusive. Free to re-enter for a thread holding its turn;
        skipped by a process that cannot write `.locks/` (a read-only user). After
        CATALOG_TURN_SECONDS of waiting (a stuck process) the transaction goes ahead
        without its turn: DuckLake's conflict handling, retried by `ducklake.with_retry`,
        is what keeps it correct, as it does across machines."""
        if getattr(_TURN, "held", False):
            yield
            return
        folder = self.work_dir / ".locks"
        deadline = time.monotonic() + CATALOG_TURN_SECONDS
        with contextlib.ExitStack() as files:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                gate = files.enter_context(open(folder / "catalog.gate", "a+"))
                lock = files.enter_context(open(folder / "catalog.lock", "a+"))
            except OSError:  # a reader without write access to the lake's folder
                gate = lock = None
            if gate is None or lock is None:
                yield
                return
            queued = _flock_until(gate, fcntl.LOCK_EX, deadline)
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            turn = queued and _flock_until(lock, mode, deadline)
            if queued:
                fcntl.flock(gate, fcntl.LOCK_UN)
            _TURN.held = turn
            try:
                yield
            finally:
                _TURN.held = False
                if turn:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """An exclusive flock on `.locks/<name>.lock` on this machine (two runs here never
        write one partition at once; across machines, the last commit wins whole)."""
        lock_file = self.work_dir / ".locks" / f"{name}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise PartitionBusyError(
                    f"{name} is being written by another run; "
                    "this run leaves it alone (retry when that run has finished)"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- write, audit, publish -----------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, key: Sequence[str], partition: str | None = None) -> Iterator[StagedVersion]:
        """Hold the partition's writer lock and give a fresh, empty version folder on this
        machine (in place for a folder lake; staged for an object store).

        Call `publish` inside the block to make the version current. Leaving the block
        without publishing (an exception, a failed audit) deletes the folder."""
        parts = self._key_parts(key)
        part = self._partition_part(partition)
        with self._lock("/".join((*parts, part))):
            version = _version_id()
            relative = self._relative_folder(parts, partition, version)
            base = self.work_dir / ".staging" if self.remote else Path(self.root)
            path = base / relative
            if self.remote and path.parent.is_dir():
                # a killed writer's staged versions of this partition (its lock is ours now)
                for stale in path.parent.iterdir():
                    shutil.rmtree(stale, ignore_errors=True)
            path.mkdir(parents=True)
            staged = StagedVersion(parts, partition, version, path)
            try:
                yield staged
            finally:
                if self.remote or not staged.published:
                    shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: StagedVersion, manifest: Mapping[str, Any]) -> Publication:
        """Make a staged (and audited) version the current one in one short DuckLake
        transaction, retried on a conflict with another writer; the write is never redone.

        A table key: the partition's rows (all rows when unpartitioned) are deleted and the
        version's Parquet files registered; columns new to the table are added (older
        partitions read NULL there). An export key: its folder is registered, and a view
        `exports.<name>` over the current Parquet files of every partition is replaced.
        Returns where the version lives and the snapshot id. Raises LakeError when a
        column changed type or every retry conflicted (nothing is committed then)."""
        key, partition = staged.key, staged.partition
        relative = self._relative_folder(key, partition, staged.version)
        location = self._location(relative)
        record = {"version": staged.version, **manifest}
        if not self.is_table(key):
            (staged.path / MANIFEST_NAME).write_text(json.dumps(record, indent=2, default=str))
        where = _where(key, partition)
        if self.remote:
            try:
                objectstore.upload_folder(staged.path, str(location))
            except OSError as exc:
                with contextlib.suppress(OSError):
                    objectstore.delete_prefix(str(location))
                raise LakeError(
                    f"{where}: not published, the upload to {location} (KD_PIPELINE_LAKE) "
                    f"failed: {ducklake.first_line(exc)}"
                ) from exc
        else:
            _fsync_tree(staged.path)
        files = sorted(p.name for p in staged.path.glob("*.parquet"))
        asset = "/".join(key)

        paths = [f"{location}/{name}" for name in files]
        if self.is_table(key) and paths:
            self._create_table(key, partition, paths)
        message = f"publish {asset}" + (f" [{partition}]" if partition else "")
        row = {
            "asset": asset,
            "partition": self._partition_part(partition),
            "version": staged.version,
            "location": relative,
            "rows": int(manifest.get("rows", 0) or 0),
            "manifest": json.dumps(record, default=str),
            "run_id": str(manifest.get("run_id", "")),
        }

        def commit() -> int:
            with self._catalog_turn(exclusive=True), self.connect() as con:
                con.execute("BEGIN")
                try:
                    if self.is_table(key):
                        self._swap_partition(con, key, partition, paths)
                    _register(con, row)
                    if not self.is_table(key):
                        self._replace_export_view(con, key)
                    con.execute(
                        "CALL ducklake_set_commit_message($alias, 'kd-pipeline', $message, "
                        "extra_info => $extra)",
                        {"alias": ducklake.ALIAS, "message": message, "extra": json.dumps(row)},
                    )
                    con.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT has already ended the transaction.
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    raise
                (snapshot,) = con.execute(
                    "SELECT id FROM ducklake_last_committed_snapshot($alias)",
                    {"alias": ducklake.ALIAS},
                ).fetchone()
                return int(snapshot)

        try:
            snapshot = ducklake.with_retry(commit)
        except (LakeError, OSError) as exc:  # refused inside the commit: rolled back
            if self.remote:
                with contextlib.suppress(OSError):
                    objectstore.delete_prefix(str(location))
            if isinstance(exc, LakeError):  # a changed column type
                raise
            raise LakeError(  # the object store, listing an export's folders
                f"{where}: not published, KD_PIPELINE_LAKE {self.root} failed during the "
                f"commit: {ducklake.first_line(exc)}"
            ) from exc
        except (duckdb.Error, ducklake.CatalogUnreachable) as exc:
            if self._landed(key, partition, staged.version):
                # The COMMIT reached the catalog before its answer was lost (a dropped
                # connection): the version is published; deleting it would break the table.
                staged.published = True
                if not self.is_table(key) and not self.remote:
                    _point_current(Path(location))
                return Publication(location, self._snapshot_of(staged.version), staged.version)
            if self.remote:
                with contextlib.suppress(OSError):
                    objectstore.delete_prefix(str(location))
            raise LakeError(
                f"{where}: not published, the lake commit failed: {ducklake.first_line(exc)}"
                + self._full_disk_hint()
            ) from exc
        staged.published = True
        if not self.is_table(key) and not self.remote:
            _point_current(Path(location))
        try:
            self._expire_snapshots_if_due()
            if not self.is_table(key):  # one listing of this export's folders: every time
                self.expire_export_versions(key)
        except (duckdb.Error, ducklake.CatalogUnreachable, OSError) as exc:
            # Published is published: the next publish expires what this one could not.
            warnings.warn(f"{where}: old versions not expired: {exc}", stacklevel=2)
        return Publication(location, snapshot, staged.version)

    def _landed(self, key: Sequence[str], partition: str | None, version: str) -> bool:
        """Whether `version` is the published one (False when the catalog cannot say)."""
        try:
            current = self._current(key, partition, live=True)
        except (duckdb.Error, ducklake.CatalogUnreachable):
            return False
        return current is not None and current.version == version

    def _snapshot_of(self, version: str) -> int:
        """The snapshot whose commit published `version` (its commit's extra info names it)."""
        rows = self._registry(
            "SELECT max(snapshot_id) FROM snapshots() WHERE commit_extra_info LIKE $pattern",
            {"pattern": f'%"version": "{version}"%'},
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else -1

    def _full_disk_hint(self) -> str:
        """'; the disk is full: <folder> has N KiB free' for the lake's folder and its SQLite
        catalog's when either has under LOW_DISK_BYTES left, else ''. SQLite's 'database or
        disk is full' does not survive DuckLake's error ('Failed to commit DuckLake
        transaction', or a failed ROLLBACK), so the commit's failure is named from here."""
        folders = [] if self.remote else [Path(self.root)]
        if self.catalog.kind == "sqlite":
            folders.append(Path(self.catalog.target).parent)
        low = []
        for folder in dict.fromkeys(folders):
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(folder).free
                if free < LOW_DISK_BYTES:
                    low.append(f"{folder} has {free // 1024} KiB free")
        return f"; the disk is full: {', '.join(low)}" if low else ""

    def _create_table(self, key: tuple[str, ...], partition: str | None, files: list[str]) -> None:
        """Create the table of key from the first version's columns, in a transaction of
        its own (DuckLake takes table options only for committed tables): no rows inlined
        in the catalog, so a replaced version ends whole (its files leave the snapshot)
        instead of living on as inlined deletions."""
        schema, table = self.table_name(key)
        if self._pin is not None and (schema, table) in self._pin.tables:
            return  # it existed when the step started (no catalog round trip)

        def create() -> None:
            with self._catalog_turn(exclusive=True), self.connect() as con:
                if _has_table(con, schema, table):
                    return
                columns = ", ".join(
                    f"{quote_identifier(n)} {t}" for n, t in _table_columns(con, files, partition)
                )
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote_identifier(schema)}."
                    f"{quote_identifier(table)} ({columns})"
                )
                con.execute(
                    "CALL ducklake_set_option($alias, 'data_inlining_row_limit', 0, "
                    "schema => $schema, table_name => $table)",
                    {"alias": ducklake.ALIAS, "schema": schema, "table": table},
                )

        ducklake.with_retry(create)

    def _swap_partition(
        self,
        con: duckdb.DuckDBPyConnection,
        key: tuple[str, ...],
        partition: str | None,
        files: list[str],
    ) -> None:
        """Inside the commit: widen the table, delete the partition's rows (all rows when
        unpartitioned), register the version's files."""
        schema, table = self.table_name(key)
        target = f"{quote_identifier(schema)}.{quote_identifier(table)}"
        if not _has_table(con, schema, table):
            if files:  # dropped since the step started (DROP TABLE by hand)
                raise LakeError(f"{schema}.{table} was dropped during the run: run it again")
            return  # nothing was ever published with a file: nothing to replace
        if files:
            _widen(con, target, f"{schema}.{table}", _table_columns(con, files, partition))
        if partition is None:
            con.execute(f"DELETE FROM {target}")
        else:
            con.execute(f"DELETE FROM {target} WHERE partition = $p", {"p": partition})
        if files:  # one call registers the version's files (it takes a list)
            con.execute(
                "CALL ducklake_add_data_files($alias, $table, $files, schema => $schema, "
                "hive_partitioning => $hive, allow_missing => true)",
                {
                    "alias": ducklake.ALIAS,
                    "table": table,
                    "files": files,
                    "schema": schema,
                    "hive": partition is not None,
                },
            )

    def _replace_export_view(self, con: duckdb.DuckDBPyConnection, key: tuple[str, ...]) -> None:
        """Inside the commit: `exports.<name>` reads the current Parquet files of every
        partition of the export, on a folder or an object-store lake (none: no view; NDJSON
        and run files are not tables). The view globs each current version folder: version
        folders are immutable, so the glob reads exactly the files published."""
        schema, view = self.table_name(key)
        rows = con.execute(
            "SELECT partition, location FROM publications WHERE asset = $asset ORDER BY partition",
            {"asset": "/".join(key)},
        ).fetchall()
        selects = []
        for part, relative in rows:
            location = self._location(relative)
            if not self._has_parquet(location):
                continue
            column = "" if part == _UNPARTITIONED else f"{quote_literal(part)} AS partition, "
            selects.append(
                f"SELECT {column}* FROM read_parquet({quote_literal(f'{location}/*.parquet')})"
            )
        target = f"{quote_identifier(schema)}.{quote_identifier(view)}"
        if not selects:
            con.execute(f"DROP VIEW IF EXISTS {target}")
            return
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
        con.execute(f"CREATE OR REPLACE VIEW {target} AS " + " UNION ALL BY NAME ".join(selects))

    # ---- retention -----------------------------------------------------------------------
    @property
    def retention_days(self) -> float:
        """Days a superseded version is kept: the lake's own, else KD_PIPELINE_RETENTION_DAYS
        as it is now."""
        if self._retention_days is not None:
            return self._retention_days
        return settings.retention_days()

    def _retention_cutoff(self) -> str:
        return f"now() - INTERVAL {int(self.retention_days * 86400)} SECOND"

    def expire_snapshots(self) -> int:
        """Expire the lake's snapshots superseded more than `KD_PIPELINE_RETENTION_DAYS` ago
        and delete the data files only they referenced. Every snapshot that was current at
        some moment of that window is kept (the newest one older than the window included),
        so a version stays readable (time travel, a reader that started before the swap) for
        that long after it was replaced. Lake-wide: after a publish (at most every 10 minutes
        per machine, `_expiry_due`), and daily from the `lake_maintenance` schedule (a
        deployment where nothing publishes). Returns how many snapshots were expired."""
        cutoff = self._retention_cutoff()

        def expire() -> int:
            with self._catalog_turn(exclusive=True), self.connect() as con:
                alias = quote_literal(ducklake.ALIAS)
                (ids,) = con.execute(
                    "SELECT list(snapshot_id) FROM snapshots() WHERE snapshot_id < "
                    f"(SELECT max(snapshot_id) FROM snapshots() WHERE snapshot_time < {cutoff})"
                ).fetchone()
                if not ids:
                    return 0
                con.execute(
                    f"CALL ducklake_expire_snapshots({alias}, versions => $ids::UBIGINT[])",
                    {"ids": ids},
                )
                # what the expiry just released: no live snapshot references it any more
                con.execute(f"CALL ducklake_cleanup_old_files({alias}, cleanup_all => true)")
                return len(ids)

        return ducklake.with_retry(expire)

    def _expire_snapshots_if_due(self) -> None:
        """After a publish: `expire_snapshots` when this machine's turn is due
        (`_expiry_due`); a failed expiry gives the turn back, then raises."""
        if not _expiry_due(self):
            return
        try:
            self.expire_snapshots()
        except BaseException:
            _expiry_failed(self)
            raise

    def expire_export_versions(self, key: Sequence[str] | None = None) -> None:
        """Delete the superseded version folders of the export `key` (every export in the
        registry when None: the daily `lake_maintenance`) once the version that replaced
        each is older than the retention; a publish of an export does its own. Raises
        OSError when a listing or delete fails."""
        if key is not None:
            self._expire_export_versions(self._key_parts(key))
            return
        assets = self._registry(f"SELECT DISTINCT asset FROM main.{PUBLICATIONS}")
        for (asset,) in assets:
            parts = tuple(asset.split("/"))
            if not self.is_table(parts):
                self._expire_export_versions(parts)

    def _expire_export_versions(self, key: tuple[str, ...]) -> None:
        """Delete each version folder of an export whose replacement (the next version of
        its partition) was written more than the retention ago; a version the registry
        names current is never deleted (a failed upload's leftovers can sort after it).
        Folder and object-store lakes alike. Raises OSError when a listing or delete fails."""
        before = time.time() - self.retention_days * 86400
        current = {
            str(self._location(location))
            for (location,) in self._registry(
                "SELECT location FROM publications WHERE asset = $asset",
                {"asset": "/".join(key)},
            )
        }
        for versions in self._export_versions(key).values():
            for (old, _), (_, replaced_at) in itertools.pairwise(versions):
                if replaced_at < before and str(old) not in current:
                    if self.remote:
                        objectstore.delete_prefix(str(old))
                    else:
                        shutil.rmtree(old, ignore_errors=True)

    def _export_versions(self, key: tuple[str, ...]) -> dict[str, list[tuple[Path | str, float]]]:
        """Per partition folder of an export: (version folder, when its manifest was
        written, Unix seconds) of every version folder holding a manifest, in publish order
        (version ids start with their UTC time). One recursive listing on an object store;
        on a folder lake the `current` link is not a version."""
        found: dict[str, list[tuple[Path | str, float]]] = {}
        if self.remote:
            prefix = str(self._location("/".join(key)))
            for item in objectstore.list_objects(prefix, recursive=True):
                parts = item.url.removeprefix(prefix + "/").split("/")
                if len(parts) == 3 and parts[2] == MANIFEST_NAME:
                    version = f"{prefix}/{parts[0]}/{parts[1]}"
                    found.setdefault(parts[0], []).append((version, item.modified))
        else:
            for manifest in Path(self.root, *key).glob(f"*/*/{MANIFEST_NAME}"):
                if not manifest.parent.is_symlink():
                    entry = (manifest.parent, manifest.stat().st_mtime)
                    found.setdefault(manifest.parent.parent.name, []).append(entry)
        return {partition: sorted(versions) for partition, versions in found.items()}

    def _has_parquet(self, folder: Path | str) -> bool:
        """Whether a version folder (a path, or a URL on the object store) holds Parquet
        files at its top level."""
        if self.remote:
            return any(o.url.endswith(".parquet") for o in objectstore.list_objects(str(folder)))
        return any(Path(folder).glob("*.parquet"))

    def delete_orphaned_files(self) -> int:
        """Delete data files no snapshot references that are older than
        `KD_PIPELINE_RETENTION_DAYS` (a killed writer's; the age limit keeps the files of a
        writer still running, which DuckLake cannot tell from litter). DuckLake names them;
        the file of a current empty version is kept (DuckLake registers no file for 0 rows,
        but readers of that version need its schema). Run at the end of
        `kd-pipeline materialize` and daily by the `lake_maintenance` job. Returns how many
        files were deleted."""
        cutoff = self._retention_cutoff()

        def orphans() -> list[str]:
            with self._catalog_turn(exclusive=False), self.connect() as con:
                rows = con.execute(
                    "SELECT path FROM ducklake_delete_orphaned_files($alias, dry_run => true, "
                    f"older_than => {cutoff})",
                    {"alias": ducklake.ALIAS},
                ).fetchall()
            return [path for (path,) in rows]

        current = {
            str(self._location(location))
            for (location,) in self._registry("SELECT location FROM publications")
        }
        doomed = [
            path for path in ducklake.with_retry(orphans) if path.rsplit("/", 1)[0] not in current
        ]
        deleted = 0
        for path in doomed:
            try:
                if self.remote:
                    objectstore.delete_object(path)
                else:
                    Path(path).unlink(missing_ok=True)
            except OSError:  # the next cleanup tries again
                continue
            deleted += 1
        return deleted


# The longest this machine waits between two expiries of one lake after its publishes (a
# shorter retention expires more often: every quarter of it).
EXPIRY_INTERVAL_SECONDS = 600.0
_LAST_EXPIRY: dict[tuple[str, str], float] = {}  # where `.locks/` cannot be written


def _expiry_due(lake: Lake) -> bool:
    """Whether this publish also expires old versions: at most once per EXPIRY_INTERVAL_SECONDS
    (or a quarter of the retention, if shorter) per machine and lake. Expiry is a catalog
    transaction that scans every snapshot: after every publish it made each small step pay
    for it, while a version only has to go some time after its retention ends.

    The last expiry's time is the mtime of `_expiry_stamp(lake)`, shared by the processes of
    this machine: the daemon starts a process per run, and a per-process gate let each of
    them expire on its first publish. Per process when `.locks/` cannot be written (a
    read-only user). Two processes finding it due at once both expire: harmless. A stamp
    from the future (the clock set back) counts as due. `_expiry_failed` gives the turn
    back."""
    interval = min(EXPIRY_INTERVAL_SECONDS, lake.retention_days * 86400 / 4)
    stamp = _expiry_stamp(lake)
    now = time.time()
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if 0 <= now - stamp.stat().st_mtime < interval:
                return False
        stamp.touch()  # sets the mtime to now (a file of another user's too, if writable)
        return True
    except OSError:
        place = _expiry_place(lake)
        last = _LAST_EXPIRY.get(place)
        if last is not None and 0 <= now - last < interval:
            return False
        _LAST_EXPIRY[place] = now
        return True


def _expiry_failed(lake: Lake) -> None:
    """The expiry `_expiry_due` granted failed: the next publish on this machine tries
    again instead of waiting out the interval."""
    _LAST_EXPIRY.pop(_expiry_place(lake), None)
    with contextlib.suppress(OSError):
        _expiry_stamp(lake).unlink(missing_ok=True)


def _expiry_place(lake: Lake) -> tuple[str, str]:
    return (str(lake.root), lake.catalog.attach_string)


def _expiry_stamp(lake: Lake) -> Path:
    """`.locks/expiry-<hash of the lake's root and catalog>.stamp`: object-store lakes share
    one work folder on a machine (`$KD_PIPELINE_HOME/lake-work`)."""
    lake_hash = hashlib.sha256("\n".join(_expiry_place(lake)).encode()).hexdigest()[:16]
    return lake.work_dir / ".locks" / f"expiry-{lake_hash}.stamp"


CURRENT_LINK = "current"  # <export>/<partition>/current -> the published version folder


def _version_id() -> str:
    """A new version's id: its UTC time to the microsecond, then 8 random hex digits
    (`20261130T083811123456Z-a670641f`). Name order is publish order, also for two versions
    published within one second (the expiry of old export folders relies on it)."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


def _where(key: Sequence[str], partition: str | None) -> str:
    """`fam/asset [partition]`: how messages name an asset partition."""
    return "/".join(key) + (f" [{partition}]" if partition else "")


def _flock_until(handle: Any, mode: int, deadline: float) -> bool:
    """Take a flock on an open file, polling until `deadline` (time.monotonic()); False when
    it was not free by then."""
    wait = 0.001
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(wait)
            wait = min(wait * 2, 0.02)


def _point_current(version: Path) -> None:
    """Point `<partition folder>/current` at a just-committed export version (a folder
    lake): trainers load that one path; a glob over the partition folder would also read
    the older versions kept for the retention period. Swapped with one rename."""
    link = version.parent / CURRENT_LINK
    temporary = version.parent / f".{CURRENT_LINK}.{version.name}"
    temporary.unlink(missing_ok=True)
    os.symlink(version.name, temporary)
    os.replace(temporary, link)
    _fsync_dir(version.parent)


def _register(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
    """Inside the commit: make `row` the current version of its asset partition in the
    registry (`publications`: asset, partition, version, location relative to the lake
    root, rows, manifest JSON, run id, time)."""
    con.execute(
        f"CREATE TABLE IF NOT EXISTS main.{PUBLICATIONS} (asset VARCHAR, partition VARCHAR, "
        "version VARCHAR, location VARCHAR, rows BIGINT, manifest VARCHAR, run_id VARCHAR, "
        "published_at TIMESTAMP WITH TIME ZONE)"
    )
    con.execute(
        f"DELETE FROM main.{PUBLICATIONS} WHERE asset = $asset AND partition = $partition",
        {"asset": row["asset"], "partition": row["partition"]},
    )
    con.execute(
        f"INSERT INTO main.{PUBLICATIONS} VALUES ($asset, $partition, $version, $location, "
        "$rows, $manifest, $run_id, now())",
        row,
    )


def _has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    (found,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = $db AND schema_name = $s "
        "AND table_name = $t",
        {"db": ducklake.ALIAS, "s": schema, "t": table},
    ).fetchone()
    return bool(found)


def _table_columns(
    con: duckdb.DuckDBPyConnection, files: list[str], partition: str | None
) -> list[tuple[str, str]]:
    """(name, type) of the table a version's files make: `partition` first when the asset
    is partitioned, then the files' columns."""
    rows = con.execute(
        f"DESCRIBE SELECT * FROM read_parquet($files, {PARQUET_READ})",
        {"files": files},
    ).fetchall()
    columns = [(row[0], row[1]) for row in rows]
    return columns if partition is None else [("partition", "VARCHAR"), *columns]


def _widen(
    con: duckdb.DuckDBPyConnection, target: str, name: str, columns: list[tuple[str, str]]
) -> None:
    """Add the columns the table lacks; refuse a column whose type changed."""
    existing = {row[0]: row[1] for row in con.execute(f"DESCRIBE {target}").fetchall()}
    for column, kind in columns:
        if column not in existing:
            con.execute(f"ALTER TABLE {target} ADD COLUMN {quote_identifier(column)} {kind}")
        elif existing[column] != kind:
            raise LakeError(
                f"{name}: column {column} is {kind} in the new version but {existing[column]} "
                f"in the table; drop the table (DROP TABLE {name}) and materialise every "
                "partition again"
            )


def quote_identifier(name: str) -> str:
    """A DuckDB identifier, quoted (the only way a name reaches SQL text)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A DuckDB string literal, for the few places (COPY TO, CREATE VIEW) that take no
    parameters; every other value travels as a bound parameter."""
    if "\x00" in value:
        raise LakeError(f"NUL byte in {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _plain_identifier(text: str, reserved: AbstractSet[str]) -> str:
    """text as an identifier SQL takes unquoted: letters, digits and `_`, not starting with
    a digit, not a reserved word (those get a trailing `_`)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).lower()
    if not name or name[0].isdigit():
        name = "_" + name
    return name + "_" if name in reserved else name


# Schemas whose keys' last part already names the asset in full: an export's is
# `<format>_<name>`, unique among exports (kd_pipeline.exports.specs.load_export_specs).
LAST_PART_SCHEMAS = frozenset({"exports"})


def catalog_view_names(
    keys: Sequence[tuple[str, ...]], reserved: AbstractSet[str] | None = None
) -> dict[tuple[str, ...], tuple[str, str]]:
    """(schema, table) of each asset key in the lake, both plain identifiers: schema =
    the first part, table = the other parts joined by `_` (a one-part key repeats its
    name), except in the schemas of LAST_PART_SCHEMAS, whose table is the last part alone
    (an export key `exports/splade/splade_hofstaetter` reads `exports.splade_hofstaetter`).
    Two keys that would read the same get a short hash of the key on the second one."""
    reserved = _RESERVED if reserved is None else reserved
    names: dict[tuple[str, ...], tuple[str, str]] = {}
    taken: set[tuple[str, str]] = set()
    for key in sorted(keys):
        schema = _plain_identifier(key[0], reserved)
        parts = key[-1:] if key[0] in LAST_PART_SCHEMAS else key[1:]
        view = _plain_identifier("_".join(parts) or key[0], reserved)
        if (schema, view) in taken:
            digest = hashlib.sha256("/".join(key).encode()).hexdigest()[:8]
            view = f"{view}_{digest}"
        taken.add((schema, view))
        names[key] = (schema, view)
    return names


def _reserved_words() -> frozenset[str]:
    rows = duckdb.sql(
        "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
    ).fetchall()
    return frozenset(row[0].lower() for row in rows)


_RESERVED = _reserved_words()


def _fsync_tree(path: Path) -> None:
    """Flush written files so a crash after the commit cannot leave empty files."""
    for child in path.rglob("*"):
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
