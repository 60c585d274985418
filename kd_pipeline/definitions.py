"""The Dagster code location: assembles each family's definitions and the shared resources.

Nothing here connects or downloads; each family module exposes a `definitions()` with its
assets, checks and jobs, and this file only merges them. The shared resources are the one
part that reads the environment, through `settings` (`shared_resources`).
"""

import dagster as dg

from kd_pipeline import automation
from kd_pipeline.engine import default_duckdb_resource
from kd_pipeline.exports import factory as exports
from kd_pipeline.families import fiqa, hofstaetter, lighton, rank_distillm, text
from kd_pipeline.recipes import factory
from kd_pipeline.resources import LakeResource, UpstreamResource

LIGHTON_PARTITIONED_JOB = lighton.LIGHTON_PARTITIONED_JOB
LIGHTON_UNIONS_JOB = factory.LIGHTON_UNIONS_JOB
# The main job, in dependency order: what `kd-pipeline materialize` runs (a partitioned job
# once per partition).
MAIN_JOBS = (
    LIGHTON_PARTITIONED_JOB,
    LIGHTON_UNIONS_JOB,
    text.TEXT_JOB,
    hofstaetter.HOFSTAETTER_JOB,
    rank_distillm.RANK_DISTILLM_JOB,
    fiqa.FIQA_JOB,
    *exports.main_job_names(),
)


def shared_resources() -> dg.Definitions:
    """The lake, the upstream source and DuckDB, configured from the environment as it is
    when this runs (each field a `dg.EnvVar` or its resolved default, validated now; see
    `resources`). Raises settings.SettingsError naming every bad variable."""
    return dg.Definitions(
        resources={
            "lake": LakeResource.from_environment(),
            "upstream": UpstreamResource.from_environment(),
            "duckdb": default_duckdb_resource(),
        }
    )


def build_definitions() -> dg.Definitions:
    return dg.Definitions.merge(
        lighton.definitions(),
        factory.definitions(),
        text.definitions(),
        hofstaetter.definitions(),
        rank_distillm.definitions(),
        fiqa.definitions(),
        exports.definitions(),
        automation.definitions(),
        shared_resources(),
    )


defs = build_definitions()
