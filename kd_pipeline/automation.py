"""Keeping the lake fresh: a weekly refresh schedule, an upstream-change sensor, and eager
declarative automation downstream.

- `lighton_weekly_refresh` (schedule, off by default): one run per raw partition, each with
  a run key, so a tick never requests the same partition twice.
- `lighton_upstream_changes` (sensor, off by default): one Hub request per tick (the
  dataset's file list with sha256s at `main`); a config whose files changed since the
  cursor gets one raw run, tagged with the revision; nothing changed = a skip reason.
- `zenodo_upstream_changes` (sensor, off by default): the same for the Zenodo families
  (Hofstaetter, Rank-DistiLLM): one request per record per tick for its files' checksums;
  a partition whose file's checksum changed gets one run, tagged with record and checksum;
  the run expects that checksum for the file (`families.upstream.fetch_zenodo_file`).
- Recipes, unions (and exports) carry `AutomationCondition.eager()`: when raw partitions
  change, the automation sensor (`kd_automation`, on by default under the daemon) runs what
  is downstream, bounded by the `duckdb` pool in dagster.yaml.
- `lake_maintenance_daily` (schedule, on by default under the daemon): runs the
  `lake_maintenance` job once a day: DuckLake's snapshot expiry and the deletion of orphan
  data files (a killed writer's), both past `KD_PIPELINE_RETENTION_DAYS`. A publish expires
  snapshots and `kd-pipeline materialize` deletes orphans when it ends; this covers a
  deployment driven only by the daemon (UI, schedules) and a lake nothing publishes to.
- `release_dead_runs` (sensor, on by default under the daemon): see `kd_pipeline.instance`.
"""

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
import duckdb

from kd_pipeline import settings
from kd_pipeline.ducklake import CatalogUnreachable, first_line
from kd_pipeline.families.hofstaetter import hofstaetter_job
from kd_pipeline.families.lighton import RAW_KEY, lighton_partitions, resolve_config_files
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.families.rank_distillm import rank_distillm_job
from kd_pipeline.families.upstream import (
    HOFSTAETTER_FILES,
    HOFSTAETTER_RECORD,
    RANK_DISTILLM_RECORD,
    RUN_VARIANTS,
    UPSTREAM_REVISION_TAG,
    ZENODO_RECORD_TAG,
    zenodo_checksums,
)
from kd_pipeline.fetch import DatasetSnapshot, Fetcher, FetchError
from kd_pipeline.instance import release_orphaned_runs
from kd_pipeline.lake import LakeError
from kd_pipeline.resources import LakeResource, UpstreamResource

LIGHTON_RAW_JOB = "lighton_raw_refresh"

lighton_raw_job = dg.define_asset_job(
    LIGHTON_RAW_JOB,
    selection=dg.AssetSelection.assets(RAW_KEY),
    description="Refresh one LightOn raw partition from upstream; recipes follow by automation.",
)


def build_refresh_schedule() -> dg.ScheduleDefinition:
    @dg.schedule(
        name="lighton_weekly_refresh",
        cron_schedule=settings.refresh_cron(),
        job=lighton_raw_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-read every LightOn config from upstream (one run per partition).",
    )
    def lighton_weekly_refresh(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
        for config in lighton_partitions.get_partition_keys():
            yield dg.RunRequest(run_key=f"{tick}:{config}", partition_key=config)

    return lighton_weekly_refresh


LAKE_MAINTENANCE_JOB = "lake_maintenance"
LAKE_MAINTENANCE_CRON = "15 4 * * *"  # daily, off the weekly refresh's hour


@dg.op(
    description="Expire the lake's snapshots and delete orphan data files, both older than "
    "KD_PIPELINE_RETENTION_DAYS (files a running writer still writes are younger)."
)
def clean_lake(context: dg.OpExecutionContext, lake: LakeResource) -> None:
    """Lake-wide retention: `Lake.expire_snapshots`, every export's old version folders
    (`Lake.expire_export_versions`), then `Lake.delete_orphaned_files` (in this order: the
    files the expiry releases are deleted by the expiry itself)."""
    target = lake.lake()
    try:
        expired = target.expire_snapshots()
        target.expire_export_versions()  # every export's superseded version folders
        deleted = target.delete_orphaned_files()
    except (LakeError, CatalogUnreachable, duckdb.Error, OSError) as exc:
        raise dg.Failure(f"lake {target.root}: maintenance failed: {first_line(exc)}") from exc
    context.log.info(
        f"lake {target.root}: {expired} snapshot(s) expired and {deleted} orphan file(s) "
        f"deleted, older than {target.retention_days:g} day(s)"
    )


@dg.job(
    name=LAKE_MAINTENANCE_JOB,
    description="Retention of the lake (materialises no asset): snapshot expiry and orphan "
    "file cleanup, what a publish and `kd-pipeline materialize` also do.",
)
def lake_maintenance_job() -> None:
    clean_lake()


lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_daily",
    cron_schedule=LAKE_MAINTENANCE_CRON,
    job=lake_maintenance_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day under the daemon: expire old snapshots, delete a killed "
    "writer's orphan files (both past KD_PIPELINE_RETENTION_DAYS).",
)


def config_fingerprints(snapshot: DatasetSnapshot, card: str | None) -> dict[str, str]:
    """A fingerprint per config: its files with their sha256 (Hub) or size (mirror)."""
    fingerprints = {}
    for config in LIGHTON_CONFIGS:
        try:
            files = resolve_config_files(card, snapshot.files, config)
        except FetchError:
            files = []
        parts = [f"{f}:{snapshot.files[f].sha256 or snapshot.files[f].size}" for f in files]
        fingerprints[config] = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return fingerprints


@dg.sensor(
    name="lighton_upstream_changes",
    job=lighton_raw_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Ask the Hub for the dataset's files once per tick; refresh only the configs "
    "whose files changed.",
)
def lighton_upstream_changes(
    context: dg.SensorEvaluationContext, upstream: UpstreamResource
) -> dg.SensorResult | dg.SkipReason:
    fetcher = upstream.fetcher(hub_attempts=1)  # the next tick is the retry
    try:
        snapshot = fetcher.dataset_snapshot(LIGHTON_REPO_ID)
        card = fetcher.read_dataset_text(snapshot, "README.md")
    except FetchError as exc:  # an outage is a skip, not a failed tick; the cursor stays
        return dg.SensorResult(
            skip_reason=f"could not list {LIGHTON_REPO_ID}, compared again next tick: {exc}",
            cursor=context.cursor,
        )
    current = config_fingerprints(snapshot, card)
    previous = json.loads(context.cursor) if context.cursor else None
    cursor = json.dumps({"revision": snapshot.revision, "configs": current}, sort_keys=True)
    if previous is None:
        return dg.SensorResult(
            skip_reason=f"first tick: recorded {LIGHTON_REPO_ID}@{snapshot.revision} as baseline",
            cursor=cursor,
        )
    changed = [c for c in LIGHTON_CONFIGS if previous["configs"].get(c) != current[c]]
    if not changed:
        return dg.SensorResult(
            skip_reason=f"{LIGHTON_REPO_ID} unchanged at {snapshot.revision}", cursor=cursor
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{config}:{current[config]}",
                partition_key=config,
                tags={UPSTREAM_REVISION_TAG: snapshot.revision},
            )
            for config in changed
        ],
        cursor=cursor,
    )


@dataclass(frozen=True)
class ZenodoWatch:
    """A Zenodo record whose files are the partitions of one job (partition -> file)."""

    record: str
    job_name: str
    files: Mapping[str, str]


ZENODO_WATCHES = (
    ZenodoWatch(
        HOFSTAETTER_RECORD, hofstaetter_job.name, {v: f.file for v, f in HOFSTAETTER_FILES.items()}
    ),
    ZenodoWatch(
        RANK_DISTILLM_RECORD, rank_distillm_job.name, {v: r.file for v, r in RUN_VARIANTS.items()}
    ),
)


@dataclass
class ZenodoTick:
    """What one tick saw: the next cursor (record -> file -> checksum), the runs to request,
    what went wrong (a record unreadable, a file no longer listed) and what did not change."""

    cursor: dict[str, dict[str, str]]
    run_requests: list[dg.RunRequest]
    problems: list[str]
    notes: list[str]


def compare_zenodo_records(
    fetcher: Fetcher, previous: Mapping[str, Mapping[str, str]]
) -> ZenodoTick:
    """Ask each watched record once and compare its files' checksums with the cursor's.

    A record seen for the first time is recorded as its baseline (no runs, as for LightOn);
    a record that cannot be read keeps its previous entry, so it is compared next tick.
    """
    tick = ZenodoTick(dict(previous), [], [], [])
    for watch in ZENODO_WATCHES:
        try:
            listed = zenodo_checksums(fetcher, watch.record)
        except FetchError as exc:
            tick.problems.append(f"Zenodo record {watch.record}: {exc}")
            continue
        current = {f: listed[f] for f in watch.files.values() if f in listed}
        summary = f"{len(current)} of {len(watch.files)} files"
        tick.cursor[watch.record] = current
        missing = [f for f in watch.files.values() if f not in listed]
        if missing:
            tick.problems.append(f"Zenodo record {watch.record} lists no {', '.join(missing)}")
        if watch.record not in previous:
            tick.notes.append(f"recorded Zenodo record {watch.record} as baseline ({summary})")
            continue
        before = previous[watch.record]
        changed = {
            p: f for p, f in watch.files.items() if f in current and current[f] != before.get(f)
        }
        tick.run_requests += [
            dg.RunRequest(
                run_key=f"{watch.record}/{file}:{current[file]}",
                job_name=watch.job_name,
                partition_key=partition,
                tags={UPSTREAM_REVISION_TAG: current[file], ZENODO_RECORD_TAG: watch.record},
            )
            for partition, file in changed.items()
        ]
        if not changed:
            tick.notes.append(f"Zenodo record {watch.record} unchanged ({summary})")
    return tick


@dg.sensor(
    name="zenodo_upstream_changes",
    jobs=[hofstaetter_job, rank_distillm_job],
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Ask Zenodo for each record's file checksums once per tick; refresh only the "
    "partitions whose file changed.",
)
def zenodo_upstream_changes(
    context: dg.SensorEvaluationContext, upstream: UpstreamResource
) -> dg.SensorResult:
    previous = json.loads(context.cursor) if context.cursor else {}
    tick = compare_zenodo_records(upstream.fetcher(), previous)
    cursor = json.dumps(tick.cursor, sort_keys=True)
    if tick.run_requests:
        for problem in tick.problems:  # a tick cannot both request runs and give a reason
            context.log.warning(problem)
        return dg.SensorResult(run_requests=tick.run_requests, cursor=cursor)
    return dg.SensorResult(skip_reason="; ".join(tick.problems + tick.notes), cursor=cursor)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "kd_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Eager propagation: recipes, unions and exports follow their upstream.",
)


@dg.sensor(
    name="release_dead_runs",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute under the daemon: runs of this host whose process is gone "
    "(SIGKILL, OOM) are marked failed and their duckdb pool slots freed.",
)
def release_dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    released = release_orphaned_runs(context.instance)
    if released:
        context.log.warning(f"released the pool slots of dead run(s): {', '.join(released)}")
    return dg.SkipReason(f"{len(released)} dead run(s) released")
