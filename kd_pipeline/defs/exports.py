"""Exports: an asset per entry of exports.yaml, and one job per source asset."""

import dagster as dg

from kd_pipeline.exports.factory import build_export_asset, build_export_jobs
from kd_pipeline.exports.specs import load_export_specs

specs = load_export_specs()
defs = dg.Definitions(
    assets=[build_export_asset(spec) for spec in specs], jobs=build_export_jobs(specs)
)
