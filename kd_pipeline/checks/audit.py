"""Rules as Dagster asset checks, evaluated on staged data before it is published.

The asset writes a new version to staging, these rules audit it, and only if every
blocking rule holds is it published: a failing check leaves the last good version in
place and the failed results visible on the asset in the UI.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from kd_pipeline import settings
from kd_pipeline.checks.rules import Rule, RuleOutcome, no_unexpected_shrink
from kd_pipeline.lake import Lake, StagedVersion

SHRINK_RULE = "no_unexpected_shrink"
# The guard every asset read from upstream files gets: a new version may not replace a
# non-empty published one with nothing, or with fewer rows than the knob allows. Its facts:
# the published version's row count (None: nothing published).
SHRINK: Rule[int | None] = Rule(
    SHRINK_RULE,
    "An upstream read does not shrink the published partition by more than "
    "KD_PIPELINE_MAX_SHRINK (default 50%), nor empty it.",
    lambda previous_rows: no_unexpected_shrink(previous_rows, settings.max_shrink()),
)


def check_specs(
    rules: Sequence[Rule[Any]],
    key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetCheckSpec]:
    """One check per rule (its name and description); blocking rules gate downstream
    materialisation too.

    partitions_def: the asset's; every evaluation then records its partition, so the UI
    shows which partition a check passed or failed for.
    """
    # Partitioned check specs are a Dagster preview: used on purpose (without them the UI
    # shows no partition for a result and "Not Evaluated" after a blocked publish), so the
    # warning printed on every load is silenced here, and only here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                rule.name,
                asset=key,
                description=rule.description,
                blocking=rule.blocking,
                partitions_def=partitions_def,
            )
            for rule in rules
        ]


def check_result(rule: Rule[Any], outcome: RuleOutcome) -> dg.AssetCheckResult:
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


def blocking_failure(
    staged: StagedVersion, rules: Sequence[Rule[Any]], outcomes: Sequence[RuleOutcome]
) -> AuditFailed | None:
    """The failure to raise when a blocking rule failed on the staged version (naming the
    asset, its partition and each failed rule's verdict), else None."""
    failed = [o for r, o in zip(rules, outcomes, strict=True) if r.blocking and not o.passed]
    if not failed:
        return None
    where = "/".join(staged.key) + (f" [{staged.partition}]" if staged.partition else "")
    return AuditFailed(
        description=f"{where} not published; blocking checks failed: "
        + "; ".join(o.message() for o in failed),
        metadata={"failed_checks": ", ".join(o.rule for o in failed)},
    )


def publish(lake: Lake, staged: StagedVersion, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Publish the audited staged version; the metadata saying where it went: `path`,
    `table` (for a lake table), `version`, `lake_snapshot` (the DuckLake snapshot id)."""
    published = lake.publish(staged, manifest)
    where: dict[str, Any] = {"path": dg.MetadataValue.path(str(published.location))}
    if lake.is_table(staged.key):
        where["table"] = dg.MetadataValue.text(".".join(lake.table_name(staged.key)))
    return {**where, "version": published.version, "lake_snapshot": published.snapshot}
