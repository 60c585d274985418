"""LightOn recipes: a filter asset per spec of lighton_filters.yaml, a union per spec of
lighton_unions.yaml, the two ad-hoc assets, and the unions' job (the filters run in the
per-config job of `defs/lighton.py`)."""

import dagster as dg

from kd_pipeline.recipes.factory import (
    build_custom_union_asset,
    build_filter_asset,
    build_union_asset,
    build_unions_job,
    lighton_custom,
)
from kd_pipeline.recipes.specs import load_filter_specs, load_union_specs

filter_specs = load_filter_specs()
union_specs = load_union_specs(taken={s.name for s in filter_specs})
unions = [build_union_asset(spec) for spec in union_specs]
defs = dg.Definitions(
    assets=[
        *(build_filter_asset(spec) for spec in filter_specs),
        *unions,
        lighton_custom,
        build_custom_union_asset(union_specs),
    ],
    jobs=[build_unions_job(unions)],
)
