"""Filter recipes: apply_filter against a plain-Python reference, spec validation, output rules.

The reference below is written from the UPSTREAM semantics in the filters.py docstring, not
from its SQL: eligible rows pass filter_drop/filter_duplicate; t is the similarity at
position max(1, floor(n*p)) of the eligible similarities sorted descending, with p the
decimal the user wrote; rows with similarity >= t are kept (ties kept); min_similarity is
applied after t is found.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_pipeline.checks.rules import RuleOutcome, Table, evaluate_rules
from kd_pipeline.recipes.filters import (
    FilterFacts,
    FilterKnobs,
    FilterResult,
    SpecError,
    apply_filter,
    recipe_rules,
)
from kd_pipeline.recipes.specs import FILTER_SPEC_FILE, load_filter_specs

SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("similarity", pa.float64()),
        pa.field("drop", pa.bool_()),
        pa.field("duplicate", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Row:
    query_id: str
    similarity: float
    drop: bool = False
    duplicate: int | None = None


@dataclass(frozen=True)
class Expected:
    kept: list[Row]
    threshold: float | None
    eligible: int
    counts: dict[str, int]


# ---- the reference ------------------------------------------------------------------------
def reference_filter(
    rows: Sequence[Row],
    *,
    filter_drop: bool = True,
    filter_duplicate: bool = True,
    p: str | None = None,
    min_similarity: float | None = None,
) -> Expected:
    """The UPSTREAM semantics on a Python list; p is the decimal as the user wrote it."""
    after_drop = [r for r in rows if not (filter_drop and r.drop)]
    eligible = [r for r in after_drop if not (filter_duplicate and r.duplicate is not None)]
    threshold: float | None = None
    if p is None:
        after_top = eligible
    elif not eligible:
        after_top = []
    else:
        ranked = sorted((r.similarity for r in eligible), reverse=True)
        position = max(1, math.floor(Decimal(p) * len(eligible)))
        threshold = ranked[position - 1]
        after_top = [r for r in eligible if r.similarity >= threshold]
    if min_similarity is None:
        kept = after_top
    else:
        kept = [r for r in after_top if r.similarity >= min_similarity]
    counts = {
        "rows_in": len(rows),
        "removed_by_drop": len(rows) - len(after_drop),
        "removed_by_duplicate": len(after_drop) - len(eligible),
        "removed_by_top_percentile": len(eligible) - len(after_top),
        "removed_by_min_similarity": len(after_top) - len(kept),
        "rows_out": len(kept),
    }
    return Expected(kept, threshold, len(eligible), counts)


# ---- running apply_filter on real files ---------------------------------------------------
def write_input(path: Path, rows: Sequence[Row]) -> Path:
    columns = list(zip(*(astuple(r) for r in rows), strict=True)) or [[], [], [], []]
    pq.write_table(pa.Table.from_arrays([pa.array(c) for c in columns], schema=SCHEMA), path)
    return path


def run_filter(folder: Path, rows: Sequence[Row], knobs: FilterKnobs):
    """apply_filter on a Parquet file of rows; returns the result, the rows written (in
    order) and the output's column types."""
    source = write_input(folder / "in.parquet", rows)
    out_dir = folder / "out"
    with duckdb.connect() as con:
        result = apply_filter(
            con, Table("read_parquet($src)", {"src": str(source)}), knobs, out_dir
        )
        glob = str(out_dir / "*.parquet")
        out = con.execute(
            'SELECT query_id, similarity, "drop", duplicate FROM read_parquet(?)', [glob]
        ).fetchall()
        types = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [glob]).fetchall()
    return result, [Row(*r) for r in out], [(t[0], t[1]) for t in types]


def knobs_for(
    filter_drop: bool = True,
    filter_duplicate: bool = True,
    p: str | None = None,
    min_similarity: float | None = None,
) -> FilterKnobs:
    return FilterKnobs(
        filter_drop=filter_drop,
        filter_duplicate=filter_duplicate,
        min_similarity=min_similarity,
        top_percentile=None if p is None else float(p),
    )


def check_against_reference(folder: Path, rows: Sequence[Row], **knobs) -> FilterResult:
    expected = reference_filter(rows, **knobs)
    result, out, types = run_filter(folder, rows, knobs_for(**knobs))
    assert out == expected.kept  # same rows, same values, source order
    assert result.threshold == expected.threshold
    assert result.eligible_rows == expected.eligible
    assert result.counts == expected.counts
    assert types == [
        ("query_id", "VARCHAR"),
        ("similarity", "DOUBLE"),
        ("drop", "BOOLEAN"),
        ("duplicate", "BIGINT"),
    ]
    return result


def mixed_rows(n: int = 60, seed: int = 7) -> list[Row]:
    """Rounded scores (so ties), some dropped, some duplicates (0 among the pointers)."""
    rng = random.Random(seed)
    return [
        Row(
            f"q{i:04d}",
            round(rng.uniform(-1, 5) * 2) / 2,
            rng.random() < 0.25,
            rng.choice([0, 1, 5]) if rng.random() < 0.2 else None,
        )
        for i in range(n)
    ]


# ---- apply_filter: tricky cases -----------------------------------------------------------
@pytest.mark.parametrize("p", ["0.01", "0.5", "1"])
@pytest.mark.parametrize("min_similarity", [None, 2.5, 2.6])
def test_all_similarities_tied_keeps_every_eligible_row(
    tmp_path: Path, p: str, min_similarity: float | None
):
    rows = [Row(f"q{i}", 2.5, drop=i % 4 == 0) for i in range(20)]
    result = check_against_reference(tmp_path, rows, p=p, min_similarity=min_similarity)
    assert result.threshold == 2.5
    assert result.counts["removed_by_top_percentile"] == 0
    assert result.counts["rows_out"] == (15 if min_similarity != 2.6 else 0)


@pytest.mark.parametrize("p", ["1", "1.0"])
def test_p_one_keeps_all_eligible_rows_and_threshold_is_their_minimum(tmp_path: Path, p: str):
    rows = mixed_rows()
    result = check_against_reference(tmp_path, rows, p=p)
    eligible = [r for r in rows if not r.drop and r.duplicate is None]
    assert result.threshold == min(r.similarity for r in eligible)
    assert result.counts["rows_out"] == len(eligible)


@pytest.mark.parametrize("p", [None, "0.5"])
@pytest.mark.parametrize("min_similarity", [None, 1.0])
def test_empty_input_gives_an_empty_output_with_the_same_schema(
    tmp_path: Path, p: str | None, min_similarity: float | None
):
    result = check_against_reference(tmp_path, [], p=p, min_similarity=min_similarity)
    assert result.threshold is None
    assert result.counts == dict.fromkeys(result.counts, 0)
    assert list((tmp_path / "out").glob("*.parquet"))  # a file to read, not a missing glob


@pytest.mark.parametrize("p", [None, "0.3", "1"])
@pytest.mark.parametrize("min_similarity", [None, -10.0])
def test_every_row_filtered_out_gives_no_threshold_and_no_rows(
    tmp_path: Path, p: str | None, min_similarity: float | None
):
    rows = [
        Row(f"q{i}", float(i), drop=i % 2 == 0, duplicate=None if i % 2 == 0 else 3)
        for i in range(10)
    ]
    result = check_against_reference(tmp_path, rows, p=p, min_similarity=min_similarity)
    assert result.threshold is None
    assert result.eligible_rows == 0
    assert result.counts["removed_by_drop"] == 5
    assert result.counts["removed_by_duplicate"] == 5
    assert result.counts["rows_out"] == 0


@pytest.mark.parametrize("filter_duplicate", [True, False])
def test_duplicate_zero_counts_as_a_duplicate(tmp_path: Path, filter_duplicate: bool):
    rows = [Row("orig", 1.0), Row("dup0", 2.0, duplicate=0), Row("dup3", 3.0, duplicate=3)]
    result = check_against_reference(tmp_path, rows, filter_duplicate=filter_duplicate, p="1")
    if filter_duplicate:
        assert result.counts["removed_by_duplicate"] == 2
        assert result.threshold == 1.0
    else:
        assert result.counts["rows_out"] == 3


@pytest.mark.parametrize("p", ["0.1", "0.35", "0.5"])
def test_threshold_is_taken_over_eligible_rows_not_all_rows(tmp_path: Path, p: str):
    """A filter-heavy partition: half the rows are dropped and they score higher. A
    threshold estimated over every row (as a reservoir over the raw table would) is wrong."""
    rng = random.Random(11)
    rows = []
    for i in range(400):
        dropped = rng.random() < 0.5
        score = rng.uniform(5, 10) if dropped else rng.uniform(0, 6)
        rows.append(Row(f"q{i:04d}", round(score, 1), drop=dropped))
    result = check_against_reference(tmp_path, rows, p=p)

    eligible = [r.similarity for r in rows if not r.drop]
    n, t = len(eligible), result.threshold
    assert 150 < n < 250
    k = math.floor(Decimal(p) * n)
    kept = result.counts["rows_out"]
    assert kept >= k
    assert kept == sum(s >= t for s in eligible)
    assert kept - k <= sum(s == t for s in eligible)  # only ties at t exceed k
    assert abs(kept / n - float(p)) < 0.02

    naive = sorted((r.similarity for r in rows), reverse=True)[
        max(1, math.floor(Decimal(p) * len(rows))) - 1
    ]
    assert naive > t
    assert sum(s >= naive for s in eligible) < k


@pytest.mark.parametrize(("p", "n", "k"), [("0.29", 100, 29), ("0.57", 100, 57), ("0.58", 100, 58)])
def test_p_is_the_decimal_written_not_its_binary_float(tmp_path: Path, p: str, n: int, k: int):
    assert math.floor(float(p) * n) == k - 1  # the float product would lose a row
    rows = [Row(f"q{i:03d}", float(i)) for i in range(n)]
    result = check_against_reference(tmp_path, rows, p=p)
    assert result.counts["rows_out"] == k
    assert result.threshold == float(n - k)


def test_min_similarity_is_applied_after_the_threshold(tmp_path: Path):
    rows = [Row(f"q{i:02d}", float(i)) for i in range(1, 11)]
    # t over all ten eligible rows is 6; min_similarity then keeps 8, 9, 10. (Applied first,
    # it would leave {8, 9, 10} and a top 50% of those: only 10.)
    result = check_against_reference(tmp_path, rows, p="0.5", min_similarity=8.0)
    assert result.threshold == 6.0
    assert result.counts["removed_by_top_percentile"] == 5
    assert result.counts["removed_by_min_similarity"] == 2
    assert result.counts["rows_out"] == 3
    # below the threshold, min_similarity removes nothing more
    (tmp_path / "low").mkdir()
    result = check_against_reference(tmp_path / "low", rows, p="0.5", min_similarity=3.0)
    assert result.counts["removed_by_min_similarity"] == 0


def test_min_similarity_alone(tmp_path: Path):
    result = check_against_reference(tmp_path, mixed_rows(), min_similarity=2.0)
    assert result.threshold is None
    assert result.counts["removed_by_top_percentile"] == 0
    assert result.counts["removed_by_min_similarity"] > 0


@pytest.mark.parametrize("filter_drop", [True, False])
@pytest.mark.parametrize("filter_duplicate", [True, False])
@pytest.mark.parametrize(("p", "min_similarity"), [(None, None), ("0.4", None), ("0.25", 1.5)])
def test_filter_flag_combinations_match_the_reference(
    tmp_path: Path,
    filter_drop: bool,
    filter_duplicate: bool,
    p: str | None,
    min_similarity: float | None,
):
    rows = mixed_rows()
    result = check_against_reference(
        tmp_path,
        rows,
        filter_drop=filter_drop,
        filter_duplicate=filter_duplicate,
        p=p,
        min_similarity=min_similarity,
    )
    assert (result.counts["removed_by_drop"] > 0) == filter_drop
    assert (result.counts["removed_by_duplicate"] > 0) == filter_duplicate


_row = st.tuples(
    st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.25]),
    st.booleans(),
    st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(_row, max_size=40),
    filter_drop=st.booleans(),
    filter_duplicate=st.booleans(),
    p=st.one_of(
        st.none(), st.integers(min_value=1, max_value=1000).map(lambda i: f"{i / 1000:.3f}")
    ),
    min_similarity=st.one_of(st.none(), st.sampled_from([-1.0, 0.5, 0.75, 2.0, 4.0])),
)
def test_apply_filter_matches_the_reference_on_random_tables(
    rows, filter_drop, filter_duplicate, p, min_similarity
):
    table = [Row(f"q{i:03d}", s, d, dup) for i, (s, d, dup) in enumerate(rows)]
    with tempfile.TemporaryDirectory() as folder:
        check_against_reference(
            Path(folder),
            table,
            filter_drop=filter_drop,
            filter_duplicate=filter_duplicate,
            p=p,
            min_similarity=min_similarity,
        )


# ---- knob validation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "knobs",
    [
        {"top_percentile": 0},
        {"top_percentile": 0.0},
        {"top_percentile": -0.5},
        {"top_percentile": 1.0000001},
        {"top_percentile": 35},
        {"top_percentile": math.nan},
        {"top_percentile": math.inf},
        {"top_percentile": True},
        {"top_percentile": "0.5"},
        {"top_percentile": Decimal("0.5")},
        {"min_similarity": math.nan},
        {"min_similarity": math.inf},
        {"min_similarity": -math.inf},
        {"min_similarity": True},
        {"min_similarity": "3"},
        pytest.param({"min_similarity": 10**400}, id="min_similarity_10**400"),
        {"filter_drop": "yes"},
        {"filter_drop": 1},
        {"filter_drop": None},
        {"filter_duplicate": 0},
        {"filter_duplicate": "false"},
    ],
    ids=repr,
)
def test_filter_knobs_reject_invalid_values(knobs: dict):
    with pytest.raises(SpecError, match=next(iter(knobs))):
        FilterKnobs(**knobs)


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"top_percentile": 1},
        {"top_percentile": 1.0},
        {"top_percentile": 1e-9},
        {"min_similarity": -5},
        {"min_similarity": 0.0, "top_percentile": 0.35},
        {"filter_drop": False, "filter_duplicate": False},
    ],
    ids=repr,
)
def test_filter_knobs_accept_valid_values(knobs: dict):
    assert FilterKnobs(**knobs).as_dict() == {
        "filter_drop": True,
        "filter_duplicate": True,
        "min_similarity": None,
        "top_percentile": None,
        "dedup": False,
        "dedup_casefold": False,
        **knobs,
    }


# ---- spec files ---------------------------------------------------------------------------
def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "filters.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_filter_specs_reads_names_descriptions_and_knobs(tmp_path: Path):
    path = spec_file(
        tmp_path,
        "plain:\n"
        "top20:\n  description: Top fifth.\n  top_percentile: 0.2\n  min_similarity: 1\n"
        "everything:\n  filter_drop: false\n  filter_duplicate: false\n",
    )
    specs = {s.name: s for s in load_filter_specs(path)}
    assert list(specs) == ["plain", "top20", "everything"]
    assert specs["plain"].description == "plain"
    assert specs["plain"].knobs == FilterKnobs()
    assert specs["top20"].description == "Top fifth."
    assert specs["top20"].knobs == FilterKnobs(top_percentile=0.2, min_similarity=1)
    assert specs["everything"].knobs == FilterKnobs(filter_drop=False, filter_duplicate=False)


def test_unknown_knob_is_named_with_the_file_the_recipe_and_the_allowed_knobs(tmp_path: Path):
    path = spec_file(tmp_path, "ok:\n  top_percentile: 0.5\nmine:\n  top_percentil: 0.3\n")
    with pytest.raises(SpecError) as error:
        load_filter_specs(path)
    message = str(error.value)
    assert str(path) in message
    assert "'mine'" in message
    assert "top_percentil'" in message
    for knob in (
        "description",
        "filter_drop",
        "filter_duplicate",
        "min_similarity",
        "top_percentile",
    ):
        assert knob in message


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "35%", "true", ".nan", "'0.5'", "null_"])
def test_bad_top_percentile_fails_at_load_naming_the_recipe(tmp_path: Path, value: str):
    path = spec_file(tmp_path, f"good:\n  top_percentile: 0.5\nbad_p:\n  top_percentile: {value}\n")
    with pytest.raises(SpecError, match="top_percentile") as error:
        load_filter_specs(path)
    assert str(path) in str(error.value)
    assert "'bad_p'" in str(error.value)


@pytest.mark.parametrize("name", ["raw", "custom"])
def test_reserved_names_are_refused(tmp_path: Path, name: str):
    with pytest.raises(SpecError, match="reserved") as error:
        load_filter_specs(spec_file(tmp_path, f"{name}:\n  top_percentile: 0.5\n"))
    assert f"'{name}'" in str(error.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", ".hidden", "a b"])
def test_unsafe_recipe_names_are_refused(tmp_path: Path, name: str):
    with pytest.raises(SpecError, match="not a safe name") as error:
        load_filter_specs(spec_file(tmp_path, f'"{name}":\n  top_percentile: 0.5\n'))
    assert repr(name) in str(error.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of recipe name"),
        ("r: 3\n", "expected a mapping"),
    ],
)
def test_malformed_spec_files_are_refused_naming_the_file(tmp_path: Path, text: str, match: str):
    path = spec_file(tmp_path, text)
    with pytest.raises(SpecError, match=match) as error:
        load_filter_specs(path)
    assert str(path) in str(error.value)


def test_shipped_spec_file_loads_and_has_the_recommended_subset():
    specs = {s.name: s for s in load_filter_specs()}
    assert load_filter_specs(FILTER_SPEC_FILE) == list(specs.values())
    recommended = specs["recommended"].knobs
    assert recommended.filter_drop is True
    assert recommended.filter_duplicate is True
    assert recommended.top_percentile is None
    assert recommended.min_similarity is None


# ---- recipe_rules: the checks on a recipe's output ----------------------------------------
def outcomes(
    folder: Path, rows: Sequence[Row], knobs: FilterKnobs, threshold: float | None, expected: int
) -> dict[str, RuleOutcome]:
    path = write_input(folder / "output.parquet", rows)
    with duckdb.connect() as con:
        results = evaluate_rules(
            con,
            recipe_rules(knobs),
            Table("read_parquet($g)", {"g": str(path)}),
            FilterFacts(threshold, expected),
        )
    return {o.rule: o for o in results}


GOOD_OUTPUT = [Row("q1", 2.0), Row("q2", 3.5), Row("q3", 2.0)]
STRICT = FilterKnobs(top_percentile=0.5, min_similarity=1.0)
ALL_RULES = [
    "no_dropped_rows",
    "no_duplicate_rows",
    "similarity_at_least_threshold",
    "row_count_matches_filter",
]


def test_rules_pass_on_a_correct_output(tmp_path: Path):
    result = outcomes(tmp_path, GOOD_OUTPUT, STRICT, 2.0, 3)
    assert list(result) == ALL_RULES
    assert all(o.passed and o.violations == 0 for o in result.values())


@pytest.mark.parametrize(
    ("bad_row", "knobs", "threshold", "broken"),
    [
        (Row("bad", 9.0, drop=True), STRICT, 2.0, "no_dropped_rows"),
        (Row("bad", 9.0, duplicate=0), STRICT, 2.0, "no_duplicate_rows"),
        (Row("bad", 9.0, duplicate=12), STRICT, 2.0, "no_duplicate_rows"),
        (Row("bad", 1.999), STRICT, 2.0, "similarity_at_least_threshold"),
        # min_similarity above the threshold is the floor that counts
        (
            Row("bad", 1.5),
            FilterKnobs(top_percentile=0.5, min_similarity=2.0),
            1.0,
            "similarity_at_least_threshold",
        ),
        (Row("bad", -1.0), FilterKnobs(min_similarity=0.0), None, "similarity_at_least_threshold"),
    ],
)
def test_each_rule_catches_its_violation_and_names_the_row(
    tmp_path: Path, bad_row: Row, knobs: FilterKnobs, threshold: float | None, broken: str
):
    rows = [*GOOD_OUTPUT, bad_row]
    result = outcomes(tmp_path, rows, knobs, threshold, len(rows))
    assert not result[broken].passed
    assert result[broken].violations == 1
    assert result[broken].examples == ("bad",)
    assert "bad" in result[broken].message()
    assert all(o.passed for name, o in result.items() if name != broken)


@pytest.mark.parametrize("expected", [2, 4, 0])
def test_row_count_rule_catches_a_mismatch(tmp_path: Path, expected: int):
    result = outcomes(tmp_path, GOOD_OUTPUT, STRICT, 2.0, expected)
    count = result["row_count_matches_filter"]
    assert not count.passed
    assert count.violations == abs(3 - expected)
    assert f"3 rows, expected {expected}" in count.message()


def test_rules_follow_the_knobs(tmp_path: Path):
    lax = FilterKnobs(filter_drop=False, filter_duplicate=False)
    rows = [*GOOD_OUTPUT, Row("d", -3.0, drop=True, duplicate=0)]
    result = outcomes(tmp_path, rows, lax, None, 4)
    assert list(result) == ["row_count_matches_filter"]
    assert result["row_count_matches_filter"].passed


def test_apply_filter_output_passes_its_rules_and_the_input_does_not(tmp_path: Path):
    rows = mixed_rows(200)
    knobs = knobs_for(p="0.3", min_similarity=1.0)
    result, _, _ = run_filter(tmp_path, rows, knobs)
    rules = recipe_rules(knobs)
    facts = FilterFacts(result.threshold, result.counts["rows_out"])
    with duckdb.connect() as con:
        on_output = evaluate_rules(
            con,
            rules,
            Table("read_parquet($g)", {"g": str(tmp_path / "out" / "*.parquet")}),
            facts,
        )
        on_input = evaluate_rules(
            con, rules, Table("read_parquet($g)", {"g": str(tmp_path / "in.parquet")}), facts
        )
    assert all(o.passed for o in on_output), [o.message() for o in on_output]
    assert not any(o.passed for o in on_input)
