"""A local HTTP server shaped like the Hugging Face Hub and like plain file hosts, for tests.

It serves a *mirror directory*::

    <mirror>/hf/datasets/<owner>/<name>/<path in repo>   Hub dataset repos
    <mirror>/hf/models/<owner>/<name>/<path in repo>     Hub model repos (same rules)
    <mirror>/url/<host>/<path>                           plain URLs (see HubServer.url_for)

Hub endpoints (what huggingface_hub 2.4.0 calls; ``<t>`` is ``datasets`` or ``models``):

* ``GET /api/<t>/<owner>/<name>`` and ``GET /api/<t>/<owner>/<name>/revision/<rev>``
  (``?blobs=true`` adds size/blobId/lfs to the siblings) -> repo info JSON.
* ``GET /api/<t>/<owner>/<name>/tree/<rev>[/<dir>]?recursive=...&expand=...`` -> tree entries.
* ``POST /api/<t>/<owner>/<name>/paths-info/<rev>`` (form ``paths=...``) -> entries.
* ``HEAD|GET /datasets/<owner>/<name>/resolve/<rev>/<path>`` (models: without ``/datasets``)
  -> the file, served directly (no redirect), with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``
  and ``X-Linked-Size`` (LFS files), ``Content-Length``, ``Accept-Ranges`` and Range support.

Zenodo's REST API, for the record files under ``<mirror>/url/zenodo.org/record(s)/<id>/files/``:

* ``GET /api/records/<id>`` -> ``{"id", "files": [{"key", "size", "checksum": "md5:<hex>",
  "links": {"self"}}], ...}``, the checksums of the files' bytes at the time of the request
  (a test changes a file and the record changes with it); an unknown record is a 404.

Xet is never used by the client: the server never sends ``X-Xet-Hash`` /
``X-Xet-Refresh-Route`` headers, a ``Link: rel="xet-auth"`` header, nor ``xetHash`` in tree
entries, and huggingface_hub only goes through Xet when one of those is present.

Errors follow the Hub: a 404 with ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), ``X-Error-Message`` and a ``{"error": ...}`` JSON body. A missing or wrong token
yields 401 (``X-Error-Message: Invalid credentials in Authorization header`` for a wrong one).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

from kd_pipeline_tests.servers import LoopbackServer

__all__ = ["Fault", "HubServer"]

_CHUNK = 64 * 1024
_MAX_REQUEST_BODY = 10 * 1024 * 1024
_LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".gz", ".zip", ".tar", ".npy", ".pt")
_REPO_TYPES = {"datasets": "datasets", "models": "models"}
_JSON = "application/json; charset=utf-8"
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_MISSING_CREDENTIALS = "Authentication required: no 'Authorization: Bearer' token was sent"


@dataclass
class Fault:
    """One injected fault, consumed by the next matching request(s)."""

    path_contains: str  # matched against the raw request target (path and query)
    kind: Literal["status", "drop", "stall"]
    status: int = 503  # for kind="status"
    after_bytes: int = 0  # for kind="drop": body bytes sent before the connection is shut down
    seconds: float = 30.0  # for kind="stall": delay before answering; stop() interrupts it
    times: int = 1  # how many matching requests it applies to
    method: str | None = None  # None = any method


@dataclass(frozen=True)
class _Entry:
    """One file of a repo snapshot."""

    path: str  # posix path in the repo
    abs_path: Path
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files
    pointer_size: int | None
    mtime: float


@dataclass(frozen=True)
class _Snapshot:
    """The files of a repo at the moment of a request, and the derived commit sha."""

    repo_id: str
    sha: str
    files: dict[str, _Entry]
    dirs: frozenset[str]
    last_modified: float


@dataclass
class _Response:
    """A response to send: a bytes body or a byte range of a file."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: Path | None = None
    start: int = 0
    length: int = 0

    @property
    def body_length(self) -> int:
        return self.length if self.file is not None else len(self.body)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, [("Content-Type", _JSON), *(headers or [])], body)


def _hub_error(
    status: int, code: str | None, message: str, extra: list[tuple[str, str]] | None = None
) -> _Response:
    headers = [("X-Error-Message", message)]
    if code is not None:
        headers.append(("X-Error-Code", code))
    return _json_response(status, {"error": message}, headers + (extra or []))


def _safe_segments(segments: list[str]) -> list[str] | None:
    """Return the segments if none of them can escape a directory, else None."""
    for seg in segments:
        if seg in ("", ".", "..") or "/" in seg or "\\" in seg or "\0" in seg:
            return None
    return segments


def _parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["invalid"] | None:
    """Parse a single ``bytes=`` range into (start, end inclusive); None = serve everything."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unsupported: ignore the header and serve the whole file (RFC 9110 allows it)
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first.strip() == "":
            suffix = int(last)
            if suffix <= 0:
                return "invalid"
            return (max(size - suffix, 0), size - 1) if size else "invalid"
        start = int(first)
        end = int(last) if last.strip() else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)


def _file_response(
    path: Path, headers: list[tuple[str, str]], range_header: str | None
) -> _Response:
    """Serve a file, honouring a Range header (206 + Content-Range, or 416)."""
    size = path.stat().st_size
    rng = _parse_range(range_header, size)
    headers = [*headers, ("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")]
    if rng == "invalid":
        body = json.dumps({"error": "Requested range not satisfiable"}).encode()
        return _Response(416, [("Content-Range", f"bytes */{size}"), ("Content-Type", _JSON)], body)
    if rng is None:
        return _Response(200, headers, file=path, start=0, length=size)
    start, end = rng
    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    return _Response(206, headers, file=path, start=start, length=end - start + 1)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections and threads so stop() can end them."""

    daemon_threads = True
    block_on_close = False
    owner: HubServer

    def __init__(self, owner: HubServer) -> None:
        self.owner = owner
        self.conns: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.track_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run, args=(request, client_address), name="hub-server-conn", daemon=True
        )
        with self.track_lock:
            self.conns.add(request)
            self.threads.add(thread)
        thread.start()

    def _run(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.track_lock:
                self.conns.discard(request)
                self.threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client disconnects and dropped connections are expected in fault tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kd-pipeline-hub-mirror/1.0"
    timeout = 60  # idle keep-alive connections end eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        hub = self.server.owner
        body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= _MAX_REQUEST_BODY:
            body = self.rfile.read(length)
        elif length:
            self.close_connection = True
        hub._log(self.command, self.path, self.headers.items())

        fault = hub._take_fault(self.command, self.path)
        if fault is not None and fault.kind == "stall":
            if hub._stop_event.wait(max(fault.seconds, 0.0)):
                self._abort()  # server stopping: never answer
                return
            fault = None
        if fault is not None and fault.kind == "status":
            message = f"Injected fault: HTTP {fault.status}"
            self._send(_json_response(fault.status, {"error": message}))
            return

        response = hub._auth_error(self.headers.get("Authorization"))
        if response is None:
            try:
                response = hub._route(self.command, self.path, self.headers, body)
            except (FileNotFoundError, NotADirectoryError):  # mirror changed mid-request
                response = _json_response(404, {"error": "Not Found"})
            except Exception as exc:  # a test-server bug must not hang the client
                response = _json_response(500, {"error": f"hub_server: {exc!r}"})
        if fault is not None and fault.kind == "drop":
            if self.command != "HEAD":
                self._send(response, limit=max(fault.after_bytes, 0))
            self._abort()
            return
        self._send(response)

    def _send(self, response: _Response, *, limit: int | None = None) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(response.body_length))
        self.end_headers()
        if self.command == "HEAD":
            return
        remaining = response.body_length if limit is None else min(limit, response.body_length)
        if response.file is None:
            self.wfile.write(response.body[:remaining])
            return
        with open(response.file, "rb") as fh:
            fh.seek(response.start)
            self._copy(fh, remaining)

    def _copy(self, fh: BinaryIO, remaining: int) -> None:
        while remaining > 0:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:  # file shrank after the headers went out: the framing is broken
                self.close_connection = True
                break
            self.wfile.write(chunk)
            remaining -= len(chunk)

    def _abort(self) -> None:
        """Shut the connection down without finishing the response."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class HubServer(LoopbackServer):
    """Local Hub-shaped HTTP server over a mirror directory; see the module docstring."""

    lfs_suffixes: tuple[str, ...] = _LFS_SUFFIXES

    def __init__(self, mirror: Path, *, token: str | None = None) -> None:
        self.mirror = Path(mirror)
        self.token = token
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._hash_cache: dict[Path, tuple[tuple[int, ...], _Entry]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (use as HF_ENDPOINT)."""
        if self._server is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Bind 127.0.0.1 on an ephemeral port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stop_event.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="hub-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving: wake stalled requests, close connections, join threads (bounded)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        if thread is not None:
            thread.join(timeout)
        with server.track_lock:
            conns, threads = list(server.conns), list(server.threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for worker in threads:
            worker.join(max(deadline - time.monotonic(), 0.0))
        server.server_close()
        self._server = None
        self._thread = None

    # -- public helpers --------------------------------------------------------------------

    def url_for(self, url: str) -> str:
        """Map e.g. ``https://zenodo.org/records/1/files/x.tsv?download=1`` to this server.

        The local URL serves ``<mirror>/url/zenodo.org/records/1/files/x.tsv``; the query is
        kept in the URL and ignored by the server.
        """
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"not an absolute URL: {url!r}")
        local = f"{self.endpoint}/url/{parts.hostname}{quote(parts.path or '/', safe='/%')}"
        return f"{local}?{parts.query}" if parts.query else local

    def revision(self, repo_id: str, *, repo_type: str = "dataset") -> str:
        """Current 40-hex commit sha of a repo (changes when any file's bytes change)."""
        snap = self._snapshot(f"{repo_type}s", repo_id)
        if snap is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} in {self.mirror}")
        return snap.sha

    # -- internals: bookkeeping --------------------------------------------------------------

    def _log(self, method: str, path: str, headers: Any) -> None:
        clean = {k: v for k, v in headers if k.lower() != "authorization"}
        with self._lock:
            self.requests.append((method, path, clean))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times <= 0 or fault.path_contains not in path:
                    continue
                if fault.method is not None and fault.method.upper() != method:
                    continue
                fault.times -= 1
                return fault
        return None

    def _auth_error(self, authorization: str | None) -> _Response | None:
        if self.token is None:
            return None
        if not authorization:
            return _hub_error(401, None, _MISSING_CREDENTIALS)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        ):
            return _hub_error(401, None, _INVALID_CREDENTIALS)
        return None

    # -- internals: repo snapshots -----------------------------------------------------------

    def _repo_dir(self, kind: str, repo_id: str) -> Path | None:
        segments = _safe_segments(repo_id.split("/"))
        if kind not in _REPO_TYPES or segments is None or len(segments) != 2:
            return None
        path = self.mirror / "hf" / _REPO_TYPES[kind] / segments[0] / segments[1]
        return path if path.is_dir() else None

    def _entry(self, rel: str, abs_path: Path) -> _Entry:
        st = abs_path.stat()
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        with self._lock:
            cached = self._hash_cache.get(abs_path)
        if cached is not None and cached[0] == sig and cached[1].path == rel:
            return cached[1]
        is_lfs = rel.lower().endswith(self.lfs_suffixes)
        git = hashlib.sha1(b"blob %d\0" % st.st_size)
        sha256 = hashlib.sha256()
        with open(abs_path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                (sha256 if is_lfs else git).update(chunk)
        entry_sha256 = pointer_size = None
        if is_lfs:
            entry_sha256 = sha256.hexdigest()
            pointer = (
                "version https://git-lfs.github.com/spec/v1\n"
                f"oid sha256:{entry_sha256}\nsize {st.st_size}\n"
            ).encode()
            pointer_size = len(pointer)
            blob_id = _git_blob_sha(pointer)
        else:
            blob_id = git.hexdigest()
        entry = _Entry(rel, abs_path, st.st_size, blob_id, entry_sha256, pointer_size, st.st_mtime)
        # Racy-git rule: only trust the stat signature once the file is old enough that a
        # rewrite within the same timestamp tick can no longer go unnoticed.
        if time.time() - st.st_mtime > 2.0:
            with self._lock:
                self._hash_cache[abs_path] = (sig, entry)
        return entry

    def _snapshot(self, kind: str, repo_id: str) -> _Snapshot | None:
        root = self._repo_dir(kind, repo_id)
        if root is None:
            return None
        files: dict[str, _Entry] = {}
        dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            if rel_dir != ".":
                dirs.add(rel_dir)
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                abs_path = Path(dirpath) / name
                if abs_path.is_file():
                    files[rel] = self._entry(rel, abs_path)
        digest = hashlib.sha1()
        for rel in sorted(files):
            digest.update(f"{rel}\0{files[rel].blob_id}\n".encode())
        last = max((e.mtime for e in files.values()), default=root.stat().st_mtime)
        return _Snapshot(repo_id, digest.hexdigest(), files, frozenset(dirs), last)

    @staticmethod
    def _tree_id(snap: _Snapshot, directory: str) -> str:
        prefix = f"{directory}/"
        digest = hashlib.sha1(f"tree\0{directory}\n".encode())
        for rel in sorted(snap.files):
            if rel.startswith(prefix):
                digest.update(f"{rel}\0{snap.files[rel].blob_id}\n".encode())
        return digest.hexdigest()

    # -- internals: routing ------------------------------------------------------------------

    def _route(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        raw = parts.path.split("/")[1:]
        segs = [unquote(s) for s in raw]
        if segs and segs[0] == "url":
            if method not in ("GET", "HEAD"):
                return _json_response(405, {"error": "Method Not Allowed"})
            return self._serve_url(segs[1:], headers.get("Range"))
        if len(segs) == 3 and segs[:2] == ["api", "records"]:
            if method not in ("GET", "HEAD"):
                return _json_response(405, {"error": "Method Not Allowed"})
            return self._zenodo_record(segs[2])
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in _REPO_TYPES:
            return self._serve_api(method, segs[1], segs[2:], query, body)
        if len(segs) >= 6 and segs[0] == "datasets" and segs[3] == "resolve":
            return self._serve_resolve(method, "datasets", segs[1:], headers.get("Range"))
        if len(segs) >= 5 and segs[2] == "resolve":
            return self._serve_resolve(method, "models", segs, headers.get("Range"))
        return _json_response(404, {"error": "Not Found"})

    def _check(self, kind: str, repo_id: str, rev: str) -> _Snapshot | _Response:
        """Snapshot for (repo, revision) or the Hub-style error response."""
        snap = self._snapshot(kind, repo_id)
        if snap is None:
            return _hub_error(404, "RepoNotFound", "Repository not found")
        if rev not in ("main", "refs/heads/main", snap.sha):
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return snap

    def _serve_api(
        self, method: str, kind: str, segs: list[str], query: dict[str, list[str]], body: bytes
    ) -> _Response:
        repo_id, rest = f"{segs[0]}/{segs[1]}", segs[2:]
        if not rest and method in ("GET", "HEAD"):
            return self._repo_info(kind, repo_id, "main", query)
        if len(rest) == 2 and rest[0] == "revision" and method in ("GET", "HEAD"):
            return self._repo_info(kind, repo_id, rest[1], query)
        if len(rest) >= 2 and rest[0] == "tree" and method in ("GET", "HEAD"):
            return self._tree(kind, repo_id, rest[1], "/".join(rest[2:]), query)
        if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
            form = parse_qs(body.decode("utf-8", "replace"))
            return self._paths_info(kind, repo_id, rest[1], form)
        return _json_response(404, {"error": "Not Found"})

    def _repo_info(
        self, kind: str, repo_id: str, rev: str, query: dict[str, list[str]]
    ) -> _Response:
        snap = self._check(kind, repo_id, rev)
        if isinstance(snap, _Response):
            return snap
        blobs = _truthy(query.get("blobs"))
        siblings = []
        for rel in sorted(snap.files):
            entry = snap.files[rel]
            sibling: dict[str, Any] = {"rfilename": rel}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.sha256 is not None:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        owner = repo_id.split("/")[0]
        info = {
            "_id": snap.sha[:24],
            "id": repo_id,
            "author": owner,
            "sha": snap.sha,
            "lastModified": _iso(snap.last_modified),
            "createdAt": _iso(snap.last_modified),
            "private": self.token is not None,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in snap.files.values()),
        }
        return _json_response(200, info)

    def _tree_item(self, snap: _Snapshot, rel: str, expand: bool) -> dict[str, Any]:
        if rel in snap.files:
            entry = snap.files[rel]
            item: dict[str, Any] = {
                "type": "file",
                "oid": entry.blob_id,
                "size": entry.size,
                "path": rel,
            }
            if entry.sha256 is not None:
                item["lfs"] = {
                    "oid": entry.sha256,
                    "size": entry.size,
                    "pointerSize": entry.pointer_size,
                }
        else:
            item = {"type": "directory", "oid": self._tree_id(snap, rel), "size": 0, "path": rel}
        if expand:
            item["lastCommit"] = {
                "id": snap.sha,
                "title": "Mirror snapshot",
                "date": _iso(snap.last_modified),
            }
        return item

    def _tree(
        self, kind: str, repo_id: str, rev: str, directory: str, query: dict[str, list[str]]
    ) -> _Response:
        snap = self._check(kind, repo_id, rev)
        if isinstance(snap, _Response):
            return snap
        directory = directory.strip("/")
        if directory and directory not in snap.dirs:
            headers = [("X-Repo-Commit", snap.sha)]
            return _hub_error(404, "EntryNotFound", f"{directory} does not exist", headers)
        recursive, expand = _truthy(query.get("recursive")), _truthy(query.get("expand"))
        prefix = f"{directory}/" if directory else ""
        names = sorted(
            rel
            for rel in (*snap.dirs, *snap.files)
            if rel.startswith(prefix) and (recursive or "/" not in rel[len(prefix) :])
        )
        items = [self._tree_item(snap, rel, expand) for rel in names]
        return _json_response(200, items, [("X-Repo-Commit", snap.sha)])

    def _paths_info(
        self, kind: str, repo_id: str, rev: str, form: dict[str, list[str]]
    ) -> _Response:
        snap = self._check(kind, repo_id, rev)
        if isinstance(snap, _Response):
            return snap
        expand = _truthy(form.get("expand"))
        wanted = [p.strip("/") for p in form.get("paths", [])]
        items = [
            self._tree_item(snap, rel, expand)
            for rel in dict.fromkeys(wanted)
            if rel in snap.files or rel in snap.dirs
        ]
        return _json_response(200, items, [("X-Repo-Commit", snap.sha)])

    def _serve_resolve(
        self, method: str, kind: str, segs: list[str], range_header: str | None
    ) -> _Response:
        if method not in ("GET", "HEAD"):
            return _json_response(405, {"error": "Method Not Allowed"})
        repo_id, rev, rel = f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])
        snap = self._check(kind, repo_id, rev)
        if isinstance(snap, _Response):
            return snap
        entry = snap.files.get(rel)
        if entry is None:
            headers = [("X-Repo-Commit", snap.sha)]
            return _hub_error(404, "EntryNotFound", "Entry not found", headers)
        headers = [("X-Repo-Commit", snap.sha)]
        if entry.sha256 is not None:
            headers += [
                ("ETag", f'"{entry.sha256}"'),
                ("X-Linked-Etag", f'"{entry.sha256}"'),
                ("X-Linked-Size", str(entry.size)),
            ]
        else:
            headers.append(("ETag", f'"{entry.blob_id}"'))
        return _file_response(entry.abs_path, headers, range_header)

    def _serve_url(self, segs: list[str], range_header: str | None) -> _Response:
        safe = _safe_segments(segs)
        root = (self.mirror / "url").resolve()
        path = root.joinpath(*safe).resolve() if safe and len(safe) >= 2 else None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            return _json_response(404, {"error": "Not Found"})
        headers = [
            ("ETag", f'"{_md5(path)}"'),
            ("Last-Modified", _http_date(path.stat().st_mtime)),
        ]
        return _file_response(path, headers, range_header)

    def _zenodo_record(self, record_id: str) -> _Response:
        """A record from the files under its current (`records/`) or legacy (`record/`) path."""
        root = self.mirror / "url" / "zenodo.org"
        files: dict[str, dict[str, Any]] = {}
        for form in ("records", "record") if record_id.isdigit() else ():
            folder = root / form / record_id / "files"
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.is_file():
                    files.setdefault(path.name, self._zenodo_file(path))
        if not files:
            message = "The persistent identifier does not exist."
            return _json_response(404, {"status": 404, "message": message})
        record = {
            "id": int(record_id),
            "recid": record_id,
            "doi": f"10.5281/zenodo.{record_id}",
            "files": [files[name] for name in sorted(files)],
            "links": {"self": f"{self.endpoint}/api/records/{record_id}"},
        }
        return _json_response(200, record)

    def _zenodo_file(self, path: Path) -> dict[str, Any]:
        rel = path.relative_to(self.mirror / "url").as_posix()
        return {
            "id": hashlib.sha1(rel.encode()).hexdigest(),
            "key": path.name,
            "size": path.stat().st_size,
            "checksum": f"md5:{_md5(path)}",
            "links": {"self": f"{self.endpoint}/url/{quote(rel)}"},  # served as a plain URL
        }


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].strip().lower() in ("1", "true", "yes")


def _http_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
