"""Union recipes: training mixtures of many LightOn configs, each with its own filter.

A union is an ordered list of groups; a group is a list of configs and the filter knobs
applied to each of them (a `top_percentile` threshold is computed per config). Sources
(one per config) are concatenated in group order, configs in the order listed (`all` =
upstream order), or, with a seed, interleaved: at each step a non-exhausted source is
picked uniformly at random (`uniform`, the peer's rule) or with probability proportional
to its remaining rows (`proportional`), and each source's rows are shuffled by the same
seed. Every output row carries `source_config`, `source_group` and its `position`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from kd_pipeline.checks.rules import Rule, Table, row_count_is, rows_where, static
from kd_pipeline.engine import copy_parquet
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, canonical_config_name
from kd_pipeline.recipes.dedup import (
    KEEP_TABLE,
    DedupSource,
    build_keep_table,
    kept_by_dedup_select,
)
from kd_pipeline.recipes.filters import (
    FilterKnobs,
    SpecError,
    kept_rows_select,
    no_duplicate_pairs_rule,
    rows_removed_by_rule,
    top_percentile_threshold,
)

Mixing = Literal["uniform", "proportional"]
MIXINGS: tuple[str, ...] = ("uniform", "proportional")
UNION_COLUMNS = {"source_config": "VARCHAR", "source_group": "VARCHAR", "position": "BIGINT"}


@dataclass(frozen=True)
class UnionGroup:
    name: str
    configs: tuple[str, ...]
    knobs: FilterKnobs


MAX_SEED = 2**63 - 1


def seed_problem(seed: object) -> str | None:
    """Why a union seed cannot be used (None when it can): null (concatenation) or an
    integer from 0 to 2**63-1, what numpy's generator accepts. Used by the spec loader, the
    run config and the selector alike."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return "must be null or an integer"
    if not 0 <= seed <= MAX_SEED:
        return f"must be from 0 to {MAX_SEED} (null = concatenation)"
    return None


@dataclass(frozen=True)
class UnionSpec:
    """A mixture: groups in order, and how to combine them."""

    name: str
    description: str
    groups: tuple[UnionGroup, ...]
    seed: int | None = None
    mixing: Mixing = "uniform"
    dedup: bool = False
    dedup_casefold: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = seed_problem(self.seed)
        if problem:
            raise SpecError(f"union {self.name!r}: seed {self.seed!r} {problem}")
        if self.mixing not in MIXINGS:
            raise SpecError(f"union {self.name!r}: mixing must be one of {list(MIXINGS)}")
        seen: dict[str, str] = {}
        for group in self.groups:
            for config in group.configs:
                if config in seen:
                    raise SpecError(
                        f"union {self.name!r}: config {config!r} is in groups "
                        f"{seen[config]!r} and {group.name!r}"
                    )
                seen[config] = group.name
        if not seen:
            raise SpecError(f"union {self.name!r} has no configs")

    def sources(self) -> list[tuple[str, UnionGroup]]:
        """(config, group) in output order."""
        return [(config, group) for group in self.groups for config in group.configs]

    def configs(self) -> list[str]:
        return [config for config, _ in self.sources()]

    def knob_values(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mixing": self.mixing,
            "dedup": self.dedup,
            "dedup_casefold": self.dedup_casefold,
        }


def parse_group(union: str, body: dict[str, Any], index: int) -> UnionGroup:
    """One group of a union spec: `name`, `configs` (a list or `all`), `exclude`, knobs."""
    where = f"union {union!r} group {index + 1}"
    allowed = {"name", "configs", "exclude"} | set(FilterKnobs.__dataclass_fields__)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        exclude = {canonical_config_name(c) for c in body.get("exclude") or []}
        configs = body.get("configs")
        if configs == "all":
            chosen = [c for c in LIGHTON_CONFIGS if c not in exclude]
        elif isinstance(configs, list) and configs:
            chosen = [canonical_config_name(str(c)) for c in configs if c not in exclude]
        else:
            raise SpecError("configs must be `all` or a non-empty list of config names")
        knobs = FilterKnobs(
            **{k: v for k, v in body.items() if k in FilterKnobs.__dataclass_fields__}
        )
    except (SpecError, ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    return UnionGroup(str(body.get("name") or f"group{index + 1}"), tuple(chosen), knobs)


# ---- interleaving ------------------------------------------------------------------------
def interleave_labels(counts: Sequence[int], seed: int, mixing: Mixing) -> np.ndarray:
    """The source index of each output position, for a seeded interleave of sources of the
    given sizes. Deterministic for a seed; vectorised in blocks, not per row."""
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in counts]
    dtype = np.int32
    if mixing == "proportional":  # each step weighted by what remains = a random permutation
        return rng.permutation(np.repeat(np.arange(len(counts), dtype=dtype), counts))
    remaining = np.array(counts, dtype=np.int64)
    active = [i for i, c in enumerate(counts) if c > 0]
    blocks: list[np.ndarray] = []
    while active:
        if len(active) == 1:
            blocks.append(np.full(remaining[active[0]], active[0], dtype=dtype))
            break
        k = len(active)
        size = int(min(4_000_000, max(1024, 2 * k * min(remaining[a] for a in active))))
        draws = np.asarray(active, dtype=dtype)[rng.integers(0, k, size)]
        # Where does the first source run out? Its remaining-th pick ends the block.
        order = np.argsort(draws, kind="stable")
        sorted_draws = draws[order]
        end = size
        exhausted = None
        for source in active:
            lo, hi = np.searchsorted(sorted_draws, [source, source + 1])
            need = remaining[source]
            if hi - lo >= need:
                at = int(order[lo + need - 1]) + 1
                if at < end:
                    end, exhausted = at, source
        block = draws[:end]
        blocks.append(block)
        remaining -= np.bincount(block, minlength=len(counts))
        active = [a for a in active if remaining[a] > 0]
        assert exhausted is None or remaining[exhausted] == 0
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)


def positions_table(labels: np.ndarray) -> pa.Table:
    """(source_index, in-source rank j, global position) for every output row."""
    order = np.argsort(labels, kind="stable")
    sources = labels[order]
    starts = np.searchsorted(sources, sources, side="left")
    ranks = np.arange(len(order)) - starts
    return pa.table(
        {
            "source_index": sources.astype(np.int32),
            "j": ranks.astype(np.int64),
            "position": order.astype(np.int64),
        }
    )


# ---- building ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePlan:
    index: int
    config: str
    group: UnionGroup
    table: Table
    threshold: float | None
    counts: dict[str, int]


def plan_sources(
    con: duckdb.DuckDBPyConnection, spec: UnionSpec, raw_glob: dict[str, str]
) -> list[SourcePlan]:
    """Per source: its threshold and rule counts (one pass over its small columns)."""
    plans = []
    for index, (config, group) in enumerate(spec.sources()):
        table = Table.parquet(raw_glob[config])
        threshold, _ = top_percentile_threshold(con, table, group.knobs)
        counts = rows_removed_by_rule(con, table, group.knobs, threshold)
        plans.append(SourcePlan(index, config, group, table, threshold, counts))
    return plans


def _source_select(plan: SourcePlan, *, addressed: bool) -> tuple[str, dict[str, Any]]:
    select, params = kept_rows_select(
        plan.table, plan.group.knobs, plan.threshold, addressed=addressed
    )
    return select, params


def _labelled(select: str, plan: SourcePlan, position: str) -> str:
    return (
        f"SELECT src.*, {_literal(plan.config)} AS source_config, "
        f"{_literal(plan.group.name)} AS source_group, {position} AS position FROM ({select}) src"
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def build_union(
    con: duckdb.DuckDBPyConnection,
    spec: UnionSpec,
    plans: Sequence[SourcePlan],
    out_dir: Path,
    scratch: Path,
) -> dict[str, Any]:
    """Write the union to out_dir (scratch: room for the seeded shuffle); return the kept
    rows per source and the dedup losses."""
    lost: dict[str, dict[str, int]] = {}
    selects: list[tuple[str, dict[str, Any]]] = []
    if spec.dedup:
        addressed = [_source_select(p, addressed=True) for p in plans]
        lost = build_keep_table(
            con,
            [
                DedupSource(p.index, p.config, sel, params)
                for p, (sel, params) in zip(plans, addressed, strict=True)
            ],
            spec.dedup_casefold,
        )
        selects = [
            (kept_by_dedup_select(sel, p.index), params)
            for p, (sel, params) in zip(plans, addressed, strict=True)
        ]
        kept = [
            con.execute(
                f"SELECT count(*) FROM {KEEP_TABLE} WHERE source_index = $i", {"i": p.index}
            ).fetchall()[0][0]
            for p in plans
        ]
    else:
        selects = [_source_select(p, addressed=False) for p in plans]
        kept = [p.counts["rows_out"] for p in plans]

    if spec.seed is None:
        offset = 0
        for plan, (select, params), n in zip(plans, selects, kept, strict=True):
            position = f"{offset} + row_number() OVER () - 1"
            copy_parquet(
                con,
                _labelled(select, plan, position),
                out_dir,
                params,
                filename_prefix=f"s{plan.index:05d}-",
            )
            offset += n
    else:
        # Each source, shuffled by the seed, to scratch; then one ordered pass by position.
        for plan, (select, params) in zip(plans, selects, strict=True):
            shuffle = (
                f"md5('{int(spec.seed)}:' || {_literal(plan.config)} || ':' || "
                "CAST(row_number() OVER () AS VARCHAR))"
            )
            shuffled = (
                f"SELECT *, {plan.index} AS source_index, "
                "row_number() OVER (ORDER BY shuffle_key) - 1 AS j FROM ("
                f"SELECT *, {shuffle} AS shuffle_key FROM ({_labelled(select, plan, 'NULL')}))"
            )
            copy_parquet(con, shuffled, scratch / f"s{plan.index:05d}", params)
        con.register(
            "union_positions", positions_table(interleave_labels(kept, spec.seed, spec.mixing))
        )
        copy_parquet(
            con,
            "SELECT r.* EXCLUDE (position, shuffle_key, source_index, j), p.position "
            "FROM read_parquet($scratch_glob) r JOIN union_positions p "
            "ON p.source_index = r.source_index AND p.j = r.j ORDER BY p.position",
            out_dir,
            {"scratch_glob": str(scratch / "*" / "*.parquet")},
        )
        con.unregister("union_positions")
    return {
        "kept": dict(zip([p.config for p in plans], kept, strict=True)),
        "lost": lost,
        "rows": int(sum(kept)),
    }


def union_rules(spec: UnionSpec) -> list[Rule[int]]:
    """What must hold on a union: its rows (facts: the sum of each source's kept rows),
    positions, each group's filters, and dedup if asked."""
    rules: list[Rule[int]] = [
        Rule(
            "row_count_matches_sources",
            "Rows = the sum of each source's kept rows.",
            row_count_is,
        ),
        Rule(
            "positions_are_a_permutation",
            "position runs 0..n-1, each once.",
            static(
                rows_where(
                    "position IN (SELECT position FROM {table} GROUP BY 1 HAVING count(*) > 1)"
                    " OR position < 0 OR position >= (SELECT count(*) FROM {table})",
                    "position",
                    "position repeated or out of range",
                )
            ),
        ),
    ]
    for group in spec.groups:
        knobs = group.knobs
        terms = []
        if knobs.filter_drop:
            terms.append('"drop"')
        if knobs.filter_duplicate:
            terms.append("duplicate IS NOT NULL")
        if knobs.min_similarity is not None:
            terms.append("similarity < $min_sim")
        if terms:
            params: dict[str, Any] = {"group": group.name}
            if knobs.min_similarity is not None:
                params["min_sim"] = float(knobs.min_similarity)
            rules.append(
                Rule(
                    f"group_{group.name}_filters_hold",
                    f"Group {group.name}: its drop/duplicate/min_similarity "
                    "filters hold on its rows.",
                    static(
                        rows_where(
                            f"source_group = $group AND ({' OR '.join(terms)})",
                            "query_id",
                            f"row of group {group.name} breaks its filter",
                            params,
                        )
                    ),
                )
            )
    if spec.dedup:
        rules.append(
            no_duplicate_pairs_rule(spec.dedup_casefold, "dedup: no normalised pair appears twice.")
        )
    return rules
