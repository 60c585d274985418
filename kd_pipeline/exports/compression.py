"""Gzip at a chosen level, on every core: independent gzip members compressed in parallel.

A gzip file may be a concatenation of members (RFC 1952), and every reader the exports
serve (Python's `gzip`, light-splade's loader, DuckDB, `zcat`) reads it as one stream. So
the input is cut into fixed-size blocks, each block is compressed as its own member on a
thread (zlib releases the GIL while it works), and the members are written in order: the
output is deterministic (no timestamps, same blocks) whatever the thread count.
"""

from __future__ import annotations

import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

MEMBER_BYTES = 8 << 20  # per member: big enough that the per-member cost is noise
_GZIP_WBITS = 31  # zlib's gzip wrapper (16 + 15): header with mtime 0, CRC32 trailer


def gzip_member(data: bytes, level: int) -> bytes:
    """One complete gzip member holding data."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzip_file(
    source: Path, target: Path, level: int = 6, threads: int = 1, member_bytes: int = MEMBER_BYTES
) -> int:
    """Compress source into target (multi-member when the file spans several blocks);
    return the bytes written. At most 2 x threads blocks are held in memory."""
    if not 0 <= level <= 9:
        raise ValueError(f"gzip level {level}: expected 0..9")
    written = 0
    with (
        open(source, "rb") as src,
        open(target, "wb") as out,
        ThreadPoolExecutor(max(1, threads)) as pool,
    ):
        pending: deque[Future[bytes]] = deque()
        while block := src.read(member_bytes):
            pending.append(pool.submit(gzip_member, block, level))
            if len(pending) >= 2 * max(1, threads):
                written += out.write(pending.popleft().result())
        while pending:
            written += out.write(pending.popleft().result())
        if written == 0:  # an empty file is still a valid gzip stream
            written += out.write(gzip_member(b"", level))
    return written
