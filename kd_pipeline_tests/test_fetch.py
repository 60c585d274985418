"""The fetch layer against real clients: the Hub path through huggingface_hub and a local
Hub-shaped server (HF_ENDPOINT), plain HTTP with resume and md5, and mirror containment."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from kd_pipeline.families.lighton_configs import LIGHTON_REPO_ID
from kd_pipeline.fetch import (
    ChecksumMismatch,
    Fetcher,
    FetchError,
    contained,
    download_url,
    file_md5,
    mirror_path_for_url,
    read_url,
    sample_mirror,
    url_cache_path,
    verified_as,
)
from kd_pipeline.lake import Lake
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.helpers import failures, run_lighton_partition
from kd_pipeline_tests.hub_server import Fault, HubServer

pytestmark = pytest.mark.usefixtures("hf_env")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """The sample mirror served in the Hub's shape; the pipeline pointed at it by endpoint."""
    with HubServer(sample_mirror()) as server:
        point_pipeline_at_hub(monkeypatch, server.endpoint)
        yield server


def test_raw_partition_from_the_hub_pins_the_revision_and_caches_files(hub, lake_dir) -> None:
    result = run_lighton_partition("msmarco")
    assert result.success, failures(result)
    meta = result.asset_materializations_for_node("lighton__raw")[0].metadata
    assert meta["source"].value == "hub"
    assert meta["revision"].value == hub.revision(LIGHTON_REPO_ID)
    assert meta["dagster/row_count"].value == 200
    downloads = [p for m, p, _ in hub.requests if "/resolve/" in p and m == "GET"]
    assert len(downloads) == 4  # the card and three msmarco shards
    assert all(f"/resolve/{hub.revision(LIGHTON_REPO_ID)}/" in p for p in downloads)

    hub.requests.clear()
    assert run_lighton_partition("msmarco").success
    assert [p for _, p, _ in hub.requests if "/resolve/" in p] == []  # served from the cache
    assert Lake(lake_dir).is_published(("lighton", "raw"), "msmarco")


def test_hub_errors_are_clear_and_never_show_the_token(hub, tmp_path, monkeypatch) -> None:
    secret = "hf_" + "s3cr3tT0kenValue1234"
    hub.token = "hf_expected_token_0000"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    fetcher = Fetcher("hub", None, tmp_path / "cache")
    with pytest.raises(FetchError) as caught:
        fetcher.dataset_snapshot(LIGHTON_REPO_ID)
    assert "HF_TOKEN" in str(caught.value) and secret not in str(caught.value)
    hub.token = None
    with pytest.raises(FetchError, match="revision not found"):
        fetcher.dataset_snapshot(LIGHTON_REPO_ID, revision="0" * 40)
    with pytest.raises(FetchError, match="not found or not accessible"):
        fetcher.dataset_snapshot("nobody/nothing")


def _serve_file(tmp_path: Path, payload: bytes) -> tuple[Path, str]:
    url = "https://zenodo.org/records/4068216/files/scores.tsv?download=1"
    target = mirror_path_for_url(tmp_path / "mirror", url)
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    return tmp_path / "mirror", url


def test_download_resumes_after_a_drop_and_verifies_md5(tmp_path) -> None:
    payload = os.urandom(300_000)
    mirror, url = _serve_file(tmp_path, payload)
    with HubServer(mirror) as server:
        server.faults.append(Fault("scores.tsv", "drop", after_bytes=100_000))
        server.faults.append(Fault("scores.tsv", "status", status=503))
        dest = tmp_path / "cache" / "scores.tsv"
        md5 = hashlib.md5(payload).hexdigest()
        assert (
            download_url(server.url_for(url), dest, md5=md5, backoff=0.01).read_bytes() == payload
        )
        ranges = [h.get("Range") for m, p, h in server.requests if "scores.tsv" in p]
        assert ranges[0] is None and ranges[-1] == "bytes=100000-"  # resumed, not restarted
        server.requests.clear()
        download_url(server.url_for(url), dest, md5=md5)
        assert server.requests == []  # verified files are never fetched again


def test_download_md5_mismatch_and_404_are_clear(tmp_path) -> None:
    mirror, url = _serve_file(tmp_path, b"a\tb\n")
    with HubServer(mirror) as server:
        dest = tmp_path / "cache" / "scores.tsv"
        with pytest.raises(FetchError, match="md5 mismatch"):
            download_url(server.url_for(url), dest, md5="0" * 32, backoff=0.01)
        assert not dest.exists() and not dest.with_name("scores.tsv.part").exists()
        keyed = url_cache_path(tmp_path / "cache", server.url_for(url), "0" * 32)
        with pytest.raises(FetchError, match="md5 mismatch"):
            download_url(server.url_for(url), keyed, md5="0" * 32, backoff=0.01)
        assert not keyed.parent.exists()  # no empty md5-<hex>/ folder left behind
        with pytest.raises(FetchError, match="not found"):
            download_url(server.url_for(url.replace("scores", "nothing")), dest, backoff=0.01)


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def test_download_reuses_a_copy_only_for_the_md5_it_was_verified_against(tmp_path) -> None:
    mirror, url = _serve_file(tmp_path, b"old\n")
    with HubServer(mirror) as server:
        dest = tmp_path / "cache" / "scores.tsv"
        download_url(server.url_for(url), dest, md5=_md5(b"old\n"))
        mirror_path_for_url(mirror, url).write_bytes(b"new\n")
        server.requests.clear()
        assert download_url(server.url_for(url), dest, md5=_md5(b"new\n")).read_bytes() == (
            b"new\n"
        )
        assert len(server.requests) == 1


def test_url_cache_is_keyed_by_md5_so_a_new_md5_is_a_new_download(tmp_path, monkeypatch) -> None:
    """The copy verified against the old md5 stays for runs that still expect it and is
    never handed out for the new one; a wrong md5 leaves nothing behind."""
    old_md5, new_md5, wrong = _md5(b"old\n"), _md5(b"new\n"), "0" * 32
    mirror, url = _serve_file(tmp_path, b"old\n")
    cache = tmp_path / "cache"
    fetcher = Fetcher("hub", None, cache)
    with HubServer(mirror) as server:
        monkeypatch.setenv("KD_PIPELINE_HTTP_MIRROR", server.endpoint + "/url")
        old = fetcher.url_file(url, old_md5)
        mirror_path_for_url(mirror, url).write_bytes(b"new\n")
        server.requests.clear()
        new = fetcher.url_file(url, new_md5)
        assert len(server.requests) == 1
        assert (old.read_bytes(), new.read_bytes()) == (b"old\n", b"new\n")
        assert new == url_cache_path(cache, url, new_md5)
        assert (new.parent.name, new.name) == (f"md5-{new_md5}", "scores.tsv")
        server.requests.clear()
        assert fetcher.url_file(url, old_md5) == old and server.requests == []

        with pytest.raises(ChecksumMismatch, match=f"expected {wrong}, got {new_md5}"):
            fetcher.url_file(url, wrong)
        assert not url_cache_path(cache, url, wrong).exists()
        with pytest.raises(FetchError, match="not an md5"):
            fetcher.url_file(url, "../../../elsewhere")


def test_a_copy_cached_before_md5_keys_is_adopted_only_for_its_own_md5(
    tmp_path, monkeypatch
) -> None:
    """Downloads used to be cached at `<cache>/url/<host>/<path>` with the md5 in a marker: an
    upgrade moves such a copy to its keyed place instead of fetching it again, and only for
    the md5 it was verified against."""
    mirror, url = _serve_file(tmp_path, b"new\n")
    cache = tmp_path / "cache"
    legacy = url_cache_path(cache, url, None)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old\n")
    legacy.with_name(legacy.name + ".verified").write_text(_md5(b"old\n"))
    fetcher = Fetcher("hub", None, cache)
    with HubServer(mirror) as server:
        monkeypatch.setenv("KD_PIPELINE_HTTP_MIRROR", server.endpoint + "/url")
        assert fetcher.url_file(url, _md5(b"new\n")).read_bytes() == b"new\n"
        assert len(server.requests) == 1 and legacy.is_file()  # not its md5: left alone
        server.requests.clear()
        adopted = fetcher.url_file(url, _md5(b"old\n"))
        assert adopted.read_bytes() == b"old\n" and server.requests == []
        assert adopted == url_cache_path(cache, url, _md5(b"old\n")) and not legacy.exists()


def test_an_old_marker_without_an_md5_verifies_nothing(tmp_path) -> None:
    """A marker from before fingerprints holds only the md5 the download was checked
    against: one written for a download without an md5 is empty, and proves nothing about
    the bytes; one holding an md5 still verifies exactly the bytes with that md5."""
    dest = tmp_path / "scores.tsv"
    dest.write_bytes(b"tampered\n")
    marker = tmp_path / "scores.tsv.verified"
    marker.write_text("\n")
    assert verified_as(dest, marker, None) is False
    marker.write_text(_md5(b"original\n") + "\n")
    assert verified_as(dest, marker, None) is False
    marker.write_text(_md5(b"tampered\n") + "\n")
    assert verified_as(dest, marker, None) is True


def test_download_gives_up_after_bounded_retries(tmp_path) -> None:
    mirror, url = _serve_file(tmp_path, b"x")
    with HubServer(mirror) as server:
        server.faults.append(Fault("scores.tsv", "status", status=500, times=10))
        with pytest.raises(FetchError, match="HTTP 500 after 3 attempt"):
            download_url(server.url_for(url), tmp_path / "d", attempts=3, backoff=0.01)
        assert sum("scores.tsv" in p for _, p, _ in server.requests) == 3


@pytest.mark.parametrize("rel", ["../outside", "a/../../x", "/etc/passwd", "a\\b", ""])
def test_mirror_paths_cannot_escape(tmp_path, rel) -> None:
    with pytest.raises(FetchError):
        Fetcher("mirror", tmp_path, tmp_path / "c").dataset_file(_snapshot_with(rel), rel)


def _snapshot_with(rel: str):
    from kd_pipeline.fetch import DatasetSnapshot, RepoFile

    return DatasetSnapshot(LIGHTON_REPO_ID, "r", "m", {rel: RepoFile(rel, 1)})


def test_symlink_out_of_the_mirror_is_refused(tmp_path) -> None:
    outside = tmp_path / "secret.parquet"
    outside.write_bytes(b"x")
    repo = tmp_path / "mirror" / "hf" / "datasets" / LIGHTON_REPO_ID / "agnews"
    repo.mkdir(parents=True)
    (repo / "train.parquet").symlink_to(outside)
    with pytest.raises(FetchError, match="outside"):
        Fetcher("mirror", tmp_path / "mirror", tmp_path / "c").dataset_snapshot(LIGHTON_REPO_ID)
    assert contained(tmp_path, "mirror") == (tmp_path / "mirror").resolve()


def test_hub_5xx_on_download_is_retried_with_backoff(hub, lake_dir, monkeypatch) -> None:
    import kd_pipeline.fetch as fetch

    monkeypatch.setattr(fetch, "HUB_BACKOFF", 0.01)
    hub.faults.append(Fault("/agnews/", "status", status=503, times=2, method="GET"))
    result = run_lighton_partition("agnews")
    assert result.success, failures(result)
    gets = [p for m, p, _ in hub.requests if m == "GET" and "/agnews/" in p]
    assert len(gets) >= 3  # two 503s, then the file


def test_hub_stall_ends_in_a_clear_timeout(hub, tmp_path, monkeypatch) -> None:
    import kd_pipeline.fetch as fetch

    monkeypatch.setattr(fetch, "HUB_BACKOFF", 0.01)
    monkeypatch.setattr(fetch, "HUB_ATTEMPTS", 2)
    monkeypatch.setenv("KD_PIPELINE_HUB_TIMEOUT", "2")
    hub.faults.append(Fault("/api/datasets", "stall", seconds=20, times=5))
    started = time.monotonic()
    with pytest.raises(FetchError, match="lightonai/embeddings-pre-training"):
        Fetcher("hub", None, tmp_path / "cache").dataset_snapshot(LIGHTON_REPO_ID)
    assert time.monotonic() - started < 15


def test_url_stall_and_refusal_are_clear(tmp_path) -> None:
    mirror, url = _serve_file(tmp_path, b"payload")
    with HubServer(mirror, token="hf_required_token_123") as server:
        with pytest.raises(FetchError, match=r"access refused \(HTTP 401\)"):
            download_url(server.url_for(url), tmp_path / "a", backoff=0.01)
        server.token = None
        server.faults.append(Fault("scores.tsv", "stall", seconds=10, times=5))
        started = time.monotonic()
        with pytest.raises(FetchError, match="after 2 attempts"):
            download_url(server.url_for(url), tmp_path / "b", timeout=1, attempts=2, backoff=0.01)
        assert time.monotonic() - started < 10


def test_read_url_asks_once_is_time_bounded_and_refuses_other_schemes(tmp_path) -> None:
    mirror, url = _serve_file(tmp_path, b"payload")
    with HubServer(mirror) as server:
        assert read_url(server.url_for(url), timeout=5) == b"payload"
        server.faults.append(Fault("scores.tsv", "stall", seconds=10))
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"TimeoutError|URLError"):
            read_url(server.url_for(url), timeout=1)
        assert time.monotonic() - started < 5
        server.requests.clear()
        server.faults.append(Fault("scores.tsv", "status", status=503, times=5))
        with pytest.raises(FetchError, match=r": HTTP 503$"):
            read_url(server.url_for(url), timeout=5)
        assert len(server.requests) == 1  # the caller polls: no retry here
    for other in ("file:///etc/passwd", "ftp://example.org/x"):
        with pytest.raises(FetchError, match="not an http"):
            read_url(other, timeout=1)


def _tamper_keeping_mtime(path: Path, at: int = 0) -> None:
    """Change one byte in place, same size, and set the mtime back (as `cp -p` or rsync
    onto an existing file, or a careless repair, would leave it)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    with open(path, "r+b") as handle:  # in place: the same inode
        handle.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


@pytest.mark.parametrize("size", [4_000, 70 << 20], ids=["small-rehashed", "large-fingerprint"])
def test_a_same_size_tamper_with_mtime_kept_is_caught_in_the_mirror(tmp_path, size) -> None:
    mirror, url = _serve_file(tmp_path, b"1.5\t0.5\tq1\tp1\tn1\n" * (size // 18))
    path = mirror_path_for_url(mirror, url)
    md5 = file_md5(path)
    fetcher = Fetcher("mirror", mirror, tmp_path / "cache")
    assert fetcher.url_file(url, md5) == path.resolve()
    assert fetcher.url_file(url, md5) == path.resolve()  # verified, remembered
    _tamper_keeping_mtime(path)
    with pytest.raises(ChecksumMismatch, match="md5 mismatch"):
        fetcher.url_file(url, md5)


@pytest.mark.parametrize("size", [4_000, 70 << 20], ids=["small-rehashed", "large-fingerprint"])
def test_a_tampered_cached_download_is_fetched_again(tmp_path, size) -> None:
    payload = b"1.5\t0.5\tq1\tp1\tn1\n" * (size // 18)
    mirror, url = _serve_file(tmp_path, payload)
    with HubServer(mirror) as server:
        dest = tmp_path / "cache" / "scores.tsv"
        download_url(server.url_for(url), dest, md5=_md5(payload))
        server.requests.clear()
        download_url(server.url_for(url), dest, md5=_md5(payload))
        assert server.requests == []  # unchanged: not fetched again
        _tamper_keeping_mtime(dest, at=5)
        assert download_url(server.url_for(url), dest, md5=_md5(payload)).read_bytes() == payload
        assert len(server.requests) == 1  # the changed copy was not trusted
        _tamper_keeping_mtime(dest, at=7)  # and a download without an md5 too
        assert download_url(server.url_for(url), dest).read_bytes() == payload
