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
from collections.abc import Sequence
from typing import Any

import dagster as dg

from kd_pipeline.checks.rules import Rule, Table
from kd_pipeline.families.lighton import (
    CANONICAL_COLUMNS,
    COLUMN_SCHEMA,
    RAW_KEY,
    canonical_rules,
    lighton_partitions,
)
from kd_pipeline.lake import Lake
from kd_pipeline.lake_asset import AdHoc, AssetJob, Built, LakeAsset, Step, lake_asset
from kd_pipeline.metadata import preview, same_column_lineage
from kd_pipeline.recipes.filters import FilterFacts, FilterKnobs, apply_filter, recipe_rules
from kd_pipeline.recipes.specs import FilterSpec
from kd_pipeline.recipes.unions import (
    MIXINGS,
    UNION_COLUMNS,
    UnionSpec,
    build_union,
    plan_sources,
    union_rules,
)

LIGHTON_UNIONS_JOB = "lighton_unions"
CUSTOM_KEY = dg.AssetKey(["lighton", "custom"])
CUSTOM_UNION_KEY = dg.AssetKey(["lighton", "custom_union"])
GROUP = "lighton"
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
def filter_rules(knobs: FilterKnobs) -> list[Rule[FilterFacts]]:
    """Canonical integrity plus the recipe's own rules, checked on its output."""
    return [*canonical_rules(), *recipe_rules(knobs)]


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


def write_filtered(step: Step, knobs: FilterKnobs) -> Built[FilterFacts]:
    """Filter one raw partition with knobs into the staged version."""
    config = step.context.partition_key
    raw_glob = require_raw(step.lake, [config])[config]
    raw_manifest = step.lake.manifest(RAW_KEY.path, config)
    result = apply_filter(step.con, Table.parquet(raw_glob), knobs, step.staged.path)
    rows = result.counts["rows_out"]
    return Built(
        rows,
        FilterFacts(result.threshold, rows),
        metadata={
            **result.counts,
            "eligible_rows": result.eligible_rows,
            "threshold": result.threshold if result.threshold is not None else "none",
            "knobs": knobs.as_dict(),
            "upstream_version": raw_manifest.get("version", "?"),
            "upstream_revision": raw_manifest.get("lineage", {}).get("revision", "?"),
            "dagster/column_lineage": same_column_lineage(RAW_KEY, list(CANONICAL_COLUMNS)),
            "preview": preview(step.con, step.table, ["query", "document", "similarity"]),
        },
        manifest={
            "counts": result.counts,
            "threshold": result.threshold,
            "knobs": knobs.as_dict(),
            "upstream": {"key": RAW_KEY.to_user_string(), "version": raw_manifest.get("version")},
        },
    )


def build_filter_asset(spec: FilterSpec) -> dg.AssetsDefinition:
    """lighton/<spec.name>: the spec's filter over lighton/raw, one partition per config."""
    asset = LakeAsset(
        key=dg.AssetKey(["lighton", spec.name]),
        group=GROUP,
        description=spec.description,
        rules=filter_rules(spec.knobs),
        partitions_def=lighton_partitions,
        deps=[RAW_KEY],
        metadata={
            "dagster/column_schema": COLUMN_SCHEMA,
            "knobs": dg.MetadataValue.json(spec.knobs.as_dict()),
        },
        automation_condition=dg.AutomationCondition.eager(),
    )
    return lake_asset(asset, lambda step: write_filtered(step, spec.knobs))


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


# Blocking rules still gate the publish; check results belong to spec assets only.
CUSTOM = LakeAsset(
    key=CUSTOM_KEY,
    group=GROUP,
    description="Ad-hoc filter of lighton/raw with knobs from run config; each knob set is "
    "published under lighton/custom/<variant>/<config>.",
    partitions_def=lighton_partitions,
    deps=[RAW_KEY],
    metadata={"dagster/column_schema": COLUMN_SCHEMA},
    ad_hoc=AdHoc(
        CustomFilterConfig,
        rules=lambda config: filter_rules(config.knobs()),
        variant=lambda config: variant_id("filter", config.knobs().as_dict()),
    ),
)
lighton_custom = lake_asset(CUSTOM, lambda step: write_filtered(step, step.config.knobs()))


# ---- unions --------------------------------------------------------------------------------
def union_check_rules(spec: UnionSpec) -> list[Rule[int]]:
    return [*canonical_rules(extra_columns=UNION_COLUMNS), *union_rules(spec)]


def write_union(step: Step, spec: UnionSpec) -> Built[int]:
    """Build one union from the published raw partitions into the staged version."""
    raw_globs = require_raw(step.lake, spec.configs())
    plans = plan_sources(step.con, spec, raw_globs)
    scratch = step.lake.scratch_dir() / f"union-{step.staged.version}"
    scratch.mkdir()
    try:
        built = build_union(step.con, spec, plans, step.staged.path, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_group: dict[str, int] = {}
    for plan in plans:
        per_group[plan.group.name] = per_group.get(plan.group.name, 0) + built["kept"][plan.config]
    sources_md = "\n".join(
        ["| config | group | rows in | threshold | kept |", "|---|---|---|---|---|"]
        + [
            f"| {p.config} | {p.group.name} | {p.counts['rows_in']} | "
            f"{p.threshold if p.threshold is not None else '-'} | {built['kept'][p.config]} |"
            for p in plans
        ]
    )
    return Built(
        built["rows"],
        built["rows"],
        metadata={
            "rows_per_group": per_group,
            "sources": dg.MetadataValue.md(sources_md),
            "thresholds": {p.config: p.threshold for p in plans if p.threshold is not None},
            "dedup_lost": built["lost"],
            "knobs": spec.knob_values(),
            "preview": preview(
                step.con, step.table, ["source_config", "position", "query", "similarity"]
            ),
        },
        manifest={
            "knobs": spec.knob_values(),
            "rows_per_group": per_group,
            "kept_per_config": built["kept"],
            "upstream": {
                c: step.lake.manifest(RAW_KEY.path, c).get("version") for c in spec.configs()
            },
        },
    )


def build_union_asset(spec: UnionSpec) -> dg.AssetsDefinition:
    """lighton/<spec.name>: the union over the raw partitions its spec names."""
    asset = LakeAsset(
        key=dg.AssetKey(["lighton", spec.name]),
        group=GROUP,
        description=spec.description,
        rules=union_check_rules(spec),
        deps=[
            dg.AssetDep(
                RAW_KEY,
                partition_mapping=dg.SpecificPartitionsPartitionMapping(spec.configs()),
            )
        ],
        metadata={
            "dagster/column_schema": UNION_SCHEMA,
            "knobs": dg.MetadataValue.json(spec.knob_values()),
            "groups": dg.MetadataValue.json(
                {g.name: {"configs": list(g.configs), **g.knobs.as_dict()} for g in spec.groups}
            ),
        },
        automation_condition=dg.AutomationCondition.eager(),
    )
    return lake_asset(asset, lambda step: write_union(step, spec))


class CustomUnionConfig(dg.Config):
    """A shipped union spec, with another seed, mixing or dedup."""

    union: str
    seed: int | None = None
    mixing: str = "uniform"
    dedup: bool = False
    dedup_casefold: bool = False


def build_custom_union_asset(specs: Sequence[UnionSpec]) -> dg.AssetsDefinition:
    """lighton/custom_union: a shipped union spec with the run config's seed, mixing and
    dedup, each variant published under its own folder."""
    by_name = {s.name: s for s in specs}

    def configured(config: CustomUnionConfig) -> UnionSpec:
        if config.union not in by_name:
            raise dg.Failure(f"unknown union {config.union!r}; known: {sorted(by_name)}")
        base = by_name[config.union]
        return UnionSpec(
            base.name,
            base.description,
            base.groups,
            seed=config.seed,
            mixing=config.mixing,  # type: ignore[arg-type]
            dedup=config.dedup,
            dedup_casefold=config.dedup_casefold,
        )

    asset = LakeAsset(
        key=CUSTOM_UNION_KEY,
        group=GROUP,
        description="Ad-hoc variant of a union spec (seed, mixing, dedup from run config); "
        "each variant is published under lighton/custom_union/<variant>.",
        deps=[dg.AssetDep(RAW_KEY, partition_mapping=dg.AllPartitionMapping())],
        metadata={"dagster/column_schema": UNION_SCHEMA, "mixings": ", ".join(MIXINGS)},
        ad_hoc=AdHoc(
            CustomUnionConfig,
            rules=lambda config: union_check_rules(configured(config)),
            variant=lambda config: variant_id(config.union, configured(config).knob_values()),
        ),
    )
    return lake_asset(asset, lambda step: write_union(step, configured(step.config)))


def build_unions_job(unions: Sequence[dg.AssetsDefinition]) -> AssetJob:
    """The unions' job: every union recipe, from the published raw partitions (the filters
    run in the per-config job of families/lighton.py)."""
    return dg.define_asset_job(
        LIGHTON_UNIONS_JOB,
        selection=dg.AssetSelection.assets(*(a.key for a in unions)),
        description="Every union recipe, from the published raw partitions.",
    )
