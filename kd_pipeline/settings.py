"""Where kd-pipeline keeps its data and where it reads upstream files from.

Every environment variable the pipeline honours is read here and nowhere else, and each has
one rule: a `parse_*` function from its raw value (blank: the default) to what the pipeline
uses, raising ValueError with one line naming the variable. The reading functions apply it
at run time; the Dagster resources apply it to their fields when the code location loads
(`kd_pipeline.resources`). Nothing is read when this module is imported.
"""

from __future__ import annotations

import enum
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class UpstreamMode(enum.StrEnum):
    """Where upstream files come from: the generated sample, a local mirror folder, or the
    network (the Hub, Zenodo and the other hosts)."""

    SAMPLE = "sample"
    MIRROR = "mirror"
    HUB = "hub"


HOME_ENV = "KD_PIPELINE_HOME"
HTTP_MIRROR_ENV = "KD_PIPELINE_HTTP_MIRROR"
LAKE_ENV = "KD_PIPELINE_LAKE"
CATALOG_ENV = "KD_PIPELINE_CATALOG"
RETENTION_ENV = "KD_PIPELINE_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 7.0
OBJECT_STORE_SCHEMES = ("s3",)  # DuckDB's httpfs; AWS_* variables give credentials and endpoint
MIRROR_ENV = "KD_PIPELINE_MIRROR"
SOURCE_ENV = "KD_PIPELINE_SOURCE"
SAMPLE_ROWS_ENV = "KD_PIPELINE_SAMPLE_ROWS"
DEFAULT_SAMPLE_ROWS_PER_CONFIG = 200  # rows per LightOn config in the generated sample
MEMORY_LIMIT_ENV = "KD_PIPELINE_DUCKDB_MEMORY"
THREADS_ENV = "KD_PIPELINE_DUCKDB_THREADS"
ZSTD_LEVEL_ENV = "KD_PIPELINE_ZSTD_LEVEL"
DEFAULT_ZSTD_LEVEL = 3  # DuckDB's own default
HUB_TIMEOUT_ENV = "KD_PIPELINE_HUB_TIMEOUT"
REFRESH_CRON_ENV = "KD_PIPELINE_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 3 * * 1"  # Mondays, 03:00
MAX_SHRINK_ENV = "KD_PIPELINE_MAX_SHRINK"
DEFAULT_MAX_SHRINK = 0.5
ZENODO_API_ENV = "KD_PIPELINE_ZENODO_API"
DEFAULT_ZENODO_API = "https://zenodo.org/api"


def value_of(variable: str) -> str | None:
    """An environment variable's value, None when it is unset or blank (blank counts as
    unset everywhere here); the resources bind a variable that has one as `dg.EnvVar`."""
    return os.environ.get(variable, "").strip() or None


def data_home() -> Path:
    """`$KD_PIPELINE_HOME`, else `$XDG_DATA_HOME/kd-pipeline`, else `~/.local/share/kd-pipeline`."""
    return parse_data_home(os.environ.get(HOME_ENV, ""))


def parse_data_home(raw: str) -> Path:
    """A KD_PIPELINE_HOME value as an absolute folder (blank: the XDG default)."""
    if raw.strip():
        return Path(raw.strip()).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(xdg).expanduser() / "kd-pipeline").resolve()


def lake_root() -> Path | str:
    """The lake's data path: `$KD_PIPELINE_LAKE`, else `<data home>/lake` (see
    `parse_lake_root`)."""
    return parse_lake_root(os.environ.get(LAKE_ENV, ""))


def parse_lake_root(raw: str) -> Path | str:
    """A KD_PIPELINE_LAKE value (blank: `<data home>/lake`): a folder (a Path), or an
    object-store URL kept as a string (`s3://bucket/prefix`, never taken for a local path).
    Raises ValueError naming the variable for any other URL scheme or an s3 URL without a
    bucket."""
    raw = raw.strip()
    if not raw:
        return data_home() / "lake"
    parsed = urllib.parse.urlsplit(raw)
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        if not parsed.netloc or parsed.query or parsed.fragment:
            raise ValueError(f"{LAKE_ENV}={raw!r}: expected s3://bucket or s3://bucket/prefix")
        return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]+", parsed.scheme) and raw.startswith(
        parsed.scheme + "://"
    ):
        raise ValueError(
            f"{LAKE_ENV}={raw!r}: the {parsed.scheme}:// scheme is not supported; use a "
            "folder or s3://bucket/prefix (S3-compatible stores through AWS_ENDPOINT_URL)"
        )
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class CatalogChoice:
    """The DuckLake metadata database: `kind` sqlite (a file) or postgres (a libpq
    connection string), and what DuckLake's ATTACH takes after `ducklake:`."""

    kind: Literal["sqlite", "postgres"]
    target: str

    @property
    def attach_string(self) -> str:
        return f"ducklake:{self.kind}:{self.target}"

    def describe(self) -> str:
        """The catalog for a log line (`catalog()` refuses a password in the string)."""
        return f"{self.kind}:{self.target}"


def catalog() -> CatalogChoice:
    """`KD_PIPELINE_CATALOG`: `sqlite:PATH` or `postgres:<libpq connection string>`
    (`dbname=kd host=db.internal user=kd`); default `sqlite:<lake>/catalog.sqlite` for a
    folder lake, `sqlite:<data home>/catalog.sqlite` for an object-store lake. Raises
    ValueError naming the variable for any other form."""
    try:
        root: Path | str = lake_root()
    except ValueError:  # reported once, as KD_PIPELINE_LAKE's problem
        root = ""
    return parse_catalog(os.environ.get(CATALOG_ENV, ""), root)


def parse_catalog(raw: str, lake: Path | str) -> CatalogChoice:
    """A KD_PIPELINE_CATALOG value (blank: `sqlite:<lake>/catalog.sqlite` for a folder lake,
    `sqlite:<data home>/catalog.sqlite` otherwise); `CatalogChoice.describe()` reads back as
    the same choice. Raises ValueError naming the variable for any other form."""
    raw = raw.strip()
    if not raw:
        folder = lake if isinstance(lake, Path) else data_home()
        return CatalogChoice("sqlite", str(folder / "catalog.sqlite"))
    kind, _, target = raw.partition(":")
    if kind == "sqlite" and target.strip():
        return CatalogChoice("sqlite", str(Path(target.strip()).expanduser().resolve()))
    if kind in ("postgres", "postgresql") and target.strip():
        if re.search(r"(^|\s)password\s*=|://[^/@\s]*:[^/@\s]*@", target):
            raise ValueError(
                f"{CATALOG_ENV}: a password in the connection string is refused (it would "
                "reach logs and run metadata); give it in PGPASSWORD or ~/.pgpass"
            )
        return CatalogChoice("postgres", target.strip())
    raise ValueError(
        f"{CATALOG_ENV}={raw!r}: expected sqlite:PATH or postgres:<libpq connection string> "
        "(e.g. postgres:dbname=kd host=127.0.0.1 user=kd)"
    )


def retention_days() -> float:
    """`KD_PIPELINE_RETENTION_DAYS` (default 7): how long superseded lake snapshots, their
    data files and old export versions are kept. It must exceed the longest write: files a
    writer has not committed yet are only removed once older than this."""
    return parse_retention_days(os.environ.get(RETENTION_ENV, ""))


def parse_retention_days(raw: str | float) -> float:
    """A KD_PIPELINE_RETENTION_DAYS value (blank: 7) as a positive number of days;
    ValueError naming the variable otherwise."""
    return _positive_number(RETENTION_ENV, str(raw), DEFAULT_RETENTION_DAYS, "days")


@dataclass(frozen=True)
class SourceChoice:
    """Which of the three sources upstream files come from."""

    mode: UpstreamMode
    mirror: Path | None  # the mirror folder for "mirror"; None for "sample" and "hub"


def source_choice() -> SourceChoice:
    """`KD_PIPELINE_SOURCE=hub` -> the network; `KD_PIPELINE_MIRROR=DIR` -> a local mirror;
    neither -> the sample mirror (generated on first use); see `parse_source`."""
    return parse_source(os.environ.get(SOURCE_ENV, ""), os.environ.get(MIRROR_ENV, ""))


def parse_source(requested: str, mirror: str) -> SourceChoice:
    """The source a KD_PIPELINE_SOURCE value (blank: a mirror when KD_PIPELINE_MIRROR is
    given, else the sample) and a KD_PIPELINE_MIRROR value select. Raises ValueError naming
    the variable for an unknown source, or `mirror` without a folder."""
    mirror = mirror.strip()
    mode = parse_mode(requested) if requested.strip() else None
    if mode is UpstreamMode.HUB:
        return SourceChoice(mode, None)
    if mirror and mode in (None, UpstreamMode.MIRROR):
        return SourceChoice(UpstreamMode.MIRROR, Path(mirror).expanduser().resolve())
    if mode is UpstreamMode.MIRROR:
        raise ValueError(f"{SOURCE_ENV}=mirror needs {MIRROR_ENV}=DIR")
    return SourceChoice(UpstreamMode.SAMPLE, None)


def parse_mode(raw: str) -> UpstreamMode:
    """A KD_PIPELINE_SOURCE value (any case) as an UpstreamMode; ValueError naming the
    variable otherwise."""
    requested = str(raw).strip().lower()
    try:
        return UpstreamMode(requested)
    except ValueError:
        raise ValueError(
            f"{SOURCE_ENV}={requested!r}: expected one of sample, mirror, hub"
        ) from None


def sample_rows_per_config() -> int:
    """Rows per LightOn config in the generated sample (`KD_PIPELINE_SAMPLE_ROWS`)."""
    return parse_sample_rows(os.environ.get(SAMPLE_ROWS_ENV, ""))


def parse_sample_rows(raw: str | int) -> int:
    """A KD_PIPELINE_SAMPLE_ROWS value (blank: the default, 200) as a non-negative integer;
    ValueError naming the variable otherwise."""
    text = str(raw).strip()
    if not text:
        return DEFAULT_SAMPLE_ROWS_PER_CONFIG
    if not text.isdigit():
        raise ValueError(f"{SAMPLE_ROWS_ENV}={text!r}: expected a non-negative integer")
    return int(text)


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B|%)", re.IGNORECASE)
_MEMORY_UNITS = {"B": 1} | {
    f"{prefix}{suffix}": base**power
    for power, prefix in enumerate("KMGT", start=1)
    for suffix, base in (("B", 1000), ("IB", 1024))
}
MIN_MEMORY_BYTES = 64 * 1024**2  # below this DuckDB cannot even open a Parquet scan


def duckdb_memory_limit() -> str:
    """Per-step DuckDB memory limit (`KD_PIPELINE_DUCKDB_MEMORY`, e.g. 4GB, 512MiB, 50%;
    default 4GB); DuckDB spills to the lake's scratch folder past it. Units as DuckDB reads
    them (KB = 1000 bytes, KiB = 1024); a size must be at least 64MiB and a percentage of
    memory above 0 and at most 100 (turned into MiB of this machine's memory, at least 64),
    else ValueError naming the variable."""
    return parse_memory_limit(os.environ.get(MEMORY_LIMIT_ENV, ""))


def parse_memory_limit(raw: str) -> str:
    """A KD_PIPELINE_DUCKDB_MEMORY value (blank: 4GB) as the size DuckDB is given, a
    percentage turned into MiB of this machine (see `duckdb_memory_limit`); ValueError
    naming the variable otherwise."""
    raw = raw.strip()
    if not raw:
        return "4GB"
    match = _MEMORY.fullmatch(raw)
    if match is None:
        raise ValueError(
            f"{MEMORY_LIMIT_ENV}={raw!r}: expected a size such as 4GB, 512MB, 2GiB or 50%"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError(
                f"{MEMORY_LIMIT_ENV}={raw!r}: expected a percentage of memory above 0 and "
                "at most 100%"
            )
        # DuckDB (1.5) takes sizes only: a share of this machine's physical memory.
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return f"{max(int(total * number / 100) // 2**20, 64)}MiB"
    elif number * _MEMORY_UNITS[unit] < MIN_MEMORY_BYTES:
        raise ValueError(
            f"{MEMORY_LIMIT_ENV}={raw!r}: expected a size of at least 64MiB (such as 4GB)"
        )
    return raw


def duckdb_threads() -> int:
    """Per-step DuckDB threads (`KD_PIPELINE_DUCKDB_THREADS`, a positive integer; default:
    all cores)."""
    return parse_threads(os.environ.get(THREADS_ENV, ""))


def parse_threads(raw: str | int) -> int:
    """A KD_PIPELINE_DUCKDB_THREADS value (blank: all cores) as a positive integer;
    ValueError naming the variable otherwise."""
    raw = str(raw).strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_ENV}={raw!r}: expected a positive integer")
    return int(raw)


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


def refresh_cron() -> str:
    """`KD_PIPELINE_REFRESH_CRON`: when the weekly refresh schedule runs (a five-field cron
    string, default Mondays 03:00), read when the code location loads."""
    from dagster._utils.schedules import is_valid_cron_string

    raw = os.environ.get(REFRESH_CRON_ENV, "").strip()
    if not raw:
        return DEFAULT_REFRESH_CRON
    if not is_valid_cron_string(raw):
        raise ValueError(f"{REFRESH_CRON_ENV}={raw!r}: expected a cron string such as '0 3 * * 1'")
    return raw


def hf_endpoint() -> str | None:
    """`HF_ENDPOINT`, read per call (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def _http_url(variable: str) -> str | None:
    """An http(s) URL from the environment (trailing slash removed), None when unset."""
    value = os.environ.get(variable, "").strip().rstrip("/")
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{variable}={value!r}: expected an http:// or https:// URL")
    return value


def http_mirror() -> str | None:
    """`KD_PIPELINE_HTTP_MIRROR=URL`: fetch plain URLs as `<URL>/<host>/<path>` instead (an
    HTTP server holding the `url/` half of a mirror, e.g. an artifact proxy)."""
    return _http_url(HTTP_MIRROR_ENV)


def zenodo_api() -> str:
    """`KD_PIPELINE_ZENODO_API=URL`: the Zenodo REST API the upstream sensor asks for record
    metadata (`URL/records/<id>`), e.g. a local server or a proxy; default Zenodo's own."""
    return _http_url(ZENODO_API_ENV) or DEFAULT_ZENODO_API


def hub_timeout() -> float:
    """Seconds an upstream metadata request (a Hub listing, a Zenodo record) may take
    (`KD_PIPELINE_HUB_TIMEOUT`, default 30); file downloads use huggingface_hub's own
    `HF_HUB_DOWNLOAD_TIMEOUT`."""
    return _positive_number(HUB_TIMEOUT_ENV, os.environ.get(HUB_TIMEOUT_ENV, ""), 30.0, "seconds")


def _positive_number(variable: str, raw: str, default: float, unit: str) -> float:
    """A variable's value as a positive, finite number of `unit` (blank: default);
    ValueError naming the variable and its value otherwise."""
    raw = raw.strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{variable}={raw!r}: expected a positive number of {unit}")
    return value


def _mirror_folder() -> Path | None:
    """The local mirror folder, when the source is one: it must exist (a bad
    KD_PIPELINE_SOURCE is source_choice's to report)."""
    try:
        choice = source_choice()
    except ValueError:
        return None
    if choice.mode is UpstreamMode.MIRROR:
        return parse_mirror_folder(os.environ.get(MIRROR_ENV, ""))
    return choice.mirror


def parse_mirror_folder(raw: str) -> Path:
    """A KD_PIPELINE_MIRROR value as the existing folder it names; ValueError naming the
    variable otherwise."""
    path = Path(raw.strip()).expanduser().resolve()
    if not raw.strip() or not path.is_dir():
        raise ValueError(
            f"{MIRROR_ENV}={raw!r}: expected an existing folder (a mirror of the upstream files)"
        )
    return path


def usable_folder(variable: str, raw: str) -> Path | None:
    """The folder a variable's value names, when not blank: it must be a folder, or a path
    where one can be created (its nearest existing parent a writable folder); ValueError
    naming the variable otherwise (e.g. a path to a file)."""
    raw = raw.strip()
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{variable}={raw!r}: expected a folder, found a file")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "a file" if not parent.is_dir() else "a folder it cannot write to"
        raise ValueError(
            f"{variable}={raw!r}: expected a folder, or a path where one can be created "
            f"({parent} is {what})"
        )
    return path


def _data_folders() -> None:
    """KD_PIPELINE_HOME and KD_PIPELINE_LAKE, when set, name usable folders."""
    usable_folder(HOME_ENV, os.environ.get(HOME_ENV, ""))
    if isinstance(lake_root(), Path):
        usable_folder(LAKE_ENV, os.environ.get(LAKE_ENV, ""))


# Every setting, read and validated once by `settings_problems` (the CLI, every run's
# resources) before anything starts.
_ALL_SETTINGS: tuple[Callable[[], object], ...] = (
    source_choice,
    _mirror_folder,
    _data_folders,
    catalog,
    retention_days,
    sample_rows_per_config,
    duckdb_memory_limit,
    duckdb_threads,
    zstd_level,
    max_shrink,
    refresh_cron,
    http_mirror,
    zenodo_api,
    hub_timeout,
)


def settings_problems() -> list[str]:
    """One line per environment variable set to a value the pipeline cannot use, naming
    the variable, the value and what is allowed ([] when every setting is usable)."""
    problems = []
    for read in _ALL_SETTINGS:
        try:
            read()
        except ValueError as exc:
            problems.append(str(exc))
    return problems


class SettingsError(ValueError):
    """Environment variables the pipeline cannot use; one line per variable."""


def validate_settings() -> None:
    """Raise SettingsError listing every unusable setting (nothing when all are usable)."""
    problems = settings_problems()
    if problems:
        raise SettingsError("\n".join(problems))
