"""Every export of the sample, built once through Dagster the way the pipeline builds them:
the families' jobs, then each per-source export job, in one ephemeral instance and a lake
of their own. The consumer training tests (`test_train_*.py`) read the published folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.families.upstream import RUN_VARIANTS
from kd_pipeline.lake import Lake
from kd_pipeline_tests.helpers import failures

LIGHTON_CONFIG = "agnews"
FAMILY_RUNS: list[tuple[str, str | None]] = [
    ("text_collections", None),
    ("hofstaetter_teacher_scores", "bert"),
    ("hofstaetter_teacher_scores", "ensemble"),
    *(("rank_distillm_runs", v) for v in RUN_VARIANTS),
    ("fiqa_mined", None),
    (LIGHTON_PARTITIONED_JOB, LIGHTON_CONFIG),
]
EXPORT_RUNS: list[tuple[str, str | None]] = [
    ("exports_hofstaetter_teacher_scores", "bert"),
    ("exports_hofstaetter_teacher_scores", "ensemble"),
    *(("exports_rank_distillm_runs", v) for v in RUN_VARIANTS),
    ("exports_fiqa_mined_scores", None),
    ("exports_lighton_recommended", LIGHTON_CONFIG),
]


@dataclass(frozen=True)
class BuiltExports:
    """A lake holding the sample's families and their exports; `results` holds each export
    job's run (job, partition) -> its result, `failed` each that did not succeed -> its
    failure text."""

    lake: Path
    failed: dict[tuple[str, str | None], str]
    results: dict[tuple[str, str | None], dg.ExecuteInProcessResult]

    def path(self, key: str, partition: str | None = None) -> Path:
        """The published folder of asset `key` (e.g. `exports/splade/splade_fiqa`) and partition;
        fails the calling test, quoting the job's error, when it was not published."""
        path = Lake(self.lake).published_path(key.split("/"), partition)
        if not path.is_dir():
            pytest.fail(f"{key} [{partition}] was not published: {self.failed}")
        return path


def build_sample_exports(lake: Path) -> BuiltExports:
    """Run every family job, then every export job, on the sample into `lake`. A family
    that fails stops the build (nothing downstream could be right); a failed export job is
    recorded, so each test of that export fails with the job's own message."""
    instance = dg.DagsterInstance.ephemeral()
    failed: dict[tuple[str, str | None], str] = {}
    results: dict[tuple[str, str | None], dg.ExecuteInProcessResult] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_PIPELINE_LAKE", str(lake))
        for job, partition in FAMILY_RUNS + EXPORT_RUNS:
            result = defs.resolve_job_def(job).execute_in_process(
                partition_key=partition, instance=instance, raise_on_error=False
            )
            if (job, partition) in EXPORT_RUNS:
                results[(job, partition)] = result
            if result.success:
                continue
            if (job, partition) in FAMILY_RUNS:
                pytest.fail(f"family job {job} [{partition}] failed: {failures(result)}")
            failed[(job, partition)] = failures(result)
    return BuiltExports(lake, failed, results)
