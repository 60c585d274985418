"""Test helpers that build upstream-shaped data and run the real Dagster jobs."""

from __future__ import annotations

from pathlib import Path

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
