"""Where kd-pipeline keeps its data and where it reads upstream files from.

Every environment variable the pipeline honours is read here and nowhere else, at run time
(never at import), so a test or a deployment changes behaviour by setting variables only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SourceMode = Literal["sample", "mirror", "hub"]

HOME_ENV = "KD_PIPELINE_HOME"
HTTP_MIRROR_ENV = "KD_PIPELINE_HTTP_MIRROR"
LAKE_ENV = "KD_PIPELINE_LAKE"
MIRROR_ENV = "KD_PIPELINE_MIRROR"
SOURCE_ENV = "KD_PIPELINE_SOURCE"
SAMPLE_ROWS_ENV = "KD_PIPELINE_SAMPLE_ROWS"
MEMORY_LIMIT_ENV = "KD_PIPELINE_DUCKDB_MEMORY"
THREADS_ENV = "KD_PIPELINE_DUCKDB_THREADS"
ZSTD_LEVEL_ENV = "KD_PIPELINE_ZSTD_LEVEL"
DEFAULT_ZSTD_LEVEL = 3  # DuckDB's own default
MAX_SHRINK_ENV = "KD_PIPELINE_MAX_SHRINK"
DEFAULT_MAX_SHRINK = 0.5
ZENODO_API_ENV = "KD_PIPELINE_ZENODO_API"
DEFAULT_ZENODO_API = "https://zenodo.org/api"


def data_home() -> Path:
    """`$KD_PIPELINE_HOME`, else `$XDG_DATA_HOME/kd-pipeline`, else `~/.local/share/kd-pipeline`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(xdg).expanduser() / "kd-pipeline").resolve()


def lake_root() -> Path:
    """The lake: `$KD_PIPELINE_LAKE`, else `<data home>/lake`."""
    if os.environ.get(LAKE_ENV):
        return Path(os.environ[LAKE_ENV]).expanduser().resolve()
    return data_home() / "lake"


def sample_mirror_root() -> Path:
    """Where the generated sample mirror lives (one folder per sample size)."""
    return data_home() / "sample-mirror"


@dataclass(frozen=True)
class SourceChoice:
    """Which of the three sources upstream files come from."""

    mode: SourceMode
    mirror: Path | None  # the mirror folder for "mirror"; None for "sample" and "hub"


def source_choice() -> SourceChoice:
    """`KD_PIPELINE_SOURCE=hub` -> the network; `KD_PIPELINE_MIRROR=DIR` -> a local mirror;
    neither -> the sample mirror (generated on first use)."""
    requested = os.environ.get(SOURCE_ENV, "").strip().lower()
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if requested not in ("", "sample", "mirror", "hub"):
        raise ValueError(f"{SOURCE_ENV}={requested!r}: expected one of sample, mirror, hub")
    if requested == "hub":
        return SourceChoice("hub", None)
    if mirror and requested in ("", "mirror"):
        return SourceChoice("mirror", Path(mirror).expanduser().resolve())
    if requested == "mirror":
        raise ValueError(f"{SOURCE_ENV}=mirror needs {MIRROR_ENV}=DIR")
    return SourceChoice("sample", None)


def sample_rows_per_config() -> int:
    """Rows per LightOn config in the generated sample (`KD_PIPELINE_SAMPLE_ROWS`)."""
    from kd_pipeline.sample import DEFAULT_ROWS_PER_CONFIG

    raw = os.environ.get(SAMPLE_ROWS_ENV, "").strip()
    if not raw:
        return DEFAULT_ROWS_PER_CONFIG
    if not raw.isdigit():
        raise ValueError(f"{SAMPLE_ROWS_ENV}={raw!r}: expected a non-negative integer")
    return int(raw)


def duckdb_memory_limit() -> str:
    """Per-step DuckDB memory limit; DuckDB spills to the lake's scratch folder past it."""
    return os.environ.get(MEMORY_LIMIT_ENV, "4GB")


def duckdb_threads() -> int:
    """Per-step DuckDB threads (default: all cores)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else (os.cpu_count() or 1)


def zstd_level() -> int:
    """The zstd level of every Parquet file the pipeline writes (`KD_PIPELINE_ZSTD_LEVEL`,
    1-22, default 3): 1 writes about a third faster for files about a sixth larger."""
    raw = os.environ.get(ZSTD_LEVEL_ENV, "").strip()
    if not raw:
        return DEFAULT_ZSTD_LEVEL
    if not raw.isdigit() or not 1 <= int(raw) <= 22:
        raise ValueError(f"{ZSTD_LEVEL_ENV}={raw!r}: expected a zstd level from 1 to 22")
    return int(raw)


def max_shrink() -> float:
    """The largest fraction of a published partition's rows that a new read of upstream may
    lose before its publish is blocked (`KD_PIPELINE_MAX_SHRINK`, 0-1, default 0.5; 1 accepts
    any shrink, an empty upstream included)."""
    raw = os.environ.get(MAX_SHRINK_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SHRINK
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ValueError(f"{MAX_SHRINK_ENV}={raw!r}: expected a fraction from 0 to 1")
    return value


def hf_endpoint() -> str | None:
    """`HF_ENDPOINT`, read per call (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def http_mirror() -> str | None:
    """`KD_PIPELINE_HTTP_MIRROR=URL`: fetch plain URLs as `<URL>/<host>/<path>` instead (an
    HTTP server holding the `url/` half of a mirror, e.g. an artifact proxy)."""
    value = os.environ.get(HTTP_MIRROR_ENV, "").strip().rstrip("/")
    return value or None


def zenodo_api() -> str:
    """`KD_PIPELINE_ZENODO_API=URL`: the Zenodo REST API the upstream sensor asks for record
    metadata (`URL/records/<id>`), e.g. a local server or a proxy; default Zenodo's own."""
    value = os.environ.get(ZENODO_API_ENV, "").strip().rstrip("/")
    return value or DEFAULT_ZENODO_API


def hub_timeout() -> float:
    """Seconds an upstream metadata request (a Hub listing, a Zenodo record) may take
    (`KD_PIPELINE_HUB_TIMEOUT`, default 30); file downloads use huggingface_hub's own
    `HF_HUB_DOWNLOAD_TIMEOUT`."""
    raw = os.environ.get("KD_PIPELINE_HUB_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else 30.0
    except ValueError:
        raise ValueError(f"KD_PIPELINE_HUB_TIMEOUT={raw!r}: expected a number of seconds") from None
