"""The local Hub-shaped server speaks what the real huggingface_hub client and urllib expect."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from kd_pipeline import fetch
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.hub_server import Fault, HubServer

REPO = "kd-org/tiny"
TIMEOUT = 5
README = b"---\nlicense: mit\n---\n# tiny\n"
PART0 = bytes(range(256)) * 40  # 10240 bytes
PART1 = b"PAR1" + b"\x00\x01" * 500 + b"PAR1"
URL_BYTES = bytes((i * 7) % 256 for i in range(5000))
ZENODO_URL = "https://zenodo.org/records/1/files/x.tsv?download=1"


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    repo = root / "hf" / "datasets" / REPO
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_bytes(README)
    (repo / "data" / "train-00000.parquet").write_bytes(PART0)
    (repo / "data" / "train-00001.parquet").write_bytes(PART1)
    url_dir = root / "url" / "zenodo.org" / "records" / "1" / "files"
    url_dir.mkdir(parents=True)
    (url_dir / "x.tsv").write_bytes(URL_BYTES)
    return root


pytestmark = pytest.mark.usefixtures("hf_env")


@pytest.fixture
def server(mirror: Path) -> Iterator[HubServer]:
    with HubServer(mirror) as srv:
        yield srv


def _download(srv: HubServer, filename: str, revision: str, cache: Path, **kw: object) -> Path:
    path = hf_hub_download(
        REPO,
        filename,
        repo_type="dataset",
        revision=revision,
        cache_dir=cache,
        endpoint=srv.endpoint,
        etag_timeout=TIMEOUT,
        **{"token": False, **kw},
    )
    return Path(path)


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    return urllib.request.urlopen(request, timeout=TIMEOUT)


def test_dataset_info_matches_revision_and_lists_files(server: HubServer) -> None:
    api = HfApi(endpoint=server.endpoint, token=False)
    info = api.dataset_info(REPO, revision="main", files_metadata=True, timeout=TIMEOUT)
    assert info.id == REPO
    assert info.sha == server.revision(REPO)
    assert len(info.sha) == 40
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {"README.md", "data/train-00000.parquet", "data/train-00001.parquet"}
    assert siblings["README.md"].size == len(README)
    assert siblings["README.md"].lfs is None
    assert siblings["README.md"].blob_id
    lfs = siblings["data/train-00000.parquet"].lfs
    assert lfs is not None
    assert lfs.size == len(PART0)
    assert len(lfs.sha256) == 64
    assert lfs.pointer_size > 0
    assert siblings["data/train-00001.parquet"].size == len(PART1)

    pinned = api.dataset_info(REPO, revision=info.sha, timeout=TIMEOUT)
    assert pinned.sha == info.sha
    assert api.dataset_info(REPO, timeout=TIMEOUT).sha == info.sha

    files = api.list_repo_files(REPO, repo_type="dataset", revision=info.sha)
    assert sorted(files) == sorted(siblings)
    top = {e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", revision="main")}
    assert set(top) == {"README.md", "data"}
    assert isinstance(top["data"], huggingface_hub.hf_api.RepoFolder)
    sub = list(api.list_repo_tree(REPO, "data", repo_type="dataset", expand=True))
    assert [e.path for e in sub] == ["data/train-00000.parquet", "data/train-00001.parquet"]
    assert sub[0].lfs is not None and sub[0].lfs.sha256 == lfs.sha256
    assert getattr(sub[0], "xet_hash", None) is None  # (huggingface_hub < 1.0 has no field)
    assert sub[0].last_commit is not None and sub[0].last_commit.oid == info.sha
    paths = api.get_paths_info(REPO, ["README.md", "data", "missing"], repo_type="dataset")
    assert sorted(p.path for p in paths) == ["README.md", "data"]


def test_hf_hub_download_pinned_sha_uses_plain_http(server: HubServer, tmp_path: Path) -> None:
    sha = server.revision(REPO)
    cache = tmp_path / "cache"
    path = _download(server, "data/train-00000.parquet", sha, cache)
    assert path.read_bytes() == PART0
    assert f"/snapshots/{sha}/" in path.as_posix()
    assert _download(server, "README.md", sha, cache).read_bytes() == README
    resolve = f"/datasets/{REPO}/resolve/{sha}/data/train-00000.parquet"
    methods = [m for m, p, _ in server.requests if p == resolve]
    assert methods == ["HEAD", "GET"]  # metadata then a plain HTTP GET: no Xet involved
    # Cached now: a second call at the pinned sha needs no request at all.
    before = len(server.requests)
    assert _download(server, "data/train-00000.parquet", sha, cache).read_bytes() == PART0
    assert len(server.requests) == before
    cached = huggingface_hub.try_to_load_from_cache(
        REPO, "data/train-00000.parquet", cache_dir=cache, revision=sha, repo_type="dataset"
    )
    assert cached == str(path)


def test_changing_a_file_changes_the_revision(server: HubServer, mirror: Path, tmp_path: Path):
    old = server.revision(REPO)
    target = mirror / "hf" / "datasets" / REPO / "data" / "train-00001.parquet"
    new_bytes = PART1.replace(b"\x00\x01", b"\x01\x00", 1)  # same size, different bytes
    target.write_bytes(new_bytes)
    new = server.revision(REPO)
    assert new != old
    api = HfApi(endpoint=server.endpoint, token=False)
    assert api.dataset_info(REPO, timeout=TIMEOUT).sha == new
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision=old, timeout=TIMEOUT)
    path = _download(server, "data/train-00001.parquet", new, tmp_path / "cache")
    assert path.read_bytes() == new_bytes


def test_not_found_errors_map_to_hub_exceptions(server: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=server.endpoint, token=False)
    cache = tmp_path / "cache"
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="no-such-branch", timeout=TIMEOUT)
    with pytest.raises(RevisionNotFoundError):
        _download(server, "README.md", "0" * 40, cache)
    with pytest.raises(EntryNotFoundError):
        _download(server, "data/missing.parquet", server.revision(REPO), cache)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("kd-org/nope", timeout=TIMEOUT)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "kd-org/nope",
            "README.md",
            repo_type="dataset",
            cache_dir=cache,
            endpoint=server.endpoint,
            token=False,
        )


def test_token_is_required(mirror: Path, tmp_path: Path) -> None:
    with HubServer(mirror, token="hf_secret") as srv:
        anonymous = HfApi(endpoint=srv.endpoint, token=False)
        with pytest.raises(HfHubHTTPError) as missing:
            anonymous.dataset_info(REPO, timeout=TIMEOUT)
        assert missing.value.response.status_code == 401
        assert "Authorization" in str(missing.value)

        wrong = HfApi(endpoint=srv.endpoint, token="hf_wrong")
        with pytest.raises(HfHubHTTPError) as bad:
            wrong.dataset_info(REPO, timeout=TIMEOUT)
        assert bad.value.response.status_code == 401
        assert "Invalid credentials" in str(bad.value)

        with pytest.raises(HfHubHTTPError) as dl:
            _download(srv, "README.md", "main", tmp_path / "cache")
        assert dl.value.response.status_code == 401

        with pytest.raises(urllib.error.HTTPError) as plain:
            _get(srv.url_for(ZENODO_URL))
        assert plain.value.code == 401
        plain.value.close()

        good = HfApi(endpoint=srv.endpoint, token="hf_secret")
        assert good.dataset_info(REPO, timeout=TIMEOUT).sha == srv.revision(REPO)
        path = _download(srv, "README.md", "main", tmp_path / "cache", token="hf_secret")
        assert path.read_bytes() == README
        assert all("authorization" not in {k.lower() for k in h} for _, _, h in srv.requests)


def test_status_fault_then_success_is_logged(server: HubServer, tmp_path: Path) -> None:
    sha = server.revision(REPO)
    server.faults.append(Fault("/resolve/", "status", status=503, method="HEAD"))
    path = _download(server, "README.md", sha, tmp_path / "cache")
    assert path.read_bytes() == README
    heads = [p for m, p, _ in server.requests if m == "HEAD"]
    assert heads == [f"/datasets/{REPO}/resolve/{sha}/README.md"] * 2
    assert server.faults[0].times == 0


def test_url_file_head_and_range(server: HubServer) -> None:
    url = server.url_for(ZENODO_URL)
    assert url == f"{server.endpoint}/url/zenodo.org/records/1/files/x.tsv?download=1"
    with _get(url, method="HEAD") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(URL_BYTES)
        assert resp.headers["ETag"]
        assert resp.headers["Accept-Ranges"] == "bytes"
    with _get(url) as resp:
        assert resp.read() == URL_BYTES
    with _get(url, {"Range": "bytes=100-199"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{len(URL_BYTES)}"
        assert resp.read() == URL_BYTES[100:200]
    with _get(url, {"Range": "bytes=4990-"}) as resp:
        assert resp.status == 206
        assert resp.read() == URL_BYTES[4990:]
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(url, {"Range": f"bytes={len(URL_BYTES)}-"})
    assert err.value.code == 416
    assert err.value.headers["Content-Range"] == f"bytes */{len(URL_BYTES)}"
    err.value.close()
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(server.url_for("https://zenodo.org/records/1/files/nope.tsv"))
    assert missing.value.code == 404
    missing.value.close()


def test_zenodo_record_lists_the_files_with_their_current_md5(
    server: HubServer, mirror: Path
) -> None:
    def record() -> dict:
        with _get(f"{server.endpoint}/api/records/1") as resp:
            assert resp.headers["Content-Type"].startswith("application/json")
            return json.loads(resp.read())

    (entry,) = record()["files"]
    assert entry["key"] == "x.tsv" and entry["size"] == len(URL_BYTES)
    assert entry["checksum"] == "md5:" + hashlib.md5(URL_BYTES).hexdigest()
    with _get(entry["links"]["self"]) as resp:
        assert resp.read() == URL_BYTES
    (mirror / "url" / "zenodo.org" / "records" / "1" / "files" / "x.tsv").write_bytes(b"new")
    assert record()["files"][0]["checksum"] == "md5:" + hashlib.md5(b"new").hexdigest()
    for missing in ("2", "..", "1x"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{server.endpoint}/api/records/{missing}")
        assert err.value.code == 404
        err.value.close()


def test_url_paths_cannot_escape_the_mirror(server: HubServer) -> None:
    host, port = server.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        for target in (f"/url/../hf/datasets/{REPO}/README.md", "/url/zenodo.org/%2e%2e/x"):
            conn.request("GET", target)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 404
    finally:
        conn.close()


def test_drop_fault_cuts_a_urllib_read_short(server: HubServer) -> None:
    url = server.url_for(ZENODO_URL)
    server.faults.append(Fault("x.tsv", "drop", after_bytes=1000))
    with _get(url) as resp:
        assert int(resp.headers["Content-Length"]) == len(URL_BYTES)
        with pytest.raises(http.client.IncompleteRead) as short:
            resp.read()
    assert short.value.partial == URL_BYTES[:1000]
    with _get(url, {"Range": "bytes=1000-"}) as resp:  # resume where the drop happened
        assert resp.status == 206
        assert resp.read() == URL_BYTES[1000:]


def test_hub_download_resumes_after_a_drop(
    server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's Hub download (huggingface_hub under its retries) keeps the bytes it got
    and asks for the rest with a Range request: huggingface_hub >= 1.0 resumes by itself,
    0.x raises and the pipeline's retry resumes from the partial file."""
    # With the default 10 MiB chunk the partial body never reaches disk; small chunks let the
    # client keep the 4096 bytes it got and resume with a Range request.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    monkeypatch.setattr(fetch, "HUB_BACKOFF", 0.01)
    point_pipeline_at_hub(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    sha = server.revision(REPO)
    server.faults.append(Fault("train-00000", "drop", after_bytes=4096, method="GET"))
    path = fetch._hub_download(REPO, "data/train-00000.parquet", sha, attempts=3)
    assert path.read_bytes() == PART0
    gets = [h for m, p, h in server.requests if m == "GET" and "train-00000" in p]
    assert len(gets) == 2
    ranges = [{k.lower(): v for k, v in h.items()}.get("range") for h in gets]
    assert ranges == [None, "bytes=4096-"]


def test_resolve_honours_range(server: HubServer) -> None:
    sha = server.revision(REPO)
    url = f"{server.endpoint}/datasets/{REPO}/resolve/{sha}/data/train-00000.parquet"
    with _get(url, {"Range": "bytes=10-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-{len(PART0) - 1}/{len(PART0)}"
        assert resp.headers["X-Repo-Commit"] == sha
        assert resp.read() == PART0[10:]
    with _get(url, method="HEAD") as resp:
        assert resp.headers["X-Linked-Size"] == str(len(PART0))
        assert resp.headers["ETag"] == resp.headers["X-Linked-Etag"]
        assert "X-Xet-Hash" not in resp.headers


def test_stop_returns_promptly_during_a_stall(mirror: Path) -> None:
    srv = HubServer(mirror).start()
    srv.faults.append(Fault("x.tsv", "stall", seconds=30.0))
    url = srv.url_for(ZENODO_URL)
    outcome: list[BaseException | bytes] = []

    def client() -> None:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                outcome.append(resp.read())
        except BaseException as exc:  # recorded, asserted below
            outcome.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.requests, "the stalled request never reached the server"
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2.0
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], OSError | http.client.HTTPException)


def test_server_binds_loopback_only(server: HubServer) -> None:
    assert server.endpoint.startswith("http://127.0.0.1:")
