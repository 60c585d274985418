"""Schedules, the upstream-change sensor and eager automation, evaluated as real ticks."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import pytest

from kd_pipeline.automation import (
    UPSTREAM_REVISION_TAG,
    ZENODO_RECORD_TAG,
    build_refresh_schedule,
    lighton_upstream_changes,
    zenodo_upstream_changes,
)
from kd_pipeline.families.hofstaetter import HOFSTAETTER_JOB
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.families.rank_distillm import RANK_DISTILLM_JOB, RUNS_KEY
from kd_pipeline.families.text import (
    MSMARCO_COLLECTION_KEY,
    MSMARCO_QRELS_TRAIN_KEY,
    MSMARCO_QUERIES_TRAIN_KEY,
    TEXT_JOB,
)
from kd_pipeline.families.upstream import (
    HOFSTAETTER_FILES,
    HOFSTAETTER_RECORD,
    RANK_DISTILLM_RECORD,
    RUN_TAG,
    RUN_VARIANTS,
    zenodo_record_url,
)
from kd_pipeline.fetch import file_md5, sample_mirror
from kd_pipeline.lake import Lake
from kd_pipeline.resources import UpstreamResource
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.family_runs import edit_lines, materialized, rows, run_job, url_path
from kd_pipeline_tests.helpers import (
    failures,
    lighton_repo,
    pairs,
    run_lighton_partition,
    write_pairs,
)
from kd_pipeline_tests.hub_server import Fault, HubServer


def test_weekly_refresh_requests_each_raw_partition_once_per_tick(monkeypatch) -> None:
    monkeypatch.delenv("KD_PIPELINE_REFRESH_CRON", raising=False)
    schedule = build_refresh_schedule()
    assert schedule.cron_schedule == "0 3 * * 1"
    with dg.instance_for_test() as instance:
        tick = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
        from kd_pipeline.definitions import defs

        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            repository_def=defs.get_repository_def(),
        )
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == list(LIGHTON_CONFIGS)
    assert len({r.run_key for r in requests}) == 73
    assert all(r.run_key.startswith("2026-11-23T03:00:") for r in requests)


def test_refresh_cron_is_configurable(monkeypatch) -> None:
    monkeypatch.setenv("KD_PIPELINE_REFRESH_CRON", "30 1 * * *")
    assert build_refresh_schedule().cron_schedule == "30 1 * * *"


@pytest.fixture
def hub_copy(tmp_path, monkeypatch, hf_env):
    """A copy of the sample mirror served in the Hub's shape (so a test may change it)."""
    mirror = tmp_path / "served"
    shutil.copytree(sample_mirror(), mirror)
    with HubServer(mirror) as server:
        point_pipeline_at_hub(monkeypatch, server.endpoint)
        yield server, mirror


def _tick(instance, cursor, sensor=lighton_upstream_changes):
    from kd_pipeline.definitions import defs

    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"upstream": UpstreamResource()},
        repository_def=defs.get_repository_def(),
    )
    return sensor.evaluate_tick(context)


def test_sensor_refreshes_only_the_config_whose_file_changed(hub_copy) -> None:
    server, mirror = hub_copy
    with dg.instance_for_test() as instance:
        first = _tick(instance, None)
        assert not first.run_requests and "baseline" in first.skip_message
        server.requests.clear()
        second = _tick(instance, first.cursor)
        assert not second.run_requests and "unchanged" in second.skip_message
        api_calls = [p for m, p, _ in server.requests if p.startswith("/api/")]
        assert len(api_calls) == 1  # one listing per tick, no storm

        write_pairs(lighton_repo(mirror) / "agnews" / "train-00000-of-00001.parquet", pairs(7))
        third = _tick(instance, second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["agnews"]
    revision = server.revision(LIGHTON_REPO_ID)
    assert third.run_requests[0].tags[UPSTREAM_REVISION_TAG] == revision
    assert revision not in first.cursor and revision in third.cursor


def test_lighton_sensor_skips_naming_the_dataset_when_the_hub_fails(hub_copy, monkeypatch) -> None:
    """A Hub outage is a skip reason with the error, not a failed tick; the cursor stays, so
    the next tick compares against the same baseline."""
    import kd_pipeline.fetch as fetch

    monkeypatch.setattr(fetch, "HUB_BACKOFF", 0.01)
    server, _ = hub_copy
    with dg.instance_for_test() as instance:
        baseline = _tick(instance, None)
        server.faults.append(Fault(f"/api/datasets/{LIGHTON_REPO_ID}", "status", times=10))
        failed = _tick(instance, baseline.cursor)
        server.faults.clear()
        server.faults.append(Fault(f"/api/datasets/{LIGHTON_REPO_ID}", "status", times=1))
        server.requests.clear()
        once = _tick(instance, failed.cursor)  # one 503, then the Hub would answer
        listings = [p for _, p, _ in server.requests if p.startswith("/api/datasets/")]
        recovered = _tick(instance, failed.cursor)
        server.stop()
        unreachable = _tick(instance, recovered.cursor)
        first_tick_down = _tick(instance, None)

    skip = f"could not list {LIGHTON_REPO_ID}, compared again next tick: dataset {LIGHTON_REPO_ID}"
    assert not failed.run_requests
    assert failed.skip_message == f"{skip}@main: Hub request failed (HTTP 503)"
    assert failed.cursor == baseline.cursor
    # a tick asks once (the next tick is its retry), so a slow failing Hub keeps it short
    assert len(listings) == 1 and once.skip_message.startswith(skip)
    assert once.cursor == baseline.cursor
    assert not recovered.run_requests and "unchanged" in recovered.skip_message
    assert not unreachable.run_requests and unreachable.skip_message.startswith(skip)
    assert unreachable.cursor == recovered.cursor
    assert first_tick_down.skip_message.startswith(skip) and first_tick_down.cursor is None


# ---- Zenodo: one request per record per tick, one run per changed file ----------------------
COLBERT = RUN_VARIANTS["msmarco.colbertv2.annotated"]
ENSEMBLE = HOFSTAETTER_FILES["ensemble"]


@pytest.fixture
def zenodo(tmp_path, monkeypatch):
    """The sample's Zenodo files served by the loopback server in Zenodo's API shape."""
    mirror = tmp_path / "served"
    shutil.copytree(sample_mirror() / "url" / "zenodo.org", mirror / "url" / "zenodo.org")
    with HubServer(mirror) as server:
        monkeypatch.setenv("KD_PIPELINE_SOURCE", "hub")
        monkeypatch.setenv("KD_PIPELINE_ZENODO_API", server.endpoint + "/api")
        yield server, mirror


def _zenodo_tick(instance, cursor):
    return _tick(instance, cursor, zenodo_upstream_changes)


def _api_calls(server: HubServer) -> list[str]:
    return sorted(path for _, path, _ in server.requests)


def test_zenodo_sensor_is_registered_and_off_by_default() -> None:
    from kd_pipeline.definitions import defs

    sensor = defs.get_repository_def().get_sensor_def("zenodo_upstream_changes")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert {t.job_name for t in sensor.targets} == {HOFSTAETTER_JOB, RANK_DISTILLM_JOB}


def test_zenodo_sensor_refreshes_only_the_partition_whose_file_changed(zenodo) -> None:
    server, mirror = zenodo
    records = [f"/api/records/{RANK_DISTILLM_RECORD}", f"/api/records/{HOFSTAETTER_RECORD}"]
    with dg.instance_for_test() as instance:
        first = _zenodo_tick(instance, None)
        assert not first.run_requests and first.skip_message.count("as baseline") == 2
        assert _api_calls(server) == records
        server.requests.clear()
        second = _zenodo_tick(instance, first.cursor)
        assert not second.run_requests
        assert f"Zenodo record {HOFSTAETTER_RECORD} unchanged (2 of 2 files)" in second.skip_message
        assert f"Zenodo record {RANK_DISTILLM_RECORD} unchanged (6 of 6 files)" in (
            second.skip_message
        )
        assert _api_calls(server) == records  # one request per record per tick, no storm

        run = url_path(mirror, COLBERT.url)
        run.write_bytes(run.read_bytes() + b"1 0 2 31 0.5 colbert\n")
        third = _zenodo_tick(instance, second.cursor)
        tsv = url_path(mirror, ENSEMBLE.url)  # the legacy `record/` URL form
        tsv.write_bytes(tsv.read_bytes()[:-40])
        fourth = _zenodo_tick(instance, third.cursor)
        fifth = _zenodo_tick(instance, fourth.cursor)

    (request,) = third.run_requests
    checksum = f"md5:{file_md5(run)}"
    assert (request.job_name, request.partition_key) == (RANK_DISTILLM_JOB, COLBERT.variant)
    assert request.tags[UPSTREAM_REVISION_TAG] == checksum
    assert request.tags[ZENODO_RECORD_TAG] == RANK_DISTILLM_RECORD
    assert checksum in request.run_key
    assert json.loads(third.cursor)[RANK_DISTILLM_RECORD][COLBERT.file] == checksum
    assert checksum not in second.cursor

    (request,) = fourth.run_requests
    assert (request.job_name, request.partition_key) == (HOFSTAETTER_JOB, "ensemble")
    assert request.tags[UPSTREAM_REVISION_TAG] == f"md5:{file_md5(tsv)}"
    assert request.tags[ZENODO_RECORD_TAG] == HOFSTAETTER_RECORD
    assert not fifth.run_requests and fifth.skip_message.count("unchanged") == 2


def test_a_zenodo_sensor_run_publishes_the_changed_file(zenodo, lake_dir, monkeypatch) -> None:
    """The run the sensor requests expects the checksum it is tagged with, not the pinned
    md5: the changed file is downloaded anew (the old one is in the cache), published and
    recorded; the same run with a wrong checksum fails and the published partition stays."""
    from kd_pipeline.definitions import defs

    server, mirror = zenodo
    with monkeypatch.context() as env:  # the texts from the sample
        env.delenv("KD_PIPELINE_SOURCE")
        texts = [MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY, MSMARCO_QRELS_TRAIN_KEY]
        assert run_job(TEXT_JOB, selection=texts).success
    monkeypatch.setenv("KD_PIPELINE_HTTP_MIRROR", server.endpoint + "/url")
    run = url_path(mirror, COLBERT.url)
    old_tags = {UPSTREAM_REVISION_TAG: f"md5:{file_md5(run)}"}
    assert run_job(RANK_DISTILLM_JOB, COLBERT.variant, tags=old_tags).success  # cache warm

    def rescore(lines: list[str]) -> list[str]:
        fields = lines[0].split("\t")
        return ["\t".join([*fields[:4], "123.25", *fields[5:]]), *lines[1:]]

    with dg.instance_for_test() as instance:
        baseline = _zenodo_tick(instance, None)
        edit_lines(run, rescore)  # upstream re-scores rank 1 of the first query
        (request,) = _zenodo_tick(instance, baseline.cursor).run_requests
        server.requests.clear()
        job = defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(
            partition_key=request.partition_key,
            tags=request.tags,
            instance=instance,
            raise_on_error=False,
        )
        assert result.success, failures(result)
        wrong = {**request.tags, UPSTREAM_REVISION_TAG: "md5:" + "f" * 32}
        refused = job.execute_in_process(
            partition_key=request.partition_key, tags=wrong, instance=instance, raise_on_error=False
        )

    new_md5 = file_md5(run)
    assert request.tags[UPSTREAM_REVISION_TAG] == f"md5:{new_md5}"
    assert any(COLBERT.file in path for _, path, _ in server.requests)  # fetched anew
    meta = materialized(result, RUNS_KEY)
    assert (meta["md5"], meta["checksum_source"], meta["pinned_md5"]) == (
        new_md5,
        RUN_TAG,
        COLBERT.md5,
    )
    first_query = run.read_text().split("\t", 1)[0]
    published_rows = rows(lake_dir, RUNS_KEY, COLBERT.variant, "query_id, rank, score")
    assert (first_query, 1, 123.25) in published_rows
    assert not refused.success
    message = failures(refused)
    assert f"{COLBERT.file}: md5 mismatch (expected {'f' * 32}, got {new_md5})" in message
    assert f"(expected md5 source: {RUN_TAG})" in message
    published = Lake(lake_dir).manifest(RUNS_KEY.path, COLBERT.variant)
    assert published["lineage"]["md5"] == new_md5 and published["run_id"] == result.run_id


def test_zenodo_sensor_skips_naming_the_record_it_cannot_read(zenodo) -> None:
    server, mirror = zenodo
    api = f"{server.endpoint}/api/records"
    with dg.instance_for_test() as instance:
        baseline = _zenodo_tick(instance, None)
        server.requests.clear()
        server.faults += [
            Fault(f"/api/records/{HOFSTAETTER_RECORD}", "status", status=503),
            Fault(f"/api/records/{RANK_DISTILLM_RECORD}", "status", status=404),
        ]
        failed = _zenodo_tick(instance, baseline.cursor)
        assert len(server.requests) == 2  # no retries within a tick
        recovered = _zenodo_tick(instance, failed.cursor)

        url_path(mirror, COLBERT.url).unlink()
        file_gone = _zenodo_tick(instance, recovered.cursor)
        server.stop()
        unreachable = _zenodo_tick(instance, file_gone.cursor)

    assert not failed.run_requests
    assert f"Zenodo record {HOFSTAETTER_RECORD}: {api}/{HOFSTAETTER_RECORD}: HTTP 503" in (
        failed.skip_message
    )
    assert f"Zenodo record {RANK_DISTILLM_RECORD}: {api}/{RANK_DISTILLM_RECORD}: not found" in (
        failed.skip_message
    )
    assert failed.cursor == baseline.cursor  # compared again next tick, not re-baselined
    assert not recovered.run_requests and recovered.skip_message.count("unchanged") == 2
    assert not file_gone.run_requests
    assert f"Zenodo record {RANK_DISTILLM_RECORD} lists no {COLBERT.file}" in (
        file_gone.skip_message
    )
    assert not unreachable.run_requests
    assert f"Zenodo record {HOFSTAETTER_RECORD}: {api}/{HOFSTAETTER_RECORD}: URLError" in (
        unreachable.skip_message
    )
    assert unreachable.cursor == file_gone.cursor


def test_zenodo_sensor_reads_the_record_from_a_mirror(tmp_path, monkeypatch) -> None:
    """A mirror holds the record's JSON under the plain-URL rule; without it, a skip reason."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    record = url_path(mirror, zenodo_record_url(HOFSTAETTER_RECORD))
    bert = HOFSTAETTER_FILES["bert"].file

    def publish(payload: object) -> None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(payload))

    with dg.instance_for_test() as instance:
        absent = _zenodo_tick(instance, None)
        publish(
            {
                "files": [
                    {"key": bert, "checksum": "md5:aa"},
                    {"key": ENSEMBLE.file, "checksum": "md5:bb"},
                ]
            }
        )
        first = _zenodo_tick(instance, absent.cursor)
        entries = {
            bert: {"key": bert, "checksum": "md5:aa"},
            ENSEMBLE.file: {"key": ENSEMBLE.file, "checksum": "md5:cc"},
        }
        publish({"files": {"enabled": True, "entries": entries}})  # InvenioRDM's shape
        changed = _zenodo_tick(instance, first.cursor)
        publish({"metadata": {}})
        malformed = _zenodo_tick(instance, changed.cursor)

    assert not absent.run_requests and str(record) in absent.skip_message
    url = zenodo_record_url(HOFSTAETTER_RECORD)
    assert f"Zenodo record {HOFSTAETTER_RECORD}: {url} is not in the mirror" in absent.skip_message
    assert f"recorded Zenodo record {HOFSTAETTER_RECORD} as baseline" in first.skip_message
    assert f"Zenodo record {RANK_DISTILLM_RECORD}: " in first.skip_message  # still absent
    (request,) = changed.run_requests
    assert (request.partition_key, request.tags[UPSTREAM_REVISION_TAG]) == ("ensemble", "md5:cc")
    assert "not a Zenodo record" in malformed.skip_message
    assert malformed.cursor == changed.cursor


def test_zenodo_sensor_works_on_the_sample(tmp_path) -> None:
    """The sample declares its stand-in records: baseline, then unchanged, and the md5s a
    run would be tagged with are the sample files' own (so such a run verifies)."""
    with dg.instance_for_test() as instance:
        first = _zenodo_tick(instance, None)
        second = _zenodo_tick(instance, first.cursor)
    for record in (HOFSTAETTER_RECORD, RANK_DISTILLM_RECORD):
        assert f"recorded Zenodo record {record} as baseline" in first.skip_message
        assert f"Zenodo record {record} unchanged" in second.skip_message
    cursor = json.loads(second.cursor)
    for zenodo_file in (*HOFSTAETTER_FILES.values(), *RUN_VARIANTS.values()):
        md5 = file_md5(url_path(sample_mirror(), zenodo_file.url))
        assert cursor[zenodo_file.record][zenodo_file.file] == f"md5:{md5}"


def _requested(result) -> set[tuple[str, str | None]]:
    return {
        (r.key.to_user_string(), pk)
        for r in result.results
        if r.true_subset.size
        for pk in (
            r.true_subset.expensively_compute_partition_keys()
            if r.true_subset.is_partitioned
            else [None]
        )
    }


def test_eager_automation_follows_a_raw_refresh() -> None:
    from kd_pipeline.definitions import defs

    with dg.instance_for_test() as instance:
        assert run_lighton_partition("agnews", instance).success
        assert run_lighton_partition("npr", instance).success
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        # Every LightOn recipe downstream of raw is up to date (exports were never built:
        # eager may request those for their own reasons, checked below).
        assert {r for r in _requested(first) if r[0].startswith("lighton/")} == set()
        # raw[npr] refreshed alone (the schedule or the sensor): its recipes are now behind.
        job = defs.resolve_job_def("lighton_raw_refresh")
        assert job.execute_in_process(partition_key="npr", instance=instance).success
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
    requested = _requested(second)
    assert {r for r in requested if r[0].startswith("lighton/")} == {
        ("lighton/recommended", "npr"),
        ("lighton/similarity_3", "npr"),
        ("lighton/top35", "npr"),
    }
    assert all(partition == "npr" for key, partition in requested if key.startswith("exports/"))
