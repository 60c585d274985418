"""The one asset skeleton: every family, recipe and export asset is a `LakeAsset` and a body.

A step of any of them runs the same way: connect the engine to the lake, stage a new
version of its partition, let the body write it (fetching upstream files or reading
published tables, whatever it needs), judge the staged version by the asset's rules, and
publish it only if every blocking rule holds (write-audit-publish). The body says only
what is particular to the asset: what it writes, and what it learned while writing (the
facts its rules read, its metadata and lineage). Shared settings (owner, DuckDB pool,
kinds) are set here, once.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic

import dagster as dg
import duckdb

from kd_pipeline.checks.audit import SHRINK, blocking_failure, check_result, check_specs, publish
from kd_pipeline.checks.rules import F, Rule, RuleOutcome, Table, evaluate_rules
from kd_pipeline.engine import EngineResource, engine_connection
from kd_pipeline.fetch import Fetcher
from kd_pipeline.lake import Lake, StagedVersion
from kd_pipeline.resources import LakeResource, UpstreamResource

# what dg.define_asset_job returns (a job resolved against the asset graph at load; its
# class is not in Dagster's public API)
AssetJob = Any
OWNERS = ["team:kd-pipeline"]
POOL = "duckdb"  # dagster.yaml limits how many steps hold a DuckDB engine at once
KINDS = frozenset({"duckdb", "parquet"})


@dataclass(frozen=True)
class AdHoc(Generic[F]):
    """An ad-hoc asset: its knobs come from run config (`config`), so its rules depend on
    them (`rules(config)`: they still gate its publish, but no checks are declared), and
    each knob set is stored under its own variant folder (`variant(config)`)."""

    config: type[dg.Config]
    rules: Callable[[Any], Sequence[Rule[F]]]
    variant: Callable[[Any], str]


@dataclass(frozen=True)
class LakeAsset(Generic[F]):
    """What Dagster shows of an asset and what its staged versions are judged by.

    rules: its rules, declared once: one asset check each, and the audit of every staged
    version (facts of type F from the body). reads_upstream: it fetches upstream files, so
    it gets the `upstream` resource and the shrink guard (`checks.audit.SHRINK`).
    reported: rule name -> metadata key that also gets the rule's detail (e.g. the share of
    unresolved ids, worth seeing even when the check says only "ok").
    ad_hoc: set for an asset whose knobs come from run config (see `AdHoc`).
    """

    key: dg.AssetKey
    group: str
    description: str
    rules: Sequence[Rule[F]] = ()
    partitions_def: dg.PartitionsDefinition | None = None
    deps: Sequence[dg.AssetDep | dg.AssetKey] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    kinds: frozenset[str] = KINDS
    reads_upstream: bool = False
    reported: Mapping[str, str] = field(default_factory=dict)
    automation_condition: dg.AutomationCondition | None = None
    freshness_policy: dg.FreshnessPolicy | None = None
    ad_hoc: AdHoc[F] | None = None

    def __post_init__(self) -> None:
        names = {rule.name for rule in self.rules}
        unknown = sorted(set(self.reported) - names) if self.ad_hoc is None else []
        if unknown:  # a definition error, found when the code location loads
            raise ValueError(f"{self.key.to_user_string()}: reported rules {unknown} unknown")

    def own_rules(self, config: Any = None) -> list[Rule[F]]:
        """The asset's own rules (an ad-hoc asset's for its run config)."""
        return list(self.ad_hoc.rules(config) if self.ad_hoc else self.rules)

    def rules_of(self, config: Any = None) -> list[Rule[Any]]:
        """Every rule a staged version is judged by, in order: its own, then the shrink
        guard of an asset that reads upstream files; the declared checks when not ad hoc."""
        return [*self.own_rules(config), *([SHRINK] if self.reads_upstream else [])]


@dataclass
class Step:
    """One step of a lake asset, as its body sees it: the run, the lake, the engine
    connection, the staged version to write into, and the run config (ad-hoc assets)."""

    context: dg.AssetExecutionContext
    lake: Lake
    con: duckdb.DuckDBPyConnection
    staged: StagedVersion
    upstream: UpstreamResource | None
    config: Any = None

    @property
    def partition(self) -> str | None:
        """The partition key of the step (None for an unpartitioned asset)."""
        return self.context.partition_key if self.context.has_partition_key else None

    @property
    def table(self) -> Table:
        """The staged version's Parquet files, as the rules read them."""
        return Table.parquet(self.staged.parquet_glob())

    @cached_property
    def fetcher(self) -> Fetcher:
        """Where upstream files come from (only for assets with reads_upstream)."""
        if self.upstream is None:
            raise RuntimeError("this asset does not read upstream files (reads_upstream)")
        return self.upstream.fetcher()

    def log(self, message: str) -> None:
        """One line in the run's log (the UI's run view)."""
        self.context.log.info(message)


@dataclass
class Built(Generic[F]):
    """What a body wrote: its row count, the facts its rules read, and what to record.

    metadata: shown on the materialisation (lists and dicts become JSON); manifest: recorded
    with the version in the lake (the skeleton adds `rows` and `run_id`); table: what the
    rules read (default: the staged Parquet files); outcomes: the rules' verdicts when the
    body judged them itself (an export judges each split's files, then merges).
    """

    rows: int
    facts: F = None  # type: ignore[assignment]
    metadata: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    table: Table | None = None
    outcomes: list[RuleOutcome] | None = None


def metadata_value(value: object) -> object:
    """Lists and dicts as JSON metadata; everything else as it is."""
    return dg.MetadataValue.json(value) if isinstance(value, list | dict) else value


def run_step(
    spec: LakeAsset[F],
    body: Callable[[Step], Built[F]],
    context: dg.AssetExecutionContext,
    lake: Lake,
    duckdb_resource: EngineResource,
    upstream: UpstreamResource | None,
    config: Any = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Stage, write (body), audit, publish one partition of spec; report the checks.

    Raises `checks.audit.AuditFailed` (after reporting every check) when a blocking rule
    fails: nothing is published, the previous version stays current.
    """
    partition = context.partition_key if context.has_partition_key else None
    lake = lake.pinned()  # every input read at one snapshot: one consistent state
    storage = tuple(spec.key.path)
    if spec.ad_hoc is not None:
        storage = (*storage, spec.ad_hoc.variant(config))
    with engine_connection(duckdb_resource, lake) as con, lake.stage(storage, partition) as staged:
        step = Step(context, lake, con, staged, upstream, config)
        built = body(step)
        table = built.table or step.table
        outcomes = list(built.outcomes or [])
        if built.outcomes is None:
            outcomes = evaluate_rules(con, spec.own_rules(config), table, built.facts)
        if spec.reads_upstream:
            # the version this one replaces: read now, under the partition's lock
            previous = lake.published_rows(staged.key, staged.partition, live=True)
            outcomes.append(SHRINK.evaluate(con, table, previous))
        rules = spec.rules_of(config)
        if [o.rule for o in outcomes] != [r.name for r in rules]:  # a body's bug, not data
            raise RuntimeError(f"{spec.key.to_user_string()}: verdicts do not match the rules")
        verdicts = {o.rule: o.detail for o in outcomes}
        reported = {key: verdicts[rule] for rule, key in spec.reported.items()}
        results = (
            []
            if spec.ad_hoc
            else [check_result(r, o) for r, o in zip(rules, outcomes, strict=True)]
        )
        failure = blocking_failure(staged, rules, outcomes)
        if failure is not None:
            yield from results
            raise failure
        manifest = {
            "rows": built.rows,
            **built.manifest,
            **reported,
            "run_id": context.run.run_id,
            "read_snapshot": lake.read_snapshot,
        }
        where = publish(lake, staged, manifest)
    metadata = {
        "dagster/row_count": built.rows,
        **{k: metadata_value(v) for k, v in built.metadata.items()},
        **reported,
        **where,
        "lake_read_snapshot": lake.read_snapshot,
    }
    if spec.ad_hoc is not None:
        metadata["variant"] = storage[-1]
    yield dg.MaterializeResult(metadata=metadata, check_results=results)


def lake_asset(spec: LakeAsset[F], body: Callable[[Step], Built[F]]) -> dg.AssetsDefinition:
    """The Dagster asset of spec: resources `lake`, `duckdb` (and `upstream` if it reads
    upstream files), one check per declared rule, each step run by `run_step`."""
    asset = dg.asset(
        key=spec.key,
        deps=list(spec.deps),
        partitions_def=spec.partitions_def,
        group_name=spec.group,
        kinds=set(spec.kinds),
        owners=OWNERS,
        pool=POOL,
        description=spec.description,
        metadata=dict(spec.metadata),
        automation_condition=spec.automation_condition,
        freshness_policy=spec.freshness_policy,
        required_resource_keys={"lake", "duckdb", *(["upstream"] if spec.reads_upstream else [])},
        check_specs=None
        if spec.ad_hoc
        else check_specs(spec.rules_of(), spec.key, spec.partitions_def),
    )

    def steps(context: dg.AssetExecutionContext, config: Any) -> Iterator[Any]:
        resources = context.resources
        upstream = resources.upstream if spec.reads_upstream else None
        lake: LakeResource = resources.lake
        yield from run_step(spec, body, context, lake.lake(), resources.duckdb, upstream, config)

    if spec.ad_hoc is None:

        def compute(context: dg.AssetExecutionContext) -> Iterator[Any]:
            yield from steps(context, None)

    else:
        config_type = spec.ad_hoc.config

        def compute(context: dg.AssetExecutionContext, config: config_type) -> Iterator[Any]:  # type: ignore[valid-type]
            yield from steps(context, config)

    compute.__name__ = "_".join(spec.key.path)
    return asset(compute)
