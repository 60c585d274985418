"""The Dagster code location: assembles assets, checks, jobs and resources. Nothing else."""

from __future__ import annotations

import dagster as dg

from kd_pipeline.engine import default_duckdb_resource
from kd_pipeline.families.lighton import lighton_raw
from kd_pipeline.recipes.factory import build_filter_asset
from kd_pipeline.recipes.specs import load_filter_specs
from kd_pipeline.resources import LakeResource, UpstreamResource

LIGHTON_PARTITIONED_JOB = "lighton_partitions"


def build_definitions() -> dg.Definitions:
    lighton_assets = [lighton_raw, *(build_filter_asset(s) for s in load_filter_specs())]
    return dg.Definitions(
        assets=lighton_assets,
        jobs=[
            dg.define_asset_job(
                LIGHTON_PARTITIONED_JOB,
                selection=dg.AssetSelection.assets(*lighton_assets),
                description="Raw LightOn pairs and every filter recipe, for one config.",
            )
        ],
        resources={
            "lake": LakeResource(),
            "upstream": UpstreamResource(),
            "duckdb": default_duckdb_resource(),
        },
    )


defs = build_definitions()
