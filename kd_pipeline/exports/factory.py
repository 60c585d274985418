"""The one place that turns export specs into Dagster assets.

`exports/<format>/<format>_<name>`: group `exports`, partitioned like its source, eager
automation (a new source or text version rebuilds it), a freshness policy, one blocking
check per rule. Each run prepares the candidates once (with the source's split), lets the
format write each split into a staging folder, audits what was written (every rule on every
split, plus `one_split_per_query` across them), writes the dataset card, and publishes only
when every blocking rule holds: an invalid export never replaces the last valid one.
"""

import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from kd_pipeline import settings
from kd_pipeline.checks.audit import audit_and_publish, check_specs
from kd_pipeline.checks.candidates import one_split_per_query
from kd_pipeline.checks.rules import EXAMPLES, Rule, RuleOutcome, Table
from kd_pipeline.engine import engine_connection
from kd_pipeline.exports.candidates import (
    CANDIDATES,
    SPLITS,
    TextGlobs,
    keep_all_splits,
    prepare_candidates,
    present_splits,
    restrict_to_split,
)
from kd_pipeline.exports.card import (
    VALIDATION_DIR,
    configs_block,
    licence_header,
    licences_for,
    render_card,
    write_card,
)
from kd_pipeline.exports.format import ExportRun, Written, knob_values
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
    return str(lake.parquet_glob(key.path, partition))


def _fixed(rules: Sequence[Rule], outcomes: Sequence[RuleOutcome]) -> list[Rule]:
    return [
        Rule(r.name, r.description, _verdict(o), r.blocking)
        for r, o in zip(rules, outcomes, strict=True)
    ]


def _verdict(outcome: RuleOutcome) -> Any:
    return lambda _con, _table: outcome


def merge_outcomes(per_split: Mapping[str, RuleOutcome]) -> RuleOutcome:
    """One verdict from a rule's verdicts on each split's files: it holds when it holds on
    every split; violations add up; offenders name their split (train's stay bare)."""
    outcomes = list(per_split.values())
    if len(outcomes) == 1:
        return outcomes[0]
    failing = [(s, o) for s, o in per_split.items() if not o.passed]
    examples = tuple(
        e if s == "train" else f"{s}: {e}" for s, o in per_split.items() for e in o.examples
    )[:EXAMPLES]
    detail = failing[0][1].detail if failing else outcomes[0].detail
    return RuleOutcome(
        outcomes[0].rule,
        not failing,
        sum(o.violations for o in outcomes),
        examples,
        detail if len(failing) < 2 else "; ".join(f"{s}: {o.detail}" for s, o in failing),
    )


SPLIT_RULE = "one_split_per_query"


def split_rule(tables: Mapping[str, Table] | None = None, column: str = "") -> Rule:
    """The blocking check every export has: no query in two splits."""
    return Rule(
        SPLIT_RULE,
        "No query is in two splits: the source's split (one per source, seeded) is "
        "honoured by this export's files.",
        one_split_per_query(SPLIT_RULE, dict(tables or {}), column),
    )


def declared_rules(spec: ExportSpec) -> list[Rule]:
    """Every check of an export: its format's rules, then the shared split rule."""
    return [*spec.format.rules(spec.knobs), split_rule()]


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


def write_splits(spec: ExportSpec, run: ExportRun) -> dict[str, Written]:
    """Write the export: once (a format that lays out its splits itself), or once per
    split with the candidate tables holding only that split's queries, train at the top of
    the folder and validation under `validation/`. score_scope: export is scaled over the
    whole export: its statistics are taken here, before the split."""
    run = replace(run, scale=run.transform.export_scale(run.con, CANDIDATES))
    if spec.format.writes_splits:
        return {"train": spec.format.write(run)}
    splits = present_splits(run.con)
    if splits == ["train"]:  # every query trains: the tables are already that split
        return {"train": spec.format.write(run)}
    keep_all_splits(run.con, run.ordered)
    written: dict[str, Written] = {}
    for split in splits:
        restrict_to_split(run.con, split, run.ordered)
        out = run.out if split == "train" else run.out / VALIDATION_DIR
        out.mkdir(exist_ok=True)
        scratch = run.scratch / split
        scratch.mkdir()
        written[split] = spec.format.write(replace(run, out=out, scratch=scratch, split=split))
    return written


def audit_splits(
    spec: ExportSpec, knobs: Any, con: duckdb.DuckDBPyConnection, written: Mapping[str, Written]
) -> tuple[list[Rule], list[RuleOutcome]]:
    """Each format rule judged on every split's files (one merged verdict per rule), then
    the split rule over all of them."""
    declared = [r.name for r in spec.format.rules(knobs)]
    per_rule: dict[str, dict[str, RuleOutcome]] = {}
    for split, part in written.items():
        rules = part.rules if part.rules is not None else spec.format.rules(knobs)
        if [r.name for r in rules] != declared:  # a format bug, not a data problem
            raise RuntimeError(f"{spec.key.to_user_string()}: rules {rules} != declared {declared}")
        for rule in rules:
            per_rule.setdefault(rule.name, {})[split] = rule.evaluate(con, part.table)
    tables = {
        split: table
        for part in written.values()
        for split, table in (part.query_tables or {}).items()
    } or {split: part.table for split, part in written.items()}
    shared = split_rule(tables, spec.format.query_column)
    rules = [*spec.format.rules(knobs), shared]
    outcomes = [merge_outcomes(per_rule[name]) for name in declared]
    outcomes.append(shared.evaluate(con, next(iter(written.values())).table))
    return _fixed(rules, outcomes), outcomes


def _merged_files(written: Mapping[str, Written], writes_splits: bool) -> dict[str, int]:
    files: dict[str, int] = {}
    for split, part in written.items():
        prefix = "" if split == "train" or writes_splits else f"{VALIDATION_DIR}/"
        files.update({prefix + name: rows for name, rows in part.files.items()})
    return files


def _merged_counts(written: Mapping[str, Written]) -> dict[str, Any]:
    counts = dict(written["train"].counts)
    for split, part in written.items():
        if split != "train":
            counts[split] = part.counts
    return counts


def build_card(
    spec: ExportSpec,
    partition: str | None,
    splits: Sequence[str],
    knob_json: Mapping[str, Any],
    lineage: Mapping[str, Any],
    counts: Mapping[str, Any],
) -> str:
    """The export folder's dataset card (see card.py)."""
    fmt = spec.format
    configs = configs_block(fmt.hf_configs, splits, fmt.writes_splits, fmt.hf_default)
    provenance = {
        "export": spec.key.to_user_string(),
        "partition": partition,
        "format": fmt.name,
        "source": spec.source.name,
        "texts": [k.to_user_string() for k in spec.texts.keys] if spec.texts else [],
        "versions read (lake snapshot)": dict(lineage["versions"]),
        "upstream lineage (as recorded by the assets read)": dict(lineage["upstream"]),
        "spec": "kd_pipeline/exports/exports.yaml",
        "knobs": dict(knob_json),
        "split": {**knob_values(spec.split), "queries": dict(counts.get("split_queries", {}))},
    }
    return render_card(
        export=spec.key.to_user_string() + (f" [{partition}]" if partition else ""),
        title=fmt.title,
        description=spec.description,
        configs=configs,
        licences=licences_for(lineage["upstream"]),
        provenance=provenance,
        consumer=fmt.consumer,
    )


def run_export(
    context: dg.AssetExecutionContext, lake: Lake, duckdb_resource: DuckDBResource, spec: ExportSpec
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Prepare, write (per split), audit, publish one export partition."""
    partition = context.partition_key if spec.source.partitions_def is not None else None
    selection, knobs, transform = spec.for_partition(partition)
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
                con,
                spec.source,
                source_glob,
                texts,
                selection,
                spec.format.needs_positives,
                spec.split,
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
                transform=transform,
                export=spec.key.to_user_string(),
                ordered=spec.source.ordered,
            )
            written = write_splits(spec, run)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        wrote = time.perf_counter()
        rules, outcomes = audit_splits(spec, knobs, con, written)
        knob_json = {
            **knob_values(selection),
            **knob_values(transform),
            **knob_values(knobs),
        }
        lineage = {
            "source": spec.source.name,
            "partition": partition,
            "versions": {
                k.to_user_string(): _version(lake, k, partition if k == spec.source.key else None)
                for k in upstream
            },
            "split": knob_values(spec.split),
            "upstream": {
                k.to_user_string(): recorded_lineage(
                    lake, spec, k, partition if k == spec.source.key else None
                )
                for k in upstream
            },
        }
        lineage["licence"] = licence_header(licences_for(lineage["upstream"]))
        files = _merged_files(written, spec.format.writes_splits)
        written_counts = _merged_counts(written)
        splits = [s for s in SPLITS if counts["split_queries"].get(s)] or ["train"]
        write_card(staged.path, build_card(spec, partition, splits, knob_json, lineage, counts))
        _fsync_files(staged.path)
        metadata: dict[str, Any] = {
            "dagster/row_count": spec.format.row_count(written["train"]),
            "format": spec.format.title,
            "files": dg.MetadataValue.json(files),
            "selection": dg.MetadataValue.json(counts),
            "written": dg.MetadataValue.json(written_counts),
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
        metadata["licence"] = " ".join(lineage["licence"].values())
        if spec.format.preview_columns is not None:
            columns = spec.format.preview_columns(knobs, spec.source.ordered)
            metadata["preview"] = preview(con, written["train"].table, columns)
        manifest = {
            "format": spec.format.name,
            "rows": metadata["dagster/row_count"],
            "files": files,
            "selection": counts,
            "written": written_counts,
            "knobs": knob_json,
            "lineage": lineage,
            "run_id": context.run.run_id,
        }
        yield from audit_and_publish(
            con, lake, staged, rules, metadata, manifest, table=written["train"].table
        )


# what an upstream lineage entry says about the bytes read; files and sizes stay in the
# read asset's own manifest
_LINEAGE_DROPPED = {"files", "bytes", "texts"}


def recorded_lineage(
    lake: Lake, spec: ExportSpec, key: dg.AssetKey, partition: str | None
) -> list[dict[str, Any]]:
    """The upstream lineage the lake recorded for one asset an export reads (its manifest's
    `lineage`: source, revision or url + md5, card licence fields), one entry per distinct
    upstream read. A source built from another lake asset (spec.source.lineage_from: the
    LightOn recipes from lighton/raw) gives that asset's lineage: of its own partition for a
    partitioned recipe, of every partition its manifest names for a union."""
    manifest = _manifest(lake, key, partition)
    via = spec.source.lineage_from if key == spec.source.key else None
    if via is None:
        entries = [manifest.get("lineage") or {}]
    else:
        built_from = [partition] if partition else sorted(manifest.get("upstream") or {})
        entries = [_manifest(lake, via, p).get("lineage") or {} for p in built_from]
    found: list[dict[str, Any]] = []
    for entry in entries:
        kept = {k: v for k, v in entry.items() if k not in _LINEAGE_DROPPED}
        if kept and kept not in found:
            found.append(kept)
    return found


def _manifest(lake: Lake, key: dg.AssetKey, partition: str | None) -> dict[str, Any]:
    try:
        return lake.manifest(key.path, partition)
    except LakeError:  # the manifest is lineage only; a missing one is not a failure
        return {}


def _version(lake: Lake, key: dg.AssetKey, partition: str | None) -> str:
    try:
        return str(lake.manifest(key.path, partition).get("version", "?"))
    except LakeError:  # the manifest is lineage only; a missing one is not a failure
        return "?"


def build_export_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    """exports/<format>/<format>_<name>: the spec's format over its source (and texts)."""
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
            declared_rules(spec), key, partitions_def=spec.source.partitions_def
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
