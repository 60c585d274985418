"""Schedules, the upstream-change sensor and eager automation, evaluated as real ticks."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest

from kd_pipeline.automation import (
    UPSTREAM_REVISION_TAG,
    build_refresh_schedule,
    lighton_upstream_changes,
)
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.resources import UpstreamResource, sample_mirror
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.helpers import lighton_repo, pairs, run_lighton_partition, write_pairs
from kd_pipeline_tests.hub_server import HubServer


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


def _tick(instance, cursor):
    from kd_pipeline.definitions import defs

    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"upstream": UpstreamResource()},
        repository_def=defs.get_repository_def(),
    )
    return lighton_upstream_changes.evaluate_tick(context)


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
