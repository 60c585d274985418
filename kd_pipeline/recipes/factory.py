"""The one place that turns recipe specs into Dagster assets.

Spec-defined assets (`lighton/<filter>` partitioned, `lighton/<union>` unpartitioned) have
fixed knobs: a spec is their identity. Two ad-hoc assets take their knobs from run config
instead, `lighton/custom` (filters) and `lighton/custom_union` (a union spec with another
seed, mixing or dedup); each distinct knob set is published under its own variant folder,
so two experiments never overwrite each other.
"""

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

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
from kd_pipeline.lake import Lake
from kd_pipeline.metadata import preview, same_column_lineage
from kd_pipeline.recipes.filters import FilterKnobs, apply_filter, recipe_rules
from kd_pipeline.recipes.specs import FilterSpec, load_filter_specs, load_union_specs
from kd_pipeline.recipes.unions import (
    MIXINGS,
    UNION_COLUMNS,
    UnionSpec,
    build_union,
    plan_sources,
    union_rules,
)
from kd_pipeline.resources import LakeResource

LIGHTON_UNIONS_JOB = "lighton_unions"
CUSTOM_KEY = dg.AssetKey(["lighton", "custom"])
CUSTOM_UNION_KEY = dg.AssetKey(["lighton", "custom_union"])
# What every recipe asset shares: its group, kinds, owner and the DuckDB pool.
RECIPE_ASSET_ARGS: dict[str, Any] = {
    "group_name": "lighton",
    "kinds": {"duckdb", "parquet"},
    "owners": ["team:kd-pipeline"],
    "pool": "duckdb",
}
UNION_SCHEMA = dg.TableSchema(
    columns=[
        *COLUMN_SCHEMA.columns,
        dg.TableColumn("source_config", "VARCHAR", description="the LightOn config of the row"),
        dg.TableColumn("source_group", "VARCHAR", description="the union group of the row"),
        dg.TableColumn("position", "BIGINT", description="0-based place in the training order"),
    ]
)


def variant_id(base: str, knobs: dict[str, Any]) -> str:
    """A short, stable folder name for one knob set of an ad-hoc asset."""
    canonical = json.dumps({"base": base, **knobs}, sort_keys=True, default=str)
    return "v-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ---- filters -------------------------------------------------------------------------------
def filter_rules(knobs: FilterKnobs, threshold: float | None, expected_rows: int) -> list[Rule]:
    """Canonical integrity plus the recipe's own rules, checked on its output."""
    return canonical_rules() + recipe_rules(knobs, threshold, expected_rows)


def require_raw(lake: Lake, configs: Sequence[str]) -> dict[str, str]:
    """The published raw glob of each config, or a failure naming the missing ones."""
    missing = [c for c in configs if not lake.is_published(RAW_KEY.path, c)]
    if missing:
        raise dg.Failure(
            f"{RAW_KEY.to_user_string()} is not published for {len(missing)} config(s): "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
            "materialize them first"
        )
    return {c: lake.parquet_glob(RAW_KEY.path, c) for c in configs}


def run_filter(
    context: dg.AssetExecutionContext,
    lake: Lake,
    duckdb: DuckDBResource,
    knobs: FilterKnobs,
    storage_key: Sequence[str],
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Filter one raw partition with knobs, audit, publish under storage_key."""
    config = context.partition_key
    raw_glob = require_raw(lake, [config])[config]
    raw_manifest = lake.manifest(RAW_KEY.path, config)
    with engine_connection(duckdb, lake) as con, lake.stage(storage_key, config) as staged:
        result = apply_filter(con, Table.parquet(raw_glob), knobs, staged.path)
        out = Table.parquet(staged.parquet_glob())
        rows = result.counts["rows_out"]
        metadata = {
            "dagster/row_count": rows,
            **result.counts,
            "eligible_rows": result.eligible_rows,
            "threshold": result.threshold if result.threshold is not None else "none",
            "knobs": dg.MetadataValue.json(knobs.as_dict()),
            "upstream_version": raw_manifest.get("version", "?"),
            "upstream_revision": raw_manifest.get("lineage", {}).get("revision", "?"),
            "dagster/column_lineage": same_column_lineage(RAW_KEY, list(CANONICAL_COLUMNS)),
            "preview": preview(con, out, ["query", "document", "similarity"]),
        }
        yield from audit_and_publish(
            con,
            lake,
            staged,
            filter_rules(knobs, result.threshold, rows),
            metadata,
            {
                "rows": rows,
                "counts": result.counts,
                "threshold": result.threshold,
                "knobs": knobs.as_dict(),
                "upstream": {
                    "key": RAW_KEY.to_user_string(),
                    "version": raw_manifest.get("version"),
                },
                "run_id": context.run.run_id,
            },
        )


def build_filter_asset(spec: FilterSpec) -> dg.AssetsDefinition:
    """lighton/<spec.name>: the spec's filter over lighton/raw, one partition per config."""
    key = dg.AssetKey(["lighton", spec.name])
    declared_threshold = 0.0 if spec.knobs.top_percentile is not None else None

    @dg.asset(
        key=key,
        deps=[RAW_KEY],
        partitions_def=lighton_partitions,
        **RECIPE_ASSET_ARGS,
        automation_condition=dg.AutomationCondition.eager(),
        description=spec.description,
        metadata={
            "dagster/column_schema": COLUMN_SCHEMA,
            "knobs": dg.MetadataValue.json(spec.knobs.as_dict()),
        },
        check_specs=check_specs(
            filter_rules(spec.knobs, declared_threshold, 0),
            key,
            partitions_def=lighton_partitions,
        ),
    )
    def _filter_asset(
        context: dg.AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        yield from run_filter(context, lake.lake(), duckdb, spec.knobs, key.path)

    _filter_asset.__name__ = f"lighton_{spec.name}"
    return _filter_asset


class CustomFilterConfig(dg.Config):
    """Ad-hoc filter knobs (same meaning as in lighton_filters.yaml)."""

    filter_drop: bool = True
    filter_duplicate: bool = True
    min_similarity: float | None = None
    top_percentile: float | None = None
    dedup: bool = False
    dedup_casefold: bool = False

    def knobs(self) -> FilterKnobs:
        return FilterKnobs(**self.model_dump())


@dg.asset(
    key=CUSTOM_KEY,
    deps=[RAW_KEY],
    partitions_def=lighton_partitions,
    **RECIPE_ASSET_ARGS,
    description="Ad-hoc filter of lighton/raw with knobs from run config; each knob set is "
    "published under lighton/custom/<variant>/<config>.",
    metadata={"dagster/column_schema": COLUMN_SCHEMA},
)
def lighton_custom(
    context: dg.AssetExecutionContext,
    config: CustomFilterConfig,
    lake: LakeResource,
    duckdb: DuckDBResource,
) -> Iterator[dg.MaterializeResult]:
    knobs = config.knobs()
    storage = (*CUSTOM_KEY.path, variant_id("filter", knobs.as_dict()))
    for event in run_filter(context, lake.lake(), duckdb, knobs, storage):
        # Blocking rules still gate the publish; check results belong to spec assets only.
        if isinstance(event, dg.MaterializeResult):
            yield dg.MaterializeResult(metadata={**(event.metadata or {}), "variant": storage[-1]})


# ---- unions --------------------------------------------------------------------------------
def union_check_rules(spec: UnionSpec, rows: int) -> list[Rule]:
    return canonical_rules(extra_columns=UNION_COLUMNS) + union_rules(spec, rows)


def run_union(
    context: dg.AssetExecutionContext,
    lake: Lake,
    duckdb: DuckDBResource,
    spec: UnionSpec,
    storage_key: Sequence[str],
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Build one union from the published raw partitions, audit it, publish it."""
    raw_globs = require_raw(lake, spec.configs())
    with engine_connection(duckdb, lake) as con, lake.stage(storage_key) as staged:
        plans = plan_sources(con, spec, raw_globs)
        scratch = lake.scratch_dir() / f"union-{staged.version}"
        scratch.mkdir()
        try:
            built = build_union(con, spec, plans, staged.path, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        per_group: dict[str, int] = {}
        for plan in plans:
            per_group[plan.group.name] = (
                per_group.get(plan.group.name, 0) + built["kept"][plan.config]
            )
        sources_md = "\n".join(
            ["| config | group | rows in | threshold | kept |", "|---|---|---|---|---|"]
            + [
                f"| {p.config} | {p.group.name} | {p.counts['rows_in']} | "
                f"{p.threshold if p.threshold is not None else '-'} | {built['kept'][p.config]} |"
                for p in plans
            ]
        )
        out = Table.parquet(staged.parquet_glob())
        metadata = {
            "dagster/row_count": built["rows"],
            "rows_per_group": dg.MetadataValue.json(per_group),
            "sources": dg.MetadataValue.md(sources_md),
            "thresholds": dg.MetadataValue.json(
                {p.config: p.threshold for p in plans if p.threshold is not None}
            ),
            "dedup_lost": dg.MetadataValue.json(built["lost"]),
            "knobs": dg.MetadataValue.json(spec.knob_values()),
            "preview": preview(con, out, ["source_config", "position", "query", "similarity"]),
        }
        rules = union_check_rules(spec, built["rows"])
        manifest = {
            "rows": built["rows"],
            "knobs": spec.knob_values(),
            "rows_per_group": per_group,
            "kept_per_config": built["kept"],
            "upstream": {c: lake.manifest(RAW_KEY.path, c).get("version") for c in spec.configs()},
            "run_id": context.run.run_id,
        }
        yield from audit_and_publish(con, lake, staged, rules, metadata, manifest)


def build_union_asset(spec: UnionSpec) -> dg.AssetsDefinition:
    """lighton/<spec.name>: the union over the raw partitions its spec names."""
    key = dg.AssetKey(["lighton", spec.name])

    @dg.asset(
        key=key,
        deps=[
            dg.AssetDep(
                RAW_KEY,
                partition_mapping=dg.SpecificPartitionsPartitionMapping(spec.configs()),
            )
        ],
        **RECIPE_ASSET_ARGS,
        automation_condition=dg.AutomationCondition.eager(),
        description=spec.description,
        metadata={
            "dagster/column_schema": UNION_SCHEMA,
            "knobs": dg.MetadataValue.json(spec.knob_values()),
            "groups": dg.MetadataValue.json(
                {g.name: {"configs": list(g.configs), **g.knobs.as_dict()} for g in spec.groups}
            ),
        },
        check_specs=check_specs(union_check_rules(spec, 0), key),
    )
    def _union_asset(
        context: dg.AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        yield from run_union(context, lake.lake(), duckdb, spec, key.path)

    _union_asset.__name__ = f"lighton_{spec.name}"
    return _union_asset


class CustomUnionConfig(dg.Config):
    """A shipped union spec, with another seed, mixing or dedup."""

    union: str
    seed: int | None = None
    mixing: str = "uniform"
    dedup: bool = False
    dedup_casefold: bool = False


def build_custom_union_asset(specs: Sequence[UnionSpec]) -> dg.AssetsDefinition:
    by_name = {s.name: s for s in specs}

    @dg.asset(
        key=CUSTOM_UNION_KEY,
        deps=[dg.AssetDep(RAW_KEY, partition_mapping=dg.AllPartitionMapping())],
        **RECIPE_ASSET_ARGS,
        description="Ad-hoc variant of a union spec (seed, mixing, dedup from run config); "
        "each variant is published under lighton/custom_union/<variant>.",
        metadata={"dagster/column_schema": UNION_SCHEMA, "mixings": ", ".join(MIXINGS)},
    )
    def lighton_custom_union(
        context: dg.AssetExecutionContext,
        config: CustomUnionConfig,
        lake: LakeResource,
        duckdb: DuckDBResource,
    ) -> Iterator[dg.MaterializeResult]:
        if config.union not in by_name:
            raise dg.Failure(f"unknown union {config.union!r}; known: {sorted(by_name)}")
        base = by_name[config.union]
        spec = UnionSpec(
            base.name,
            base.description,
            base.groups,
            seed=config.seed,
            mixing=config.mixing,  # type: ignore[arg-type]
            dedup=config.dedup,
            dedup_casefold=config.dedup_casefold,
        )
        storage = (*CUSTOM_UNION_KEY.path, variant_id(base.name, spec.knob_values()))
        for event in run_union(context, lake.lake(), duckdb, spec, storage):
            if isinstance(event, dg.MaterializeResult):
                yield dg.MaterializeResult(
                    metadata={**(event.metadata or {}), "variant": storage[-1]}
                )

    return lighton_custom_union


def definitions() -> dg.Definitions:
    """Every LightOn recipe from the spec files, the ad-hoc assets, and the unions' job (the
    job of `lighton/raw` and the filter recipes is the LightOn family's, families/lighton.py)."""
    filter_specs = load_filter_specs()
    union_specs = load_union_specs(taken={s.name for s in filter_specs})
    filters = [build_filter_asset(spec) for spec in filter_specs]
    unions = [build_union_asset(spec) for spec in union_specs]
    unions_job = dg.define_asset_job(
        LIGHTON_UNIONS_JOB,
        selection=dg.AssetSelection.assets(*(a.key for a in unions)),
        description="Every union recipe, from the published raw partitions.",
    )
    return dg.Definitions(
        assets=[*filters, *unions, lighton_custom, build_custom_union_asset(union_specs)],
        jobs=[unions_job],
    )
