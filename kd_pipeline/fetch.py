"""Resolve upstream files to local paths: from a mirror folder, or from the network.

Two kinds of upstream exist: Hugging Face Hub datasets (read through `huggingface_hub`,
pinned to a commit sha) and plain URLs (Zenodo, MS MARCO: HTTP with resume and md5).
A *mirror* folder with the same layout replaces the network entirely:

    <mirror>/hf/datasets/<owner>/<name>/<path in repo>
    <mirror>/url/<host>/<path>            (query string dropped)

The sample source is such a mirror, generated (by `kd_pipeline.sample`) into the data home
the first time it is read from: the sample's download.

Every resolution records what was read (revision or fingerprint, bytes) for lineage.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kd_pipeline import settings
from kd_pipeline.settings import UpstreamMode, hf_endpoint, http_mirror, hub_timeout

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20
SAMPLE_LAYOUT_VERSION = 3  # bump when kd_pipeline.sample writes a differently shaped mirror
MD5_HEX = re.compile(r"[0-9a-f]{32}")  # an md5 as hex, lower case
T = TypeVar("T")


class FetchError(Exception):
    """An upstream file could not be had; the message names the repo, revision, file or URL."""


class ChecksumMismatch(FetchError):
    """A file's md5 is not the one expected: the message names the file, both md5s, and the
    caller may add where the expected one came from."""


@dataclass(frozen=True)
class RepoFile:
    """One file of a dataset repository, as listed by the source."""

    path: str
    size: int
    sha256: str | None = None  # the LFS sha256 when the Hub gives one


@dataclass(frozen=True)
class DatasetSnapshot:
    """A dataset repository pinned at one revision: what a run reads, for lineage."""

    repo_id: str
    revision: str  # a Hub commit sha, or "mirror-<fingerprint>" for a mirror
    source: str  # "hub", or the mirror folder
    files: dict[str, RepoFile] = field(default_factory=dict)


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise FetchError(f"dataset id {repo_id!r} is not of the form owner/name")
    return repo_id


def check_repo_path(path: str) -> str:
    """A path inside a repository: relative, no `..`, no backslashes, no NUL."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise FetchError(f"repository path {path!r} is not a plain relative path")
    return path


def mirror_path_for_url(mirror: Path, url: str) -> Path:
    """`<mirror>/url/<host>/<path>` for url, refusing anything that would leave the mirror."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FetchError(f"{url!r} is not an http(s) URL")
    rel = f"{parsed.hostname}/{urllib.parse.unquote(parsed.path).lstrip('/')}"
    return contained(mirror / "url", check_repo_path(rel))


def contained(root: Path, rel: str) -> Path:
    """root/rel, guaranteed (symlinks resolved) to stay inside root."""
    root = root.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise FetchError(f"{rel!r} resolves outside {root} (a link or '..'); refusing it")
    return target


class Fetcher:
    """Hands out local paths for upstream files, from a mirror folder or the network."""

    def __init__(
        self,
        mode: UpstreamMode | str,
        mirror: Path | None,
        cache_dir: Path,
        hub_attempts: int | None = None,
        *,
        sample_rows_per_config: int | None = None,
    ) -> None:
        """mode: sample, mirror or hub. mirror: the mirror folder (sample: where the sample
        of `sample_rows_per_config` rows per LightOn config is, or is generated on first
        read, see `sample_mirror_path`). hub_attempts: how often a Hub request is tried
        (default HUB_ATTEMPTS); a sensor asks once, as its next tick is its retry and a tick
        must end within Dagster's sensor timeout."""
        self.mode = UpstreamMode(mode)
        if self.mode is not UpstreamMode.HUB and mirror is None:
            raise FetchError(f"source {self.mode.value!r} needs a mirror folder")
        self.mirror = mirror.resolve() if mirror is not None else None
        self.cache_dir = cache_dir
        self.hub_attempts = hub_attempts or HUB_ATTEMPTS
        self.sample_rows_per_config = (
            settings.DEFAULT_SAMPLE_ROWS_PER_CONFIG
            if sample_rows_per_config is None
            else sample_rows_per_config
        )

    def describe(self) -> str:
        return "hub" if self.mirror is None else f"{self.mode}:{self.mirror}"

    def local_mirror(self) -> Path:
        """The mirror folder to read from; for the sample source it is generated there on
        the first read (`generate_sample_mirror`). Raises FetchError for the hub source."""
        if self.mirror is None:
            raise FetchError("the hub source has no mirror folder")
        if self.mode is UpstreamMode.SAMPLE:
            return generate_sample_mirror(self.mirror, self.sample_rows_per_config)
        return self.mirror

    # ---- Hub datasets --------------------------------------------------------------------
    def _mirror_repo_root(self, repo_id: str) -> Path:
        return contained(self.local_mirror(), f"hf/datasets/{check_repo_id(repo_id)}")

    def dataset_snapshot(self, repo_id: str, revision: str = "main") -> DatasetSnapshot:
        """List a dataset's files at a revision (the Hub resolves it to a commit sha)."""
        check_repo_id(repo_id)
        if self.mirror is None:
            return _hub_snapshot(repo_id, revision, self.hub_attempts)
        root = self._mirror_repo_root(repo_id)
        if not root.is_dir():
            raise FetchError(f"dataset {repo_id} is not in the mirror: {root} does not exist")
        files: dict[str, RepoFile] = {}
        fingerprint = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".git/") or rel.startswith(".cache/"):
                continue
            stat = contained(root, rel).stat()
            files[rel] = RepoFile(rel, stat.st_size)
            fingerprint.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return DatasetSnapshot(
            repo_id, "mirror-" + fingerprint.hexdigest()[:16], str(self.mirror), files
        )

    def dataset_file(self, snapshot: DatasetSnapshot, path: str) -> Path:
        """A local path to one file of the snapshot, downloaded (and cached) if needed."""
        check_repo_path(path)
        if path not in snapshot.files:
            raise FetchError(
                f"{path!r} is not a file of {snapshot.repo_id} at revision {snapshot.revision}"
            )
        if self.mirror is not None:
            return contained(self._mirror_repo_root(snapshot.repo_id), path)
        return _hub_download(snapshot.repo_id, path, snapshot.revision, self.hub_attempts)

    def read_dataset_text(self, snapshot: DatasetSnapshot, path: str) -> str | None:
        """A small text file of the repository (the dataset card), or None if absent."""
        if path not in snapshot.files:
            return None
        return self.dataset_file(snapshot, path).read_text(encoding="utf-8")

    # ---- plain URLs ----------------------------------------------------------------------
    def url_file(self, url: str, md5: str | None = None) -> Path:
        """A local path to the file behind url, verified against md5 when one is known:
        from the mirror, or downloaded (with resume) into the cache."""
        if self.mirror is not None:
            path = mirror_path_for_url(self.local_mirror(), url)
            if not path.is_file():
                raise FetchError(f"{url} is not in the mirror: {path} does not exist")
            if md5:
                verify_md5_once(path, md5, self.cache_dir / "md5", url)
            return path
        dest = url_cache_path(self.cache_dir, url, md5)
        if md5:
            adopt_unkeyed_copy(url_cache_path(self.cache_dir, url, None), dest, md5)
        return download_url(http_mirror_url(url), dest, md5=md5)


def url_cache_path(cache_dir: Path, url: str, md5: str | None) -> Path:
    """Where a download of url is cached: `<cache>/url/<host>/<path>`, with an `md5-<hex>/`
    folder before the file name when an md5 is expected, so a file expected with a new md5
    is a new download and never an older verified copy (and the older one stays valid for
    runs that still expect it)."""
    unkeyed = mirror_path_for_url(cache_dir / "url", url)
    if not md5:
        return unkeyed
    digest = md5.strip().lower()
    if not MD5_HEX.fullmatch(digest):
        raise FetchError(f"{url}: {md5!r} is not an md5 (32 hex digits)")
    return unkeyed.parent / f"md5-{digest}" / unkeyed.name


def adopt_unkeyed_copy(unkeyed: Path, keyed: Path, md5: str) -> None:
    """Move a copy cached before downloads were keyed by md5 to its keyed place when its
    marker says it was verified against this md5, so a multi-GB file is not fetched again
    after an upgrade; any other copy is left alone (and never used for this md5)."""
    marker = unkeyed.with_name(unkeyed.name + ".verified")
    if keyed.exists() or not unkeyed.is_file() or not marker.is_file():
        return
    if marker_md5(marker) != md5.strip().lower():
        return
    keyed.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(unkeyed, keyed)
        os.replace(marker, keyed.with_name(keyed.name + ".verified"))
    except FileNotFoundError:  # a concurrent run adopted it first: fine
        return


def http_mirror_url(url: str) -> str:
    """The URL actually requested: url itself, or its place on the HTTP mirror if one is set."""
    base = http_mirror()
    if base is None:
        return url
    parsed = urllib.parse.urlsplit(url)
    return f"{base}/{parsed.hostname}{parsed.path}"


# ---- remembering what was verified ------------------------------------------------------
# A passing md5 is remembered so that a multi-GB file is not hashed on every run. What the
# memory is keyed by must change whenever the bytes can have changed:
# - (path, size, mtime) does not: `cp -p`, rsync, `touch -d` and an in-place rewrite all set
#   the mtime back, and a same-size change then passed (issue 13 item 4);
# - the inode's ctime does: the kernel sets it on every write, truncate, chmod, utime and
#   rename of the file, and no user-space call can set it back; with the device and inode
#   number it also tells a replaced file (same name, new inode) from the verified one.
# Corruption below the file system (bit rot on the medium) changes no metadata at all, so
# files up to REHASH_BELOW_BYTES are hashed again on every read (cheap, and all MS MARCO
# queries/qrels files are that small); larger ones rely on the fingerprint.
REHASH_BELOW_BYTES = 64 << 20


def file_fingerprint(path: Path) -> str:
    """`dev:inode:size:mtime_ns:ctime_ns` of path: changes with any change of its bytes
    made through the file system (see above)."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _trust_fingerprint(path: Path) -> bool:
    return path.stat().st_size >= REHASH_BELOW_BYTES


def verify_md5_once(path: Path, md5: str, ledger: Path, what: str) -> None:
    """Check path's md5, remembering a success by the file's fingerprint (device, inode,
    size, mtime, ctime) so that a large mirror file is hashed once, not on every run; a
    small file is hashed on every call. Raises ChecksumMismatch naming the file."""
    expected = md5.strip().lower()
    key = hashlib.sha256(f"{path}\0{file_fingerprint(path)}".encode()).hexdigest()
    marker = ledger / key[:2] / f"{key}.{expected}"
    if marker.exists() and _trust_fingerprint(path):
        return
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"{what}: md5 mismatch for {path} (expected {md5.strip()}, got {actual})"
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def write_verified_marker(marker: Path, path: Path, expected: str | None, actual: str) -> None:
    """Record that path (its fingerprint now) holds bytes of md5 `actual`, downloaded for
    the `expected` md5 (empty when none was known): three lines."""
    marker.write_text(f"{expected or ''}\n{actual}\n{file_fingerprint(path)}\n")


def marker_md5(marker: Path) -> str:
    """The md5 a download was verified against (first line of its marker; "" if none)."""
    lines = marker.read_text().splitlines()
    return lines[0].strip().lower() if lines else ""


def verified_as(dest: Path, marker: Path, md5: str | None) -> bool:
    """Whether dest is a finished download verified against md5 (any, when md5 is None)
    whose bytes are still the ones verified: the marker's fingerprint still matches (large
    files), or the bytes hash to what was recorded (small files, a changed fingerprint, a
    marker from before fingerprints). A copy whose bytes changed is not verified, nor one
    whose marker records no md5 at all (an old marker of a download made without one)."""
    if not dest.is_file() or not marker.is_file():
        return False
    lines = [*marker.read_text().splitlines(), "", "", ""]
    expected, actual, fingerprint = (line.strip().lower() for line in lines[:3])
    if md5 is not None and expected != md5:
        return False
    if fingerprint == file_fingerprint(dest).lower() and _trust_fingerprint(dest):
        return True
    recorded = actual or expected  # a marker from before fingerprints holds the md5 only
    if not recorded:  # nothing to compare with: an old marker of a download without an md5
        return False
    now = file_md5(dest)
    if now != recorded:
        return False
    write_verified_marker(marker, dest, expected, now)
    return True


# ---- Hub access through huggingface_hub --------------------------------------------------
def _hub_errors(what: str) -> Callable[[Exception], FetchError]:
    def translate(exc: Exception) -> FetchError:
        from huggingface_hub import errors

        if isinstance(exc, errors.RevisionNotFoundError):
            return FetchError(f"{what}: revision not found on the Hub")
        if isinstance(exc, errors.GatedRepoError | errors.RepositoryNotFoundError):
            return FetchError(
                f"{what}: repository not found or not accessible; if it is private or gated, "
                "set HF_TOKEN (or log in with `hf auth login`) to a token that may read it"
            )
        if isinstance(exc, errors.LocalEntryNotFoundError):
            return FetchError(f"{what}: the Hub could not be reached and no cached copy exists")
        if isinstance(exc, errors.EntryNotFoundError):
            return FetchError(f"{what}: file not found at that revision")
        if isinstance(exc, errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            if status in (401, 403):
                return FetchError(
                    f"{what}: the Hub refused the request (HTTP {status}); check HF_TOKEN"
                )
            return FetchError(f"{what}: Hub request failed (HTTP {status})")
        return FetchError(f"{what}: {type(exc).__name__}: {_redact(str(exc))}")

    return translate


def _redact(text: str) -> str:
    """Remove anything that looks like a Hugging Face token from a message."""
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


HUB_ATTEMPTS = 4
HUB_BACKOFF = 1.0


def _hub_transient(exc: Exception) -> bool:
    """A Hub failure worth retrying: a 5xx or 429 answer, or the connection failing."""
    from huggingface_hub import errors

    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    if isinstance(exc, errors.LocalEntryNotFoundError):  # no answer and nothing cached
        return True
    return isinstance(exc, OSError | TimeoutError) and not isinstance(exc, errors.HfHubHTTPError)


def _with_hub_retries(what: str, call: Callable[[], T], attempts: int = HUB_ATTEMPTS) -> T:
    """call(), retried with exponential backoff on transient Hub faults, a bounded number of
    times; every failure ends as one FetchError naming what was asked for."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not _hub_transient(exc):
                raise _hub_errors(what)(exc) from None
            time.sleep(HUB_BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _hub_snapshot(repo_id: str, revision: str, attempts: int) -> DatasetSnapshot:
    from huggingface_hub import HfApi

    info = _with_hub_retries(
        f"dataset {repo_id}@{revision}",
        lambda: HfApi(endpoint=hf_endpoint()).dataset_info(
            repo_id, revision=revision, files_metadata=True, timeout=hub_timeout()
        ),
        attempts,
    )
    files = {
        s.rfilename: RepoFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    }
    return DatasetSnapshot(repo_id, info.sha or revision, "hub", files)


def _hub_download(repo_id: str, path: str, revision: str, attempts: int) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        _with_hub_retries(
            f"{repo_id}/{path}@{revision}",
            lambda: hf_hub_download(
                repo_id, path, repo_type="dataset", revision=revision, endpoint=hf_endpoint()
            ),
            attempts,
        )
    )


# ---- HTTP with resume and md5 -----------------------------------------------------------
_RETRYABLE = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


def download_url(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    timeout: float = 60.0,
    attempts: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Download url to dest, resuming a partial download, retrying transient faults with
    exponential backoff, and verifying md5. A finished file is never fetched again for the md5
    it was verified against (its marker records it) while its bytes are unchanged
    (`verified_as`), and never reused for another one; a cached copy whose bytes changed
    is fetched again.
    """
    md5 = md5.strip().lower() if md5 else None
    done_marker = dest.with_name(dest.name + ".verified")
    if verified_as(dest, done_marker, md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    if dest.is_file() and done_marker.is_file() and marker_md5(done_marker) == (md5 or ""):
        dest.unlink()  # its bytes changed since they were verified: fetched again whole
        done_marker.unlink()
        partial.unlink(missing_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, partial, timeout)
            break
        except urllib.error.HTTPError as exc:
            if (refused := http_refusal(url, exc.code)) is not None:
                raise refused from None
            if (exc.code < 500 and exc.code != 429) or attempt == attempts:
                raise FetchError(f"{url}: HTTP {exc.code} after {attempt} attempt(s)") from None
        except _RETRYABLE as exc:
            if attempt == attempts:
                raise FetchError(f"{url}: {type(exc).__name__} after {attempt} attempts") from None
        time.sleep(backoff * 2 ** (attempt - 1))
    actual = file_md5(partial)
    if md5 is not None and actual != md5:
        partial.unlink(missing_ok=True)
        if dest.parent.name == f"md5-{md5}":  # its md5-keyed folder, now empty
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
        raise ChecksumMismatch(f"{url}: md5 mismatch (expected {md5}, got {actual}); discarded")
    done_marker.unlink(missing_ok=True)  # a copy verified against another md5 ends here
    os.replace(partial, dest)
    write_verified_marker(done_marker, dest, md5, actual)
    return dest


def http_refusal(url: str, status: int) -> FetchError | None:
    """The error for an answer that retrying cannot change (access refused, not found)."""
    if status in (401, 403):
        return FetchError(f"{url}: access refused (HTTP {status})")
    if status == 404:
        return FetchError(f"{url}: not found (HTTP 404)")
    return None


def read_url(url: str, *, timeout: float) -> bytes:
    """The body of one GET of a small document (record metadata): no retry and no cache, as
    its caller polls (a sensor asks again next tick); every failure is one FetchError."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(
        url, headers={"User-Agent": "kd-pipeline", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        raise http_refusal(url, exc.code) or FetchError(f"{url}: HTTP {exc.code}") from None
    except _RETRYABLE as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"{url}: {type(exc).__name__} ({reason})") from None


def _download_once(url: str, partial: Path, timeout: float) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kd-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the partial file is whole
            return
        raise
    with response:
        resumed = response.status == 206
        expected = response.headers.get("Content-Length")
        mode = "ab" if resumed else "wb"
        written = 0
        with open(partial, mode) as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
        if expected is not None and written < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - written)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- the sample source's download ----------------------------------------------------------
def sample_mirror_path(data_home: Path, rows_per_config: int) -> Path:
    """Where the generated sample of that size lives in a data home:
    `<data home>/sample-mirror/v<SAMPLE_LAYOUT_VERSION>-rows<rows_per_config>` (a new
    layout version or size is a new folder, never a changed one)."""
    return data_home / "sample-mirror" / f"v{SAMPLE_LAYOUT_VERSION}-rows{rows_per_config}"


def generate_sample_mirror(target: Path, rows_per_config: int) -> Path:
    """The sample source's download: the sample mirror written to target by
    `kd_pipeline.sample` once, atomically, even with concurrent callers (`ensure_generated`);
    a finished target is returned as it is."""

    def write(tmp: Path) -> None:
        from kd_pipeline.sample import write_sample_mirror  # runtime code imports it only here

        write_sample_mirror(tmp, rows_per_config)

    return ensure_generated(target, write)


def sample_mirror(rows_per_config: int | None = None) -> Path:
    """The sample mirror of this environment's data home (KD_PIPELINE_HOME) and size
    (`rows_per_config`, default KD_PIPELINE_SAMPLE_ROWS), generated on first use."""
    rows = settings.sample_rows_per_config() if rows_per_config is None else rows_per_config
    return generate_sample_mirror(sample_mirror_path(settings.data_home(), rows), rows)


def ensure_generated(target: Path, generate: Callable[[Path], object]) -> Path:
    """Create target by generate(tmp) + rename, once, even with concurrent callers."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        generate(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # lost the race to a concurrent generator: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
