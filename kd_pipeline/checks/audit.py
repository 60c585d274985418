"""Rules as Dagster asset checks, evaluated on staged data before it is published.

The asset writes a new version to staging, these rules audit it, and only if every
blocking rule holds is it published: a failing check leaves the last good version in
place and the failed results visible on the asset in the UI.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb

from kd_pipeline import settings
from kd_pipeline.checks.rules import (
    Rule,
    RuleOutcome,
    Table,
    evaluate_rules,
    no_unexpected_shrink,
)
from kd_pipeline.lake import Lake, StagedVersion

SHRINK_RULE = "no_unexpected_shrink"
SHRINK_DESCRIPTION = (
    "An upstream read does not shrink the published partition by more than "
    "KD_PIPELINE_MAX_SHRINK (default 50%), nor empty it."
)


def shrink_rule(previous_rows: int | None = None) -> Rule:
    """The guard every asset read from upstream files gets: a new version may not replace a
    non-empty published one with nothing, or with fewer rows than the knob allows."""
    return Rule(
        SHRINK_RULE,
        SHRINK_DESCRIPTION,
        no_unexpected_shrink(SHRINK_RULE, previous_rows, settings.max_shrink()),
    )


# The assets declared with the shrink guard (check_specs(upstream=True)): audit_and_publish
# evaluates it for exactly these, so the check is never declared without being evaluated,
# nor evaluated without being declared. Keys as path tuples.
_SHRINK_GUARDED: set[tuple[str, ...]] = set()


def check_specs(
    rules: Sequence[Rule],
    key: dg.AssetKey,
    *,
    upstream: bool = False,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetCheckSpec]:
    """One check per rule; blocking rules gate downstream materialisation too.

    upstream: the asset reads upstream files, so it also gets the shrink guard, which
    audit_and_publish then evaluates on every publish of that key (declared here only).
    partitions_def: the asset's; every evaluation then records its partition, so the UI
    shows which partition a check passed or failed for.
    """
    declared = [(r.name, r.description, r.blocking) for r in rules]
    if upstream:
        _SHRINK_GUARDED.add(tuple(key.path))
        declared.append((SHRINK_RULE, SHRINK_DESCRIPTION, True))
    # Partitioned check specs are a Dagster preview: used on purpose (without them the UI
    # shows no partition for a result and "Not Evaluated" after a blocked publish), so the
    # warning printed on every load is silenced here, and only here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=key,
                description=description,
                blocking=blocking,
                partitions_def=partitions_def,
            )
            for name, description, blocking in declared
        ]


def check_result(rule: Rule, outcome: RuleOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=rule.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            "violations": outcome.violations,
            "first_offenders": ", ".join(outcome.examples) or "-",
            "detail": outcome.message(),
        },
    )


class AuditFailed(dg.Failure):
    """Blocking rules failed on staged data: nothing was published."""


def audit_and_publish(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    staged: StagedVersion,
    rules: Sequence[Rule],
    metadata: Mapping[str, Any],
    manifest: Mapping[str, Any],
    table: Table | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Audit the staged version; publish it and report, or report and refuse.

    table: what the rules read (default: the staged Parquet files); an export whose files
    are not Parquet at the top of the folder (NDJSON, a named run file) passes its own.
    An asset declared with the shrink guard (check_specs(upstream=True)) also gets it: the
    staged rows against the published version's row count.
    """
    if tuple(staged.key) in _SHRINK_GUARDED:
        rules = [*rules, shrink_rule(lake.published_rows(staged.key, staged.partition))]
    if table is None:
        table = Table.parquet(staged.parquet_glob())
    outcomes = evaluate_rules(con, rules, table)
    results = [check_result(rule, outcome) for rule, outcome in zip(rules, outcomes, strict=True)]
    failed = [o for r, o in zip(rules, outcomes, strict=True) if r.blocking and not o.passed]
    if failed:
        yield from results
        where = "/".join(staged.key) + (f" [{staged.partition}]" if staged.partition else "")
        raise AuditFailed(
            description=f"{where} not published; blocking checks failed: "
            + "; ".join(o.message() for o in failed),
            metadata={"failed_checks": ", ".join(o.rule for o in failed)},
        )
    published = lake.publish(staged, manifest)
    where = {"path": dg.MetadataValue.path(str(published.location))}
    if lake.is_table(staged.key):
        where["table"] = dg.MetadataValue.text(".".join(lake.table_name(staged.key)))
    yield dg.MaterializeResult(
        metadata={
            **metadata,
            **where,
            "version": published.version,
            "lake_snapshot": published.snapshot,
        },
        check_results=results,
    )
