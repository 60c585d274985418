"""Every export of the sample, built once through Dagster the way the pipeline builds them:
the families' jobs, then each per-source export job, in one ephemeral instance and a lake
of their own. The consumer training tests (`test_train_*.py`) read the published folders."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.engine import default_duckdb_resource
from kd_pipeline.exports import factory
from kd_pipeline.exports.specs import load_export_specs
from kd_pipeline.families.upstream import RUN_VARIANTS
from kd_pipeline.lake import Lake
from kd_pipeline.resources import LakeResource
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


def exports_of(format_name: str) -> list[tuple[str, str | None]]:
    """(asset key, partition) of every export of `format_name` that exports.yaml declares,
    for every partition the sample builds: a new export spec is trained without editing a
    test list."""
    return [
        (spec.key.to_user_string(), partition)
        for spec in load_export_specs()
        if spec.format.name == format_name
        for job, partition in EXPORT_RUNS
        if job == factory.export_job_name(spec)
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


MIXTURE_EXPORT = "exports/pointwise/pointwise_denseon_lateon"


def build_mixture(root: Path) -> Path:
    """The DenseON-LateON mixture over the 73 sample configs, prepared from the CLI as a
    user prepares it (a lake and a Dagster home of its own under root), then its export
    MIXTURE_EXPORT as exports.yaml declares it, built through Dagster; returns the lake."""
    lake = root / "lake"
    (root / "dagster").mkdir(parents=True)
    env = {**os.environ, "KD_PIPELINE_LAKE": str(lake), "DAGSTER_HOME": str(root / "dagster")}
    selector = "ai.lighton.embeddings_pre_training.denseon_lateon"
    proc = subprocess.run(
        [sys.executable, "-m", "kd_pipeline.cli", "prepare", selector],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"prepare {selector} failed: {proc.stderr[-3000:]}")
    (spec,) = [s for s in load_export_specs() if s.key.to_user_string() == MIXTURE_EXPORT]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_PIPELINE_LAKE", str(lake))
        result = dg.materialize(
            [factory.build_export_asset(spec)],
            resources={"lake": LakeResource(), "duckdb": default_duckdb_resource()},
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    if not result.success:
        pytest.fail(f"{MIXTURE_EXPORT} failed: {failures(result)}")
    return lake
