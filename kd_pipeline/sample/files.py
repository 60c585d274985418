"""Byte-identical files for the sample mirror: stable seeds, files written under a
temporary name and renamed, archives with fixed metadata, header-less TSV lines.

Everything is derived from stable hashes (never ``hash()`` or global random state), so the
same arguments give byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kd_pipeline.fetch import mirror_path_for_url

_ROW_GROUP_SIZE = 128  # small, so a default-size sample already has several row groups
_ARCHIVE_MTIME = 1_546_300_800  # 2019-01-01: fixed, so archives are byte-identical


def stable_seed(*parts: object) -> int:
    """A process-independent 64-bit seed (``hash()`` is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a hidden temp name then os.replace, so no half file ever has the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Write a parquet file with fixed options (no timestamps; created_by is the only stamp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=_ROW_GROUP_SIZE,
            compression="snappy",
            use_dictionary=True,
            write_statistics=True,
            write_page_index=False,
            store_schema=True,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def tar_gz(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A .tar.gz with fixed metadata (mtime, owner, mode) and a gzip header without a time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _ARCHIVE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def zip_archive(members: Sequence[tuple[str, bytes | None]]) -> bytes:
    """A .zip with fixed timestamps; a None payload is a folder entry, as BEIR's zips have."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2019, 1, 1, 0, 0, 0))
            info.create_system = 3
            if data is None:
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buf.getvalue()


def url_path(out: Path, url: str) -> Path:
    """Where a plain URL lives in the mirror (`url/<host>/<path>`, query dropped)."""
    path = mirror_path_for_url(out, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def tsv_lines(rows: Sequence[Sequence[object]], sep: str = "\t") -> bytes:
    return "".join(sep.join(str(v) for v in row) + "\n" for row in rows).encode("utf-8")


def distinct_ids(rng: random.Random, count: int, low: int, high: int) -> list[str]:
    return [str(i) for i in sorted(rng.sample(range(low, high), count))]
