"""Test helpers that build upstream-shaped data and run the real Dagster jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.families.lighton_configs import LIGHTON_REPO_ID


def run_lighton_partition(partition: str, instance: dg.DagsterInstance | None = None):
    """Materialise raw + every filter recipe of one config through Dagster (in process)."""
    job = defs.resolve_job_def(LIGHTON_PARTITIONED_JOB)
    return job.execute_in_process(
        partition_key=partition,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def lighton_repo(mirror: Path) -> Path:
    return mirror / "hf" / "datasets" / LIGHTON_REPO_ID


def write_pairs(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """Write LightOn-shaped rows to a parquet file (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = schema or pa.schema(
        [
            ("query", pa.string()),
            ("document", pa.string()),
            ("similarity", pa.float64()),
            ("drop", pa.bool_()),
            ("duplicate", pa.int64()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def pairs(n: int, *, start: int = 0, similarity: float | None = None) -> list[dict]:
    """n distinct, valid LightOn rows."""
    return [
        {
            "query": f"query {i}",
            "document": f"document {i} text",
            "similarity": similarity if similarity is not None else (i % 50) / 10,
            "drop": i % 3 == 0,
            "duplicate": None if i % 7 else 0,
        }
        for i in range(start, start + n)
    ]


def failures(result) -> str:
    """Every failure message of a run, causes included, for assertions and test output."""
    messages = []
    for event in result.all_events:
        if not event.is_failure:
            continue
        error = getattr(event.event_specific_data, "error", None)
        messages.append(f"{event.step_key}: {event.message}")
        while error is not None:
            messages.append(error.message.strip())
            error = error.cause
    return "\n".join(messages)


def submit_partition_run(
    instance: dg.DagsterInstance,
    workspace: Any,
    location_name: str,
    job_name: str,
    partition: str,
    run_config: dict | None = None,
) -> str:
    """Queue one run of `job_name` of the code location `location_name` for `partition`, as
    the UI's "Launch run" does (under a QueuedRunCoordinator the daemon launches it);
    returns its run id. `workspace` is a workspace request context of the instance."""
    from dagster._core.definitions.selector import JobSubsetSelector

    run_config = run_config or {}
    location = workspace.get_code_location(location_name)
    repo = next(iter(location.get_repositories().values()))
    job = location.get_job(
        JobSubsetSelector(
            location_name=location_name,
            repository_name=repo.name,
            job_name=job_name,
            op_selection=None,
        )
    )
    plan = location.get_execution_plan(
        job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    )
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=None,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**job.tags, "dagster/partition": partition},
        job_snapshot=job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=job.parent_job_snapshot,
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )
    instance.submit_run(run.run_id, workspace)
    return run.run_id
