"""The one place that turns export specs into Dagster assets.

`exports/<format>/<name>`: group `exports`, partitioned like its source, eager automation
(a new source or text version rebuilds it), a freshness policy, one blocking check per
rule. Each run prepares the candidates once, lets the format write into a staging folder,
audits what was written, and publishes only when every blocking rule holds: an invalid
export never replaces the last valid one.
"""

import os
import shutil
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from kd_pipeline import settings
from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.rules import Rule, RuleOutcome, Table
from kd_pipeline.engine import engine_connection
from kd_pipeline.exports.candidates import TextGlobs, prepare_candidates
from kd_pipeline.exports.format import ExportRun, knob_values
from kd_pipeline.exports.specs import ExportSpec, load_export_specs
from kd_pipeline.lake import Lake, LakeError
from kd_pipeline.metadata import preview
from kd_pipeline.resources import LakeResource

GROUP = "exports"
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=8), warn_window=timedelta(days=7)
)


def export_job_name(spec: ExportSpec) -> str:
    """One job per source asset, e.g. `exports_hofstaetter_teacher_scores`."""
    return "exports_" + "_".join(spec.source.key.path)


def pinned_glob(lake: Lake, key: dg.AssetKey, partition: str | None, hint: str) -> str:
    """The Parquet glob of the version published now (a publish during the run does not
    change what this run reads), or a Failure saying what to materialise first."""
    if not lake.is_published(key.path, partition):
        where = key.to_user_string() + (f" [{partition}]" if partition else "")
        raise dg.Failure(f"{where} is not published yet: materialize it first ({hint})")
    return str(lake.published_path(key.path, partition).resolve() / "*.parquet")


def evaluated(
    rules: Sequence[Rule], con: duckdb.DuckDBPyConnection, table: Table
) -> tuple[list[Rule], list[RuleOutcome]]:
    """Evaluate every rule once, and hand the audit the same verdicts (so the metadata's
    counts per rule and the checks can never disagree)."""
    outcomes = [rule.evaluate(con, table) for rule in rules]
    fixed = [
        Rule(r.name, r.description, _verdict(o), r.blocking)
        for r, o in zip(rules, outcomes, strict=True)
    ]
    return fixed, outcomes


def _verdict(outcome: RuleOutcome) -> Any:
    return lambda _con, _table: outcome


def _fsync_files(root: Path) -> None:
    """Flush files in sub-folders too (the lake's publish flushes the top level only)."""
    for path in root.rglob("*"):
        if path.is_file() and path.parent != root:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _source_glob(lake: Lake, spec: ExportSpec, partition: str | None) -> str:
    return pinned_glob(
        lake, spec.source.key, partition, f"job {export_job_name(spec)} or its family job"
    )


def run_export(
    context: dg.AssetExecutionContext, lake: Lake, duckdb_resource: DuckDBResource, spec: ExportSpec
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Prepare, write, audit, publish one export partition."""
    partition = context.partition_key if spec.source.partitions_def is not None else None
    selection, knobs = spec.for_partition(partition)
    source_glob = _source_glob(lake, spec, partition)
    texts = None
    if spec.texts is not None:
        texts = TextGlobs(
            pinned_glob(lake, spec.texts.queries, None, "job text_collections"),
            pinned_glob(lake, spec.texts.documents, None, "job text_collections"),
            spec.texts.documents_have_titles,
        )
    upstream = [spec.source.key, *(spec.texts.keys if spec.texts else [])]
    with (
        engine_connection(duckdb_resource, lake) as con,
        lake.stage(spec.key.path, partition) as staged,
    ):
        scratch = lake.scratch_dir() / f"export-{staged.version}"
        scratch.mkdir()
        began = time.perf_counter()
        try:
            counts = prepare_candidates(
                con, spec.source, source_glob, texts, selection, spec.format.needs_positives
            )
            prepared = time.perf_counter()
            run = ExportRun(
                con,
                staged.path,
                scratch,
                knobs,
                spec.name,
                spec.source.name,
                partition,
                settings.duckdb_threads(),
                spec.source.shape,
                spec.source.ir_datasets_id,
                bool(spec.texts and spec.texts.documents_have_titles),
            )
            written = spec.format.write(run)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        wrote = time.perf_counter()
        rules = written.rules if written.rules is not None else spec.format.rules(knobs)
        declared = [r.name for r in spec.format.rules(knobs)]
        if [r.name for r in rules] != declared:  # a format bug, not a data problem
            raise RuntimeError(f"{spec.key.to_user_string()}: rules {rules} != declared {declared}")
        rules, outcomes = evaluated(rules, con, written.table)
        _fsync_files(staged.path)
        knob_json = {**knob_values(selection), **knob_values(knobs)}
        lineage = {
            "source": spec.source.name,
            "partition": partition,
            "versions": {
                k.to_user_string(): _version(lake, k, partition if k == spec.source.key else None)
                for k in upstream
            },
            **({"licence": spec.source.licence} if spec.source.licence else {}),
        }
        main_rows = (
            counts["queries"] if spec.format.name == "splade" else sum(written.files.values())
        )
        metadata: dict[str, Any] = {
            "dagster/row_count": main_rows,
            "format": spec.format.title,
            "files": dg.MetadataValue.json(written.files),
            "selection": dg.MetadataValue.json(counts),
            "written": dg.MetadataValue.json(written.counts),
            "knobs": dg.MetadataValue.json(knob_json),
            "lineage": dg.MetadataValue.json(lineage),
            "rule_violations": dg.MetadataValue.json({o.rule: o.violations for o in outcomes}),
            "seconds": dg.MetadataValue.json(
                {
                    "prepare": round(prepared - began, 3),
                    "write": round(wrote - prepared, 3),
                    "audit": round(time.perf_counter() - wrote, 3),
                }
            ),
        }
        if spec.source.licence:
            metadata["licence"] = spec.source.licence
        if spec.format.name in {"margin_mse", "pointwise", "splade_triplets"}:
            metadata["preview"] = preview(con, written.table, _preview_columns(spec, knobs))
        manifest = {
            "format": spec.format.name,
            "files": written.files,
            "selection": counts,
            "written": written.counts,
            "knobs": knob_json,
            "lineage": lineage,
            "run_id": context.run.run_id,
        }
        yield from audit_and_publish(
            con, lake, staged, rules, metadata, manifest, table=written.table
        )


def _preview_columns(spec: ExportSpec, knobs: Any) -> list[str]:
    names = [c.name for c in spec.format.column_schema.columns]
    if spec.format.name == "margin_mse" and getattr(knobs, "negatives_per_row", 1) > 1:
        return ["query", "positive", "negative_1", "score"]
    return names


def _version(lake: Lake, key: dg.AssetKey, partition: str | None) -> str:
    try:
        return str(lake.manifest(key.path, partition).get("version", "?"))
    except LakeError:  # the manifest is lineage only; a missing one is not a failure
        return "?"


def build_export_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    """exports/<format>/<name>: the spec's format over its source (and texts)."""
    key = spec.key
    deps = [
        dg.AssetDep(spec.source.key),
        *(dg.AssetDep(k) for k in (spec.texts.keys if spec.texts else [])),
    ]
    metadata: dict[str, Any] = {
        "dagster/column_schema": spec.format.column_schema,
        "format": spec.format.title,
        "layout": dg.MetadataValue.md(spec.format.layout),
        "knobs": dg.MetadataValue.json(spec.knob_values()),
        "source": spec.source.name,
    }
    if spec.texts:
        metadata["texts"] = ", ".join(k.to_user_string() for k in spec.texts.keys)
    if spec.source.licence:
        metadata["licence"] = spec.source.licence

    @dg.asset(
        key=key,
        deps=deps,
        partitions_def=spec.source.partitions_def,
        group_name=GROUP,
        kinds=set(spec.format.kinds),
        owners=["team:kd-pipeline"],
        pool="duckdb",
        automation_condition=dg.AutomationCondition.eager(),
        freshness_policy=FRESHNESS,
        description=spec.description,
        metadata=metadata,
        check_specs=check_specs(
            spec.format.rules(spec.knobs), key, partitions_def=spec.source.partitions_def
        ),
    )
    def _export_asset(
        context: dg.AssetExecutionContext, lake: LakeResource, duckdb: DuckDBResource
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        yield from run_export(context, lake.lake(), duckdb, spec)

    _export_asset.__name__ = "_".join(key.path)
    return _export_asset


def definitions(specs: Sequence[ExportSpec] | None = None) -> dg.Definitions:
    """Every export of the spec file, and one job per source asset."""
    specs = load_export_specs() if specs is None else specs
    assets = [build_export_asset(spec) for spec in specs]
    by_job: dict[str, list[ExportSpec]] = {}
    for spec in specs:
        by_job.setdefault(export_job_name(spec), []).append(spec)
    jobs = [
        dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(s.key for s in group)),
            description=f"Every export of {group[0].source.name} "
            "(needs it and its text collections published).",
        )
        for name, group in by_job.items()
    ]
    return dg.Definitions(assets=assets, jobs=jobs)


def main_job_names() -> list[str]:
    """The export jobs, once each, in spec order (run after their sources are published)."""
    return list(dict.fromkeys(export_job_name(spec) for spec in load_export_specs()))
