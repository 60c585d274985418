"""`kd-pipeline prepare SELECTOR`: from a dataset id with knobs to a published Parquet path.

A selector resolves to a *target*: an asset (and partition) of the code location, plus run
config for the ad-hoc assets. Spec-defined variants are reused (`[name=agnews]` with the
default knobs is `lighton/recommended[agnews]`); any other knob set goes to
`lighton/custom` or `lighton/custom_union`, published under a folder named by a hash of its
knobs, so distinct knob sets never overwrite each other. What is already published is not
redone; what is missing upstream is materialised first, each step a Dagster run in the
instance, visible in the UI.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from kd_pipeline import families
from kd_pipeline.families.lighton import RAW_KEY
from kd_pipeline.families.lighton_configs import (
    LIGHTON_CONFIG_ALIASES,
    LIGHTON_CONFIGS,
    canonical_config_name,
)
from kd_pipeline.instance import cli_run_tags, release_orphaned_runs
from kd_pipeline.lake import Lake
from kd_pipeline.recipes.factory import CUSTOM_KEY, CUSTOM_UNION_KEY, variant_id
from kd_pipeline.recipes.filters import FilterKnobs
from kd_pipeline.recipes.specs import load_filter_specs, load_union_specs
from kd_pipeline.recipes.unions import MIXINGS, seed_problem
from kd_pipeline.selectors import (
    REQUIRED,
    Axis,
    SelectorError,
    did_you_mean,
    parse_selector,
    resolve_axes,
)

LIGHTON_ID = "ai.lighton.embeddings_pre_training"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class Target:
    """What to materialise and where its output is published."""

    asset_key: dg.AssetKey
    partition: str | None
    storage_key: tuple[str, ...]
    op_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """One id of `kd-pipeline ids`: its axes and how a choice of knobs becomes a target."""

    id: str
    description: str
    axes: tuple[Axis, ...]
    resolve: Callable[[dict[str, Any]], Target]
    notes: tuple[str, ...] = field(default=())


def _probability(value: Any) -> str | None:
    return None if value is None or 0 < value <= 1 else "must be in (0, 1]"


def _lighton_pairs_entry() -> DatasetEntry:
    specs = load_filter_specs()
    no_filter = FilterKnobs(filter_drop=False, filter_duplicate=False)
    axes = (
        Axis(
            "name",
            "choice",
            REQUIRED,
            nullable=False,
            choices=LIGHTON_CONFIGS,
            aliases=LIGHTON_CONFIG_ALIASES,
            noun="configs",
            help="the config",
        ),
        Axis("filter_drop", "bool", True, nullable=False, help="skip drop = true rows"),
        Axis("filter_duplicate", "bool", True, nullable=False, help="skip duplicate rows"),
        Axis("min_similarity", "float", None, help="keep similarity >= value"),
        Axis(
            "top_percentile",
            "float",
            None,
            check=_probability,
            help="keep the top fraction p of the eligible rows",
        ),
        Axis("dedup", "bool", False, nullable=False, help="drop exact pair copies"),
        Axis("dedup_casefold", "bool", False, nullable=False, help="dedup ignoring case"),
    )

    def resolve(values: dict[str, Any]) -> Target:
        config = canonical_config_name(values.pop("name"))
        knobs = FilterKnobs(**values)
        if knobs == no_filter:
            return Target(RAW_KEY, config, tuple(RAW_KEY.path))
        for spec in specs:
            if spec.knobs == knobs:
                key = dg.AssetKey(["lighton", spec.name])
                return Target(key, config, tuple(key.path))
        storage = (*CUSTOM_KEY.path, variant_id("filter", knobs.as_dict()))
        return Target(CUSTOM_KEY, config, storage, knobs.as_dict())

    return DatasetEntry(
        LIGHTON_ID, "LightOn embeddings-pre-training pairs of one config", axes, resolve
    )


def _lighton_union_entries() -> list[DatasetEntry]:
    entries = []
    for spec in load_union_specs(taken={s.name for s in load_filter_specs()}):
        axes = (
            Axis(
                "seed",
                "int",
                spec.seed,
                check=seed_problem,
                help="null = concatenation, else seeded interleave (0 to 2**63-1)",
            ),
            Axis("mixing", "choice", spec.mixing, nullable=False, choices=MIXINGS),
            Axis("dedup", "bool", spec.dedup, nullable=False),
            Axis("dedup_casefold", "bool", spec.dedup_casefold, nullable=False),
        )

        def resolve(values: dict[str, Any], spec=spec) -> Target:
            if values == spec.knob_values():
                key = dg.AssetKey(["lighton", spec.name])
                return Target(key, None, tuple(key.path))
            storage = (*CUSTOM_UNION_KEY.path, variant_id(spec.name, values))
            return Target(CUSTOM_UNION_KEY, None, storage, {"union": spec.name, **values})

        entries.append(DatasetEntry(f"{LIGHTON_ID}.{spec.name}", spec.description, axes, resolve))
    return entries


def _family_entries() -> list[DatasetEntry]:
    """Ids that families declare as `PREPARE_IDS = {id: (asset key, partition)}`."""
    entries = []
    for module_info in pkgutil.iter_modules(families.__path__):
        module = importlib.import_module(f"{families.__name__}.{module_info.name}")
        for dataset_id, (key, partition) in getattr(module, "PREPARE_IDS", {}).items():
            entries.append(
                DatasetEntry(
                    dataset_id,
                    f"{key.to_user_string()}" + (f" [{partition}]" if partition else ""),
                    (),
                    lambda _values, key=key, partition=partition: Target(
                        key, partition, tuple(key.path)
                    ),
                )
            )
    return entries


def registry() -> dict[str, DatasetEntry]:
    entries = [_lighton_pairs_entry(), *_lighton_union_entries(), *_family_entries()]
    return {e.id: e for e in entries}


def resolve(selector: str) -> Target:
    """Parse and resolve a selector; errors list the known ids or the allowed keys."""
    dataset_id, pairs = parse_selector(selector)
    entries = registry()
    if dataset_id not in entries:
        raise SelectorError(
            f"unknown dataset id {dataset_id!r}{did_you_mean(dataset_id, list(entries))}; "
            "known ids: " + ", ".join(sorted(entries))
        )
    entry = entries[dataset_id]
    return entry.resolve(resolve_axes(dataset_id, pairs, entry.axes))


# ---- running ------------------------------------------------------------------------------
def missing_upstream(
    defs: dg.Definitions, lake: Lake, key: dg.AssetKey, partition: str | None
) -> list[tuple[dg.AssetKey, str | None]]:
    """Upstream (asset, partition) pairs not yet published, parents before children."""
    graph = defs.resolve_asset_graph()
    plan: list[tuple[dg.AssetKey, str | None]] = []

    def visit(child: dg.AssetKey, child_partition: str | None) -> None:
        node = graph.get(child)
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            parent_node = graph.get(parent)
            for parent_partition in _parent_partitions(node, parent_node, parent, child_partition):
                if (parent, parent_partition) in plan:
                    continue
                if not lake.is_published(parent.path, parent_partition):
                    visit(parent, parent_partition)
                    plan.append((parent, parent_partition))

    visit(key, partition)
    return plan


def _parent_partitions(
    node, parent_node, parent: dg.AssetKey, partition: str | None
) -> Iterable[str | None]:
    if parent_node.partitions_def is None:
        return [None]
    mapping = node.partition_mappings.get(parent)
    if isinstance(mapping, dg.SpecificPartitionsPartitionMapping):
        return list(mapping.partition_keys)
    if node.partitions_def is None or isinstance(mapping, dg.AllPartitionMapping):
        return parent_node.partitions_def.get_partition_keys()
    return [partition]


def prepare(
    selector: str, instance: dg.DagsterInstance, lake: Lake, log: Callable[[str], None]
) -> Path | str:
    """Materialise what the selector needs (nothing if published); return the folder (or
    object-store URL) of its published version."""
    from kd_pipeline.definitions import defs

    target = resolve(selector)
    for run_id in release_orphaned_runs(instance):
        log(f"run {run_id[:8]}: its process is gone; marked failed, pool slots freed")
    where = "/".join(target.storage_key) + (f" [{target.partition}]" if target.partition else "")
    if lake.is_published(target.storage_key, target.partition):
        log(f"{where}: already published, reusing it")
        return lake.published_path(target.storage_key, target.partition)
    job = defs.resolve_implicit_global_asset_job_def()
    steps = missing_upstream(defs, lake, target.asset_key, target.partition)
    steps.append((target.asset_key, target.partition))
    for number, (key, partition) in enumerate(steps, 1):
        run_config: dict[str, Any] = dict(QUIET_LOGS)
        if key == target.asset_key and target.op_config is not None:
            op_name = "__".join(key.path)
            run_config["ops"] = {op_name: {"config": target.op_config}}
        label = key.to_user_string() + (f" [{partition}]" if partition else "")
        log(f"[{number}/{len(steps)}] materialising {label}")
        result = job.execute_in_process(
            asset_selection=[key],
            partition_key=partition,
            run_config=run_config,
            instance=instance,
            raise_on_error=False,
            tags=cli_run_tags(),
        )
        if not result.success:
            raise PrepareError(
                f"{label}: run {result.run_id} failed; see it in the Dagster UI "
                "(`dagster dev`) or `dagster run` logs"
            )
    return lake.published_path(target.storage_key, target.partition)


class PrepareError(RuntimeError):
    """A run that prepare started failed."""


def describe_ids(out=None, names: bool = False) -> None:
    """Every dataset id with its knobs (to out, default stdout); names=True: the LightOn
    config names instead, one a line (the values of `name=`)."""
    out = out or sys.stdout
    if names:
        for config in LIGHTON_CONFIGS:
            print(config, file=out)
        return
    for entry in registry().values():
        print(entry.id, file=out)
        print(f"    {entry.description}", file=out)
        for axis in entry.axes:
            print(f"    {axis.describe()}", file=out)
