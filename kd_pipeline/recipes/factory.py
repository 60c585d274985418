"""The one place that turns a recipe spec into a Dagster asset."""

from collections.abc import Iterator

import dagster as dg
from dagster_duckdb import DuckDBResource

from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.rules import Rule, Table
from kd_pipeline.engine import engine_connection
from kd_pipeline.families.lighton import (
    CANONICAL_COLUMNS,
    COLUMN_SCHEMA,
    RAW_KEY,
    canonical_rules,
    lighton_partitions,
)
from kd_pipeline.metadata import preview, same_column_lineage
from kd_pipeline.recipes.filters import FilterKnobs, apply_filter, recipe_rules
from kd_pipeline.recipes.specs import FilterSpec, load_filter_specs
from kd_pipeline.resources import LakeResource


def filter_rules(knobs: FilterKnobs, threshold: float | None, expected_rows: int) -> list[Rule]:
    """Canonical integrity plus the recipe's own rules, checked on its output."""
    return canonical_rules() + recipe_rules(knobs, threshold, expected_rows)


def build_filter_asset(spec: FilterSpec) -> dg.AssetsDefinition:
    """lighton/<spec.name>: the spec's filter over lighton/raw, one partition per config."""
    key = dg.AssetKey(["lighton", spec.name])
    knobs_json = spec.knobs.as_dict()
    declared_threshold = 0.0 if spec.knobs.top_percentile is not None else None

    @dg.asset(
        key=key,
        deps=[RAW_KEY],
        partitions_def=lighton_partitions,
        group_name="lighton",
        kinds={"duckdb", "parquet"},
        owners=["team:kd-pipeline"],
        pool="duckdb",
        description=spec.description,
        metadata={
            "dagster/column_schema": COLUMN_SCHEMA,
            "knobs": dg.MetadataValue.json(knobs_json),
        },
        check_specs=check_specs(filter_rules(spec.knobs, declared_threshold, 0), key),
    )
    def _filter_asset(
        context: dg.AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        config = context.partition_key
        the_lake = lake.lake()
        if not the_lake.is_published(RAW_KEY.path, config):
            raise dg.Failure(
                f"{RAW_KEY.to_user_string()} [{config}] is not published yet: materialize it first"
            )
        raw_manifest = the_lake.manifest(RAW_KEY.path, config)
        source = Table(
            "read_parquet($source_glob)",
            {"source_glob": the_lake.parquet_glob(RAW_KEY.path, config)},
        )
        with engine_connection(duckdb, the_lake) as con, the_lake.stage(key.path, config) as staged:
            result = apply_filter(con, source, spec.knobs, staged.path)
            out = Table("read_parquet($g)", {"g": staged.parquet_glob()})
            metadata = {
                "dagster/row_count": result.counts["rows_out"],
                **result.counts,
                "eligible_rows": result.eligible_rows,
                "threshold": result.threshold if result.threshold is not None else "none",
                "knobs": dg.MetadataValue.json(knobs_json),
                "upstream_version": raw_manifest.get("version", "?"),
                "upstream_revision": raw_manifest.get("lineage", {}).get("revision", "?"),
                "dagster/column_lineage": same_column_lineage(RAW_KEY, list(CANONICAL_COLUMNS)),
                "preview": preview(con, out, ["query", "document", "similarity"]),
            }
            yield from audit_and_publish(
                con,
                the_lake,
                staged,
                filter_rules(spec.knobs, result.threshold, result.counts["rows_out"]),
                metadata,
                {
                    "rows": result.counts["rows_out"],
                    "counts": result.counts,
                    "threshold": result.threshold,
                    "knobs": knobs_json,
                    "upstream": {
                        "key": RAW_KEY.to_user_string(),
                        "version": raw_manifest.get("version"),
                    },
                    "run_id": context.run.run_id,
                },
            )

    _filter_asset.__name__ = f"lighton_{spec.name}"
    return _filter_asset


LIGHTON_PARTITIONED_JOB = "lighton_partitions"


def definitions() -> dg.Definitions:
    """Every LightOn filter recipe from the spec file, and the per-config job that builds
    raw and all recipes of one config in one run."""
    recipes = [build_filter_asset(spec) for spec in load_filter_specs()]
    job = dg.define_asset_job(
        LIGHTON_PARTITIONED_JOB,
        selection=dg.AssetSelection.assets(RAW_KEY, *(a.key for a in recipes)),
        description="Raw LightOn pairs and every filter recipe, for one config.",
    )
    return dg.Definitions(assets=recipes, jobs=[job])
