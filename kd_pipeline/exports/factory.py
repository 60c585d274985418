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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from kd_pipeline.checks.candidates import one_split_per_query
from kd_pipeline.checks.rules import EXAMPLES, Rule, RuleOutcome, Table
from kd_pipeline.engine import connection_threads
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
from kd_pipeline.exports.specs import ExportSpec
from kd_pipeline.lake import Lake
from kd_pipeline.lake_asset import AssetJob, Built, LakeAsset, Step, lake_asset
from kd_pipeline.lineage import manifest, published_glob, version
from kd_pipeline.metadata import preview

GROUP = "exports"
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=8), warn_window=timedelta(days=7)
)


def export_job_name(spec: ExportSpec) -> str:
    """One job per source asset, e.g. `exports_hofstaetter_teacher_scores`."""
    return "exports_" + "_".join(spec.source.key.path)


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
        not failing,
        sum(o.violations for o in outcomes),
        examples,
        detail if len(failing) < 2 else "; ".join(f"{s}: {o.detail}" for s, o in failing),
        outcomes[0].rule,
    )


@dataclass(frozen=True)
class SplitFacts:
    """Each split's written rows (split -> table) and the column naming their query."""

    tables: Mapping[str, Table]
    column: str


SPLIT_RULE: Rule[SplitFacts] = Rule(
    "one_split_per_query",
    "No query is in two splits: the source's split (one per source, seeded) is "
    "honoured by this export's files.",
    lambda f: one_split_per_query(dict(f.tables), f.column),
)


def declared_rules(spec: ExportSpec) -> list[Rule[Any]]:
    """Every check of an export: its format's rules, then the shared split rule."""
    return [*spec.format.rules, SPLIT_RULE]


def _fsync_files(root: Path) -> None:
    """Flush files in sub-folders too (the lake's publish flushes the top level only)."""
    for path in root.rglob("*"):
        if path.is_file() and path.parent != root:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _source_glob(lake: Lake, spec: ExportSpec, partition: str | None) -> str:
    return published_glob(
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
    spec: ExportSpec, con: duckdb.DuckDBPyConnection, written: Mapping[str, Written]
) -> list[RuleOutcome]:
    """The verdicts of `declared_rules(spec)`, in order: each format rule judged on every
    split's files (one merged verdict per rule), then the split rule over all of them."""
    verdicts = [
        merge_outcomes(
            {split: rule.evaluate(con, part.table, part.facts) for split, part in written.items()}
        )
        for rule in spec.format.rules
    ]
    tables = {
        split: table
        for part in written.values()
        for split, table in (part.query_tables or {}).items()
    } or {split: part.table for split, part in written.items()}
    any_table = next(iter(written.values())).table
    split_facts = SplitFacts(tables, spec.format.query_column)
    return [*verdicts, SPLIT_RULE.evaluate(con, any_table, split_facts)]


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


def write_export(step: Step, spec: ExportSpec) -> Built[Any]:
    """Prepare the candidates, write every split, judge them, and write the card."""
    lake, con, staged, partition = step.lake, step.con, step.staged, step.partition
    selection, knobs, transform = spec.for_partition(partition)
    source_glob = _source_glob(lake, spec, partition)
    texts = None
    if spec.texts is not None:
        texts = TextGlobs(
            published_glob(lake, spec.texts.queries, None, "job text_collections"),
            published_glob(lake, spec.texts.documents, None, "job text_collections"),
            spec.texts.documents_have_titles,
        )
    upstream = [spec.source.key, *(spec.texts.keys if spec.texts else [])]
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
            connection_threads(con),
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
    outcomes = audit_splits(spec, con, written)
    knob_json = {
        **knob_values(selection),
        **knob_values(transform),
        **knob_values(knobs),
    }
    lineage = {
        "source": spec.source.name,
        "partition": partition,
        "versions": {
            k.to_user_string(): version(lake, k, partition if k == spec.source.key else None)
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
        "format": spec.format.title,
        "files": files,
        "selection": counts,
        "written": written_counts,
        "knobs": knob_json,
        "lineage": lineage,
        "rule_violations": {o.rule: o.violations for o in outcomes},
        "seconds": {
            "prepare": round(prepared - began, 3),
            "write": round(wrote - prepared, 3),
            "audit": round(time.perf_counter() - wrote, 3),
        },
        "licence": " ".join(lineage["licence"].values()),
    }
    if spec.format.preview_columns is not None:
        columns = spec.format.preview_columns(knobs, spec.source.ordered)
        metadata["preview"] = preview(con, written["train"].table, columns)
    return Built(
        spec.format.row_count(written["train"]),
        metadata=metadata,
        manifest={
            "format": spec.format.name,
            "files": files,
            "selection": counts,
            "written": written_counts,
            "knobs": knob_json,
            "lineage": lineage,
        },
        table=written["train"].table,
        outcomes=outcomes,
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
    recorded = manifest(lake, key, partition)
    via = spec.source.lineage_from if key == spec.source.key else None
    if via is None:
        entries = [recorded.get("lineage") or {}]
    else:
        built_from = [partition] if partition else sorted(recorded.get("upstream") or {})
        entries = [manifest(lake, via, p).get("lineage") or {} for p in built_from]
    found: list[dict[str, Any]] = []
    for entry in entries:
        kept = {k: v for k, v in entry.items() if k not in _LINEAGE_DROPPED}
        if kept and kept not in found:
            found.append(kept)
    return found


def build_export_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    """exports/<format>/<format>_<name>: the spec's format over its source (and texts)."""
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
    asset = LakeAsset(
        key=spec.key,
        group=GROUP,
        description=spec.description,
        rules=declared_rules(spec),
        partitions_def=spec.source.partitions_def,
        deps=[spec.source.key, *(spec.texts.keys if spec.texts else [])],
        metadata=metadata,
        kinds=spec.format.kinds,
        automation_condition=dg.AutomationCondition.eager(),
        freshness_policy=FRESHNESS,
    )
    return lake_asset(asset, lambda step: write_export(step, spec))


def build_export_jobs(specs: Sequence[ExportSpec]) -> list[AssetJob]:
    """One job per source asset, holding every export of that source."""
    by_job: dict[str, list[ExportSpec]] = {}
    for spec in specs:
        by_job.setdefault(export_job_name(spec), []).append(spec)
    return [
        dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(s.key for s in group)),
            description=f"Every export of {group[0].source.name} "
            "(needs it and its text collections published).",
        )
        for name, group in by_job.items()
    ]


def main_job_names(specs: Sequence[ExportSpec]) -> list[str]:
    """The export jobs, once each, in spec order (run after their sources are published)."""
    return list(dict.fromkeys(export_job_name(spec) for spec in specs))
