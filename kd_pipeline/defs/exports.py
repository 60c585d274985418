"""Exports: an asset per entry of exports.yaml, and one job per source asset."""

import dagster as dg

from kd_pipeline.exports.factory import build_export_asset, export_job_name
from kd_pipeline.exports.specs import ExportSpec, load_export_specs

specs = load_export_specs()
by_job: dict[str, list[ExportSpec]] = {}
for spec in specs:
    by_job.setdefault(export_job_name(spec), []).append(spec)
defs = dg.Definitions(
    assets=[build_export_asset(spec) for spec in specs],
    jobs=[
        dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(s.key for s in group)),
            description=f"Every export of {group[0].source.name} "
            "(needs it and its text collections published).",
        )
        for name, group in by_job.items()
    ],
)
