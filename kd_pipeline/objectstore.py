"""The object store under an `s3://` lake: what the lake does there beside DuckDB.

DuckDB reads and writes a lake's tables itself (httpfs, credentials from
`ducklake.configure_object_store`). Everything else the lake does on the bucket goes through
the one pyarrow S3 client made here, configured from the same standard variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL): uploading a staged version folder, listing the
objects under a prefix (export views, expiry of export versions), deleting a prefix or one
object, and the reachability probe made before the first connection of a process.

Every URL here is `s3://bucket/key...`; pyarrow's paths are the same without the scheme.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyarrow import fs

from kd_pipeline.ducklake import CatalogUnreachable
from kd_pipeline.settings import LAKE_ENV

# pyarrow names the S3 error in its message: "... AWS Error ACCESS_DENIED during HeadBucket
# operation: ..."; these codes mean the credentials or the bucket's policy refused us.
_DENIED_CODES = frozenset(
    {
        "ACCESS_DENIED",
        "INVALID_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH",
        "INVALID_CLIENT_TOKEN_ID",
        "MISSING_AUTHENTICATION_TOKEN",
        "EXPIRED_TOKEN",
        "UNRECOGNIZED_CLIENT",
    }
)
_UNREACHABLE_CODES = frozenset({"NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SERVICE_UNAVAILABLE"})
_AWS_ERROR = re.compile(r"AWS Error (\w+)")
# (URL, digest of the AWS_* settings) a probe found reachable in this process.
_REACHABLE: set[tuple[str, str]] = set()
_REACHABLE_LOCK = threading.Lock()
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)


@dataclass(frozen=True)
class StoredObject:
    """One object under a listed prefix: its `s3://` URL and last-modified time (Unix
    seconds, the store's resolution: whole seconds on S3)."""

    url: str
    modified: float


def filesystem() -> fs.S3FileSystem:
    """pyarrow's S3 client from the AWS_* variables as they are now (without keys, the AWS
    SDK's own chain: instance profile, ~/.aws). AWS_ENDPOINT_URL with or without a scheme
    and trailing slash (`http://127.0.0.1:9000/`, `minio:9000`: https assumed)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip().rstrip("/")
    options: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
    }
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options["endpoint_override"] = host or scheme
        options["scheme"] = scheme if host else "https"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        options["session_token"] = os.environ.get("AWS_SESSION_TOKEN")
    return fs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


def _path(url: str) -> str:
    """pyarrow's path of an `s3://bucket/key` URL (`bucket/key`)."""
    scheme, separator, path = url.partition("://")
    if not separator or scheme != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    return path.rstrip("/")


def upload_folder(local: Path, url: str) -> None:
    """Copy every file under the folder `local` to the prefix `url`, keeping relative paths
    (a staged version folder to its place in the lake). Raises OSError on a failed request."""
    fs.copy_files(str(local), _path(url), destination_filesystem=filesystem())


def list_objects(url: str, *, recursive: bool = False) -> list[StoredObject]:
    """The objects directly under the prefix `url` (with recursive, under it at any depth),
    sorted by URL; [] when there are none. Folders are not objects: none are returned.
    Raises OSError when the store refuses or cannot be reached."""
    selector = fs.FileSelector(_path(url), recursive=recursive, allow_not_found=True)
    infos = filesystem().get_file_info(selector)
    return sorted(
        (
            StoredObject(f"s3://{info.path}", info.mtime.timestamp() if info.mtime else 0.0)
            for info in infos
            if info.type == fs.FileType.File
        ),
        key=lambda item: item.url,
    )


def delete_prefix(url: str) -> None:
    """Delete every object under the prefix `url` (a version folder); nothing there is no
    error. pyarrow then writes an empty marker object `<parent>/` (one per parent folder,
    rewritten in place, invisible to `list_objects` and to DuckDB's globs). Raises OSError
    when the store refuses."""
    client = filesystem()
    path = _path(url)
    if client.get_file_info(path).type == fs.FileType.NotFound:
        return
    client.delete_dir(path)


def delete_object(url: str) -> None:
    """Delete the one object at `url`; a missing object is no error. When that empties its
    folder, the folder goes too: pyarrow marks a folder it deleted from with an empty
    `<folder>/` object, and a killed writer's version folder would otherwise stay as one
    such marker for good (the parent's marker is the one left, one per partition folder).
    Raises OSError when the store refuses."""
    client = filesystem()
    path = _path(url)
    if client.get_file_info(path).type == fs.FileType.NotFound:
        return
    client.delete_file(path)
    folder = path.rsplit("/", 1)[0]
    if "/" in folder and not list_objects(f"s3://{folder}", recursive=True):
        client.delete_dir(folder)


def probe(url: str) -> None:
    """Check that the lake `url` (`s3://bucket/prefix`) can be read with the AWS_* settings
    now: its bucket exists and its prefix can be listed (one HEAD and one LIST request, once
    per URL and AWS_* settings in a process). ATTACH never touches the bucket, so without
    this a wrong bucket, endpoint or key would show only at the first upload, deep in a run.

    Raises ducklake.CatalogUnreachable with one line naming KD_PIPELINE_LAKE, the URL and
    the cause: no such bucket, access denied, or the endpoint unreachable (issue 15: a data
    path that cannot be reached is named before any run starts)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    identity = (url, _settings_digest())
    with _REACHABLE_LOCK:
        if identity in _REACHABLE:
            return
    path = _path(url)
    bucket = path.split("/", 1)[0]
    try:
        client = filesystem()
        found = client.get_file_info(bucket).type != fs.FileType.NotFound
        if found:
            client.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise CatalogUnreachable(
            f"{LAKE_ENV}: cannot reach the lake {url}: {_cause(exc, endpoint)}"
        ) from None
    if not found:
        where = f" at {endpoint}" if endpoint else ""
        raise CatalogUnreachable(
            f"{LAKE_ENV}: cannot reach the lake {url}: no such bucket {bucket!r}{where}"
        )
    with _REACHABLE_LOCK:
        _REACHABLE.add(identity)


def _settings_digest() -> str:
    """A digest of the AWS_* variables now (a probe holds for these settings only; the
    secret itself is not kept)."""
    values = "\0".join(os.environ.get(name, "") for name in _AWS_VARIABLES)
    return hashlib.sha256(values.encode()).hexdigest()


def _cause(exc: OSError, endpoint: str) -> str:
    """A failed S3 request as the one-line cause a person acts on."""
    text = " ".join(str(exc).split())
    match = _AWS_ERROR.search(text)
    code = match.group(1) if match else ""
    if code in _DENIED_CODES:
        return (
            f"access denied ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN) and that they may list the bucket"
        )
    if code in _UNREACHABLE_CODES or "curlCode" in text:
        where = endpoint or "the AWS S3 endpoint of AWS_REGION"
        return f"endpoint unreachable: {where} ({code or 'no connection'}); check AWS_ENDPOINT_URL"
    return text[:300]
