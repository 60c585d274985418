"""Automation: the refresh schedule, the upstream-change sensors (Hub, Zenodo), eager
propagation, the daily lake maintenance, and the release of runs whose process died."""

import dagster as dg

from kd_pipeline.automation import (
    automation_sensor,
    build_refresh_schedule,
    lake_maintenance_job,
    lake_maintenance_schedule,
    lighton_raw_job,
    lighton_upstream_changes,
    release_dead_runs,
    zenodo_upstream_changes,
)
from kd_pipeline.instance import tagging_executor

defs = dg.Definitions(
    executor=tagging_executor,  # the code location's default: runs carry their host and pid
    jobs=[lighton_raw_job, lake_maintenance_job],
    schedules=[build_refresh_schedule(), lake_maintenance_schedule],
    sensors=[
        lighton_upstream_changes,
        zenodo_upstream_changes,
        automation_sensor,
        release_dead_runs,
    ],
)
