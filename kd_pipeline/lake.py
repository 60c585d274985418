"""The lake: where every asset partition is published, atomically, as a Parquet dataset.

Layout under the lake root::

    <key path>/<partition>          -> symlink to the published version (partitioned asset)
    <key path>                      -> symlink to the published version (unpartitioned asset)
    .versions/<key path>/<partition or _>/<version>/   part-*.parquet + _manifest.json
    .staging/<key path>/<partition or _>/<version>/    being written; never read as data
    .locks/                         one lock file per partition writer, one for the catalog
    .scratch/                       DuckDB spill space
    catalog.duckdb                  views over everything published

Write, audit, publish: a step writes a new version under `.staging`, audits it, then
`publish` moves it under `.versions` and swaps the symlink with one atomic `rename`. A
reader therefore sees the old version or the new one, never half of either; a failed or
killed step leaves the published version untouched, and its staging litter is removed the
next time that partition is written. The previous version is kept until the next publish
so that a reader that resolved the link a moment before the swap can finish.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

MANIFEST_NAME = "_manifest.json"
CATALOG_NAME = "catalog.duckdb"
_UNPARTITIONED = "_"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}$")


class LakeError(Exception):
    """A lake operation that cannot proceed; the message says which path and why."""


class PartitionBusyError(LakeError):
    """Another run is writing the same asset partition right now."""


def safe_name(value: str, what: str) -> str:
    """Return value if it is safe as one path component, else raise naming it.

    Asset key parts, partition keys and spec names all end up as folder names: this is the
    one gate that keeps them from escaping the lake (`..`, `/`, absolute paths, NUL).
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise LakeError(
            f"{what} {value!r} is not a safe name: use letters, digits and _ . = + - "
            "(no path separators, no leading dot, no '..')"
        )
    return value


@dataclass(frozen=True)
class StagedVersion:
    """A version being written: its folder, and where it will be published."""

    key: tuple[str, ...]
    partition: str | None
    version: str
    path: Path

    def parquet_glob(self) -> str:
        return str(self.path / "*.parquet")


class Lake:
    """Paths, staging and atomic publication under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    # ---- paths -------------------------------------------------------------------------
    def _key_parts(self, key: Sequence[str]) -> tuple[str, ...]:
        if not key:
            raise LakeError("an asset key needs at least one part")
        return tuple(safe_name(part, "asset key part") for part in key)

    def _partition_part(self, partition: str | None) -> str:
        return _UNPARTITIONED if partition is None else safe_name(partition, "partition key")

    def published_path(self, key: Sequence[str], partition: str | None = None) -> Path:
        """Where readers find the published Parquet dataset of key (and partition)."""
        path = self.root.joinpath(*self._key_parts(key))
        return path if partition is None else path / self._partition_part(partition)

    def parquet_glob(self, key: Sequence[str], partition: str | None = None) -> str:
        """A glob of the published Parquet files (all partitions when partition is None and
        the asset is partitioned)."""
        path = self.published_path(key, partition)
        if partition is None and path.is_dir() and not path.is_symlink():
            return str(path / "*" / "*.parquet")
        return str(path / "*.parquet")

    def is_published(self, key: Sequence[str], partition: str | None = None) -> bool:
        path = self.published_path(key, partition)
        return path.is_symlink() and path.exists()

    def published_rows(self, key: Sequence[str], partition: str | None = None) -> int | None:
        """Rows of the published version (from the Parquet footers), None when nothing is
        published."""
        if not self.is_published(key, partition):
            return None
        files = sorted(self.published_path(key, partition).glob("*.parquet"))
        if not files:
            return 0
        con = duckdb.connect()
        try:
            (rows,) = con.execute(
                "SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata($files)",
                {"files": [str(f) for f in files]},
            ).fetchall()[0]
        finally:
            con.close()
        return int(rows)

    def manifest(self, key: Sequence[str], partition: str | None = None) -> dict[str, Any]:
        """The manifest written with the published version (row count, version, metadata)."""
        path = self.published_path(key, partition) / MANIFEST_NAME
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise LakeError(f"nothing published at {path.parent}") from exc

    def _versions_dir(self, key: tuple[str, ...], partition: str | None) -> Path:
        return self.root / ".versions" / Path(*key) / self._partition_part(partition)

    def _staging_dir(self, key: tuple[str, ...], partition: str | None) -> Path:
        return self.root / ".staging" / Path(*key) / self._partition_part(partition)

    def scratch_dir(self) -> Path:
        """DuckDB spill space (on the lake's disk, which has the room)."""
        path = self.root / ".scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str, *, wait: bool) -> Iterator[None]:
        """An exclusive flock on `.locks/<name>.lock` (name: safe parts joined by '/')."""
        lock_file = self.root / ".locks" / f"{name}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as handle:
            flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle, flags)
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
        """Hold the partition's writer lock and give a fresh staging folder.

        Call `publish` inside the block to make the version visible. Leaving the block
        without publishing (an exception, a failed audit) deletes the staging folder.
        """
        parts = self._key_parts(key)
        part = self._partition_part(partition)
        with self._lock("/".join((*parts, part)), wait=False):
            staging_parent = self._staging_dir(parts, partition)
            # Litter from killed runs: safe to remove, we hold the only writer lock.
            shutil.rmtree(staging_parent, ignore_errors=True)
            version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
            path = staging_parent / version
            path.mkdir(parents=True)
            staged = StagedVersion(parts, partition, version, path)
            try:
                yield staged
            finally:
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, staged: StagedVersion, manifest: Mapping[str, Any]) -> Path:
        """Make a staged version the published one with a single atomic rename."""
        (staged.path / MANIFEST_NAME).write_text(
            json.dumps({"version": staged.version, **manifest}, indent=2, default=str)
        )
        _fsync_tree(staged.path)
        published = self.published_path(staged.key, staged.partition)
        if published.exists() and not published.is_symlink():
            raise LakeError(f"{published} exists and is not a lake link; move it away first")
        previous = Path(os.readlink(published)).name if published.is_symlink() else None
        versions = self._versions_dir(staged.key, staged.partition)
        versions.mkdir(parents=True, exist_ok=True)
        final = versions / staged.version
        os.rename(staged.path, final)

        published.parent.mkdir(parents=True, exist_ok=True)
        link_tmp = published.with_name(f".{published.name}.{staged.version}.link")
        os.symlink(os.path.relpath(final, published.parent), link_tmp)
        os.replace(link_tmp, published)
        _fsync_dir(published.parent)
        self._drop_old_versions(versions, keep={final.name, previous})
        return published

    def _drop_old_versions(self, versions: Path, keep: set[str | None]) -> None:
        for old in versions.iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    # ---- catalog -------------------------------------------------------------------------
    def published_assets(self) -> dict[tuple[str, ...], bool]:
        """Every published asset key, mapped to whether it is partitioned."""
        found: dict[tuple[str, ...], bool] = {}
        for dirpath, dirnames, _ in os.walk(self.root):
            here = Path(dirpath)
            rel = here.relative_to(self.root).parts
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in list(dirnames):
                child = here / name
                if child.is_symlink():
                    dirnames.remove(name)
                    if not child.exists():
                        continue
                    if (child / MANIFEST_NAME).exists() and _is_partition_link(child):
                        found[rel] = True
                    else:
                        found[(*rel, name)] = False
        return dict(sorted(found.items()))

    def rebuild_catalog(self) -> Path:
        """Rewrite `catalog.duckdb` with one view per published asset, then swap it in.

        Views are named so plain SQL needs no quotes: schema = the key's first part, view =
        the other parts joined by `_` (`text/msmarco_passage/collection` ->
        `text.msmarco_passage_collection`), see `catalog_view_names`.

        The new catalog is built in a temporary file and renamed over the old one, so a
        person browsing the catalog never blocks a run and never sees it half-built.
        """
        target = self.root / CATALOG_NAME
        with self._lock("catalog", wait=True):
            tmp = self.root / f".{CATALOG_NAME}.{secrets.token_hex(4)}.tmp"
            try:
                con = duckdb.connect(str(tmp))
                try:
                    published = self.published_assets()
                    names = catalog_view_names(list(published), _reserved_words(con))
                    for key, partitioned in published.items():
                        _create_view(con, names[key], self.parquet_glob(key), partitioned)
                finally:
                    con.close()
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target


def _is_partition_link(link: Path) -> bool:
    """A partition link points into `.versions/<key>/<partition>/`, an unpartitioned asset's
    link into `.versions/<key>/_/`."""
    return Path(os.readlink(link)).parent.name != _UNPARTITIONED


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
    keys: Sequence[tuple[str, ...]], reserved: AbstractSet[str] = frozenset()
) -> dict[tuple[str, ...], tuple[str, str]]:
    """(schema, view) of each asset key in the catalog, both plain identifiers: schema =
    the first part, view = the other parts joined by `_` (a one-part key repeats its name),
    except in the schemas of LAST_PART_SCHEMAS, whose view is the last part alone (an
    export key `exports/splade/splade_hofstaetter` reads `exports.splade_hofstaetter`).
    Two keys that would read the same get a short hash of the key on the second one."""
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


def _reserved_words(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
    ).fetchall()
    return {row[0].lower() for row in rows}


def _create_view(
    con: duckdb.DuckDBPyConnection, name: tuple[str, str], glob: str, partitioned: bool
) -> None:
    schema, view = name
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
    source = f"read_parquet({quote_literal(glob)}, union_by_name = true, filename = true)"
    partition_col = ", split_part(filename, '/', -2) AS partition" if partitioned else ""
    con.execute(
        f"CREATE OR REPLACE VIEW {quote_identifier(schema)}.{quote_identifier(view)} AS "
        f"SELECT * EXCLUDE (filename){partition_col} FROM {source}"
    )


def _fsync_tree(path: Path) -> None:
    """Flush written files so a crash after the rename cannot publish empty files."""
    for child in path.iterdir():
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
