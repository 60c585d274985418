"""LightOn: `lighton/raw` (73 partitions) and the per-config job (raw + filter recipes)."""

import dagster as dg

from kd_pipeline.families.lighton import lighton_partitions_job, lighton_raw

defs = dg.Definitions(assets=[lighton_raw], jobs=[lighton_partitions_job])
