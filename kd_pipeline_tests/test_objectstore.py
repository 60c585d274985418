"""An object-store lake on moto's S3 server: the reachability probe before any run, and the
exports' SQL view and expiry through the object-store listings (kd_pipeline/objectstore.py).

No mocks: every case runs against moto's standalone server on loopback (the session's, or
one of this module that checks credentials), with a SQLite catalog in a temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd_pipeline import objectstore
from kd_pipeline.ducklake import CatalogUnreachable
from kd_pipeline.lake import MANIFEST_NAME, Lake, LakeError
from kd_pipeline.settings import CatalogChoice
from kd_pipeline_tests.servers import S3Server, free_port

EXPORT = ("exports", "pointwise", "pointwise_demo")  # the view exports.pointwise_demo


def use_server(monkeypatch: pytest.MonkeyPatch, server: S3Server, tmp_path: Path) -> None:
    """Point the AWS_* variables at `server` and the data home at tmp_path."""
    for key, value in server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KD_PIPELINE_HOME", str(tmp_path / "kd_home"))


def s3_lake(server: S3Server, tmp_path: Path, retention_days: float | None = None) -> Lake:
    """A lake in a fresh bucket of `server` (prefix `lake`), its catalog in tmp_path."""
    bucket = f"kd-objectstore-{secrets.token_hex(4)}"
    root = server.create_bucket(bucket) + "/lake"
    catalog = CatalogChoice("sqlite", str(tmp_path / "catalog.sqlite"))
    return Lake(root, catalog, retention_days=retention_days)


def publish_export(lake: Lake, partition: str | None, ids: Sequence[int]) -> str:
    """Publish a version of EXPORT's partition holding `ids`; return its URL."""
    with lake.stage(EXPORT, partition) as staged:
        table = pa.table({"id": pa.array(ids, pa.int64()), "score": [i / 10 for i in ids]})
        pq.write_table(table, staged.path / "part-00000.parquet")
        return str(lake.publish(staged, {"rows": len(ids)}).location)


def bucket_keys(server: S3Server, url: str) -> list[str]:
    """Every object key under the prefix `url` (`s3://bucket/prefix`)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return server.list_keys(bucket, prefix + "/")


def key_of(url: str) -> str:
    return url.removeprefix("s3://").partition("/")[2]


def refused(lake: Lake) -> str:
    """The one line a connection to `lake` is refused with."""
    with pytest.raises(CatalogUnreachable) as caught, lake.connect():
        pass
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        f"KD_PIPELINE_LAKE: cannot reach the lake {lake.root}: "
    )
    return message


# ---- 1. reachability, before any run --------------------------------------------------------
def test_a_missing_bucket_is_named_before_the_catalog_is_created(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, s3_server, tmp_path)
    lake = Lake("s3://kd-no-such-bucket/lake", CatalogChoice("sqlite", str(tmp_path / "c.sqlite")))
    message = refused(lake)
    assert message.endswith(f"no such bucket 'kd-no-such-bucket' at {s3_server.endpoint_url}")
    # refused before ATTACH: no catalog was created pointing at the wrong bucket
    assert not (tmp_path / "c.sqlite").exists()


@pytest.mark.parametrize("endpoint", ["closed port", "unknown host"])
def test_an_unreachable_endpoint_is_named_quickly(
    endpoint: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, s3_server, tmp_path)
    bucket = s3_server.create_bucket(f"kd-endpoint-{secrets.token_hex(4)}")
    if endpoint == "closed port":
        unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        unreachable = "http://kd-lake.invalid:9000"  # .invalid never resolves (RFC 2606)
    monkeypatch.setenv("AWS_ENDPOINT_URL", unreachable)
    began = time.monotonic()
    message = refused(Lake(bucket + "/lake", CatalogChoice("sqlite", str(tmp_path / "c.sqlite"))))
    assert f"endpoint unreachable: {unreachable}" in message and "AWS_ENDPOINT_URL" in message
    assert time.monotonic() - began < 30
    assert not (tmp_path / "c.sqlite").exists()


def test_a_reachable_lake_connects_and_publishes(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path)
    with lake.connect() as con:
        assert con.execute("SELECT 42").fetchone() == (42,)
    location = publish_export(lake, None, [1, 2])
    assert key_of(location) + "/part-00000.parquet" in bucket_keys(s3_server, str(lake.root))


class AuthS3Server:
    """moto's S3 server with IAM authentication on: it refuses unknown keys and wrong
    secrets. Its first 3 requests (unauthenticated) create the user `kd`, its policy and
    its key; every later one must be signed with that key."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        fd, log = tempfile.mkstemp(prefix="kd-moto-auth-", suffix=".log")
        self.log = Path(log)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(fd)
        deadline = time.monotonic() + 60
        while True:  # a TCP connect, not a request: requests count against the 3
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        "moto's server with IAM authentication did not start"
                    ) from None
                time.sleep(0.05)
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="kd")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="kd", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="kd")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def environment(self, key_id: str, secret: str) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def auth_s3_server() -> Iterator[AuthS3Server]:
    server = AuthS3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("wrong", ["unknown key", "wrong secret"])
def test_refused_credentials_are_named_and_the_right_ones_connect(
    wrong: str, auth_s3_server: AuthS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = auth_s3_server
    bucket = f"kd-auth-{secrets.token_hex(4)}"
    boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.key_id,
        aws_secret_access_key=server.secret,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    monkeypatch.setenv("KD_PIPELINE_HOME", str(tmp_path / "kd_home"))
    key_id = "AKIAKDPIPELINEWRONG0" if wrong == "unknown key" else server.key_id
    for name, value in server.environment(key_id, "not-the-secret").items():
        monkeypatch.setenv(name, value)
    catalog = CatalogChoice("sqlite", str(tmp_path / "c.sqlite"))
    message = refused(Lake(f"s3://{bucket}/lake", catalog))
    assert "access denied" in message and "AWS_ACCESS_KEY_ID" in message
    assert not (tmp_path / "c.sqlite").exists()

    # the same lake with the right key: probed, attached, published
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
    lake = Lake(f"s3://{bucket}/lake", catalog)
    location = publish_export(lake, None, [7])
    assert objectstore.list_objects(location)[0].url == f"{location}/{MANIFEST_NAME}"
    # a probe that passed holds for those settings only: the wrong secret is refused again
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(CatalogUnreachable, match="access denied"):
        objectstore.probe(f"s3://{bucket}/lake")


def test_materialize_names_an_unreachable_lake_in_one_line_before_any_run(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dagster as dg

    from kd_pipeline.cli import main

    use_server(monkeypatch, s3_server, tmp_path)
    monkeypatch.setenv("KD_PIPELINE_LAKE", "s3://kd-no-such-bucket-cli/lake")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert main(["materialize", "--partition", "agnews"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "kd-pipeline: KD_PIPELINE_LAKE: cannot reach the lake s3://kd-no-such-bucket-cli/lake: "
        f"no such bucket 'kd-no-such-bucket-cli' at {s3_server.endpoint_url}"
    ]
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert instance.get_runs() == []


def test_sql_names_an_unreachable_lake_not_a_lake_not_made_yet(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`kd-pipeline sql` on an object-store lake whose bucket is missing names the bucket
    (the sibling: a reachable lake with no catalog yet is "no lake ... yet")."""
    from kd_pipeline.cli import main

    use_server(monkeypatch, s3_server, tmp_path)
    monkeypatch.setenv("KD_PIPELINE_LAKE", "s3://kd-no-such-bucket-sql/lake")
    assert main(["sql", "SELECT 1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "kd-pipeline: KD_PIPELINE_LAKE: cannot reach the lake s3://kd-no-such-bucket-sql/lake: "
        f"no such bucket 'kd-no-such-bucket-sql' at {s3_server.endpoint_url}"
    ]
    reachable = s3_server.create_bucket(f"kd-sql-{secrets.token_hex(4)}") + "/lake"
    monkeypatch.setenv("KD_PIPELINE_LAKE", reachable)
    assert main(["sql", "SELECT 1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"kd-pipeline sql: no lake at {reachable} yet")


# ---- 3. an export's view and expiry on the object store -----------------------------------
def view_rows(lake: Lake, partitioned: bool = True) -> list[tuple]:
    columns = "partition, id" if partitioned else "id"
    with lake.connect(read_only=True) as con:
        return con.execute(f"SELECT {columns} FROM exports.pointwise_demo ORDER BY ALL").fetchall()


def test_the_export_view_reads_the_current_version_of_every_partition(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path)  # the default retention: 7 days
    first = publish_export(lake, "bert", [1, 2, 3])
    publish_export(lake, "minilm", [10, 11])
    second = publish_export(lake, "bert", [4, 5])

    assert view_rows(lake) == [("bert", 4), ("bert", 5), ("minilm", 10), ("minilm", 11)]
    # another process browses it: `kd-pipeline sql` attaches the lake with the AWS_* settings
    env = {**os.environ, "KD_PIPELINE_LAKE": str(lake.root)}
    env["KD_PIPELINE_CATALOG"] = f"sqlite:{lake.catalog.target}"
    query = "SELECT partition, count(*) AS n FROM exports.pointwise_demo GROUP BY ALL ORDER BY 1"
    proc = subprocess.run(
        [sys.executable, "-m", "kd_pipeline.cli", "sql", "--csv", query],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "partition,n\nbert,2\nminilm,2\n"), proc.stderr
    # within the retention the replaced version stays whole
    keys = bucket_keys(s3_server, str(lake.root))
    for version in (first, second):
        assert {
            f"{key_of(version)}/part-00000.parquet",
            f"{key_of(version)}/{MANIFEST_NAME}",
        } <= set(keys)


@pytest.mark.parametrize("partition", ["bert", None], ids=["partitioned", "unpartitioned"])
def test_with_retention_0_the_old_export_version_goes_and_the_current_stays(
    partition: str | None, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path, retention_days=0)
    old = publish_export(lake, partition, [1, 2, 3])
    time.sleep(1.1)  # S3 times are whole seconds: the replacement must be older than now
    current = publish_export(lake, partition, [4, 5])

    export_prefix = f"{lake.root}/{'/'.join(EXPORT)}"
    assert bucket_keys(s3_server, old) == []
    # (pyarrow's delete leaves an empty marker `<partition>/` for the parent folder)
    assert [key for key in bucket_keys(s3_server, export_prefix) if not key.endswith("/")] == [
        f"{key_of(current)}/{MANIFEST_NAME}",
        f"{key_of(current)}/part-00000.parquet",
    ]
    expected = [(partition, 4), (partition, 5)] if partition else [(4,), (5,)]
    assert view_rows(lake, partitioned=partition is not None) == expected


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_the_current_export_version_survives_a_newer_leftover_version(
    where: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version uploaded but never committed (a failed commit whose cleanup failed too)
    sorts after the current one; expiry pairs each version with the next, so without the
    registry's word it would take the current version for replaced."""
    use_server(monkeypatch, s3_server, tmp_path)
    if where == "s3":
        lake = s3_lake(s3_server, tmp_path, retention_days=0)
    else:
        lake = Lake(tmp_path / "lake", retention_days=0)
    current = publish_export(lake, "bert", [1, 2])
    leftover = current.rsplit("/", 1)[0] + "/99991231T000000Z-00000000"
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text("{}")
    if where == "s3":
        bucket, _, key = leftover.removeprefix("s3://").partition("/")
        s3_server.client().upload_file(str(manifest), bucket, f"{key}/{MANIFEST_NAME}")
    else:
        Path(leftover).mkdir()
        os.utime(manifest, (0, 0))
        manifest.replace(Path(leftover, MANIFEST_NAME))
    time.sleep(1.1)

    lake.expire_export_versions(EXPORT)

    assert view_rows(lake) == [("bert", 1), ("bert", 2)]
    if where == "s3":
        assert f"{key_of(current)}/part-00000.parquet" in bucket_keys(s3_server, current)
    else:
        assert Path(current, "part-00000.parquet").is_file()


def test_a_killed_writers_upload_is_deleted_with_its_folder(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`delete_orphaned_files` on an object store: the files no snapshot references (a
    version uploaded by a writer killed before its commit) go, and so does their folder
    (no marker object left behind); the published version stays and reads."""
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path, retention_days=0)
    with lake.stage(("fam", "asset"), "p") as staged:
        pq.write_table(pa.table({"id": [1, 2]}), staged.path / "part-00000.parquet")
        current = str(lake.publish(staged, {"rows": 2}).location)
    killed = current.rsplit("/", 1)[0] + "/99991231T000000Z-00000000"
    pq.write_table(pa.table({"id": [9]}), tmp_path / "orphan.parquet")
    bucket, _, key = killed.removeprefix("s3://").partition("/")
    for name in ("part-00000.parquet", "part-00001.parquet"):
        s3_server.client().upload_file(str(tmp_path / "orphan.parquet"), bucket, f"{key}/{name}")
    time.sleep(1.1)  # older than the retention (0 days) at S3's one-second resolution

    lake.delete_orphaned_files()

    assert bucket_keys(s3_server, killed) == []
    assert bucket_keys(s3_server, killed.rsplit("/", 1)[0]) == [
        f"{key_of(killed).rsplit('/', 1)[0]}/",  # pyarrow's marker of the partition folder
        f"{key_of(current)}/part-00000.parquet",
    ]
    with lake.connect(read_only=True) as con:
        assert con.execute("SELECT id FROM fam.asset ORDER BY id").fetchall() == [(1,), (2,)]


def test_a_version_refused_inside_the_commit_leaves_nothing_in_the_bucket(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column whose type changed is refused inside the commit, after the upload: the
    uploaded version is deleted with the rollback, the published one stays whole (the
    sibling: a commit that fails in DuckDB, covered by the lake's reliability tests)."""
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path)
    key = ("fam", "scores")
    with lake.stage(key, "p1") as staged:
        pq.write_table(pa.table({"id": pa.array([1], pa.int64())}), staged.path / "a.parquet")
        kept = str(lake.publish(staged, {"rows": 1}).location)
    with lake.stage(key, "p1") as staged:
        pq.write_table(pa.table({"id": ["not a number"]}), staged.path / "a.parquet")
        with pytest.raises(LakeError, match="column id is VARCHAR in the new version"):
            lake.publish(staged, {"rows": 1})
        refused_key = key_of(f"{lake.root}/data/fam/scores/partition=p1/{staged.version}")
    keys = bucket_keys(s3_server, str(lake.root))
    assert key_of(kept) + "/a.parquet" in keys
    assert not [k for k in keys if k.startswith(refused_key) and k.endswith(".parquet")]
    with lake.connect(read_only=True) as con:
        assert con.execute("SELECT id FROM fam.scores").fetchall() == [(1,)]


def test_an_upload_that_fails_is_one_line_naming_the_lake(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket goes away after the lake was reached (deleted, or its permissions
    changed): the publish's upload fails as one LakeError line naming KD_PIPELINE_LAKE,
    nothing is committed, the stage is cleaned."""
    use_server(monkeypatch, s3_server, tmp_path)
    lake = s3_lake(s3_server, tmp_path)
    with lake.connect():
        pass  # reached and probed
    bucket = str(lake.root).removeprefix("s3://").partition("/")[0]
    client = s3_server.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)
    with pytest.raises(LakeError) as caught:
        publish_export(lake, "bert", [1])
    (line,) = str(caught.value).splitlines()
    assert "not published, the upload to s3://" in line and "(KD_PIPELINE_LAKE) failed" in line
    assert not lake.is_published(EXPORT, "bert")
