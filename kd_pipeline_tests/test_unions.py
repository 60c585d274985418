"""Union recipes, dedup and `prepare`, on the sample and on purpose-built data.

The expensive part (73 raw partitions and the DenseON-LateON union, through the real CLI)
runs once per module into a shared lake; the tests read it back and compare with a plain
Python reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kd_pipeline.checks.rules import Table
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS
from kd_pipeline.lake import Lake
from kd_pipeline.recipes.filters import FilterKnobs
from kd_pipeline.recipes.specs import load_union_specs
from kd_pipeline.recipes.unions import (
    UnionGroup,
    UnionSpec,
    build_union,
    interleave_labels,
    plan_sources,
)
from kd_pipeline_tests.test_filters import Row, reference_filter

ROOT = Path(__file__).resolve().parent.parent
UNION = ("lighton", "denseon_lateon")


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kd_pipeline.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The DenseON-LateON union prepared from the CLI over all 73 sample partitions."""
    root = tmp_path_factory.mktemp("union")
    env = {
        **os.environ,
        "KD_PIPELINE_LAKE": str(root / "lake"),
        "DAGSTER_HOME": str(root / "dagster"),
    }
    (root / "dagster").mkdir()
    proc = cli(["prepare", "ai.lighton.embeddings_pre_training.denseon_lateon"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"env": env, "lake": Lake(root / "lake"), "stdout": proc.stdout, "root": root}


def raw_rows(lake: Lake, config: str) -> list[Row]:
    table = pq.read_table(lake.published_path(("lighton", "raw"), config))
    return [
        Row(r["query_id"], r["similarity"], r["drop"], r["duplicate"])
        for r in table.select(["query_id", "similarity", "drop", "duplicate"]).to_pylist()
    ]


def test_denseon_lateon_groups_match_a_plain_reference(shared: dict) -> None:
    lake: Lake = shared["lake"]
    assert shared["stdout"].strip().splitlines()[-1] == str(lake.published_path(UNION))
    expected: dict[str, int] = {}
    for config in LIGHTON_CONFIGS:
        rows = raw_rows(lake, config)
        if config == "fw-edu":
            kept = reference_filter(rows, filter_drop=False, filter_duplicate=False, p="0.35")
        elif config.startswith("wikipedia_hlp_"):
            kept = reference_filter(rows, filter_drop=False, filter_duplicate=False)
        else:
            kept = reference_filter(rows, min_similarity=3.0)
        expected[config] = len(kept.kept)
    actual = dict(
        duckdb.execute(
            "SELECT source_config, count(*) FROM read_parquet($g) GROUP BY 1",
            {"g": lake.parquet_glob(UNION)},
        ).fetchall()
    )
    assert {c: n for c, n in expected.items() if n} == actual
    manifest = lake.manifest(UNION)
    assert manifest["rows_per_group"]["fw-edu"] == expected["fw-edu"]
    assert manifest["rows_per_group"]["standard"] == sum(
        n
        for c, n in expected.items()
        if c not in ("fw-edu", "wikipedia_hlp_cm", "wikipedia_hlp_dl")
    )


def test_unseeded_union_is_the_concatenation_in_spec_order(shared: dict) -> None:
    lake: Lake = shared["lake"]
    rows = duckdb.execute(
        "SELECT source_config, position FROM read_parquet($g) ORDER BY position",
        {"g": lake.parquet_glob(UNION)},
    ).fetchall()
    assert [p for _, p in rows] == list(range(len(rows)))
    order = [
        c for c in LIGHTON_CONFIGS if c not in ("fw-edu", "wikipedia_hlp_cm", "wikipedia_hlp_dl")
    ]
    order += ["fw-edu", "wikipedia_hlp_cm", "wikipedia_hlp_dl"]
    seen = list(dict.fromkeys(c for c, _ in rows))
    assert seen == [c for c in order if c in seen]


def _build(lake: Lake, spec: UnionSpec, out: Path) -> dict:
    globs = {c: lake.parquet_glob(("lighton", "raw"), c) for c in spec.configs()}
    con = duckdb.connect()
    plans = plan_sources(con, spec, globs)
    out.mkdir(parents=True)
    (out.parent / f"{out.name}-scratch").mkdir()
    return build_union(con, spec, plans, out, out.parent / f"{out.name}-scratch")


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted(folder.glob("*.parquet")):
        digest.update(part.read_bytes())
    return digest.hexdigest()


def test_seeded_interleave_is_deterministic_and_differs_across_seeds(shared, tmp_path) -> None:
    base = load_union_specs()[0]
    lake: Lake = shared["lake"]

    def seeded(seed: int, mixing: str = "uniform") -> UnionSpec:
        return UnionSpec(base.name, base.description, base.groups, seed=seed, mixing=mixing)

    _build(lake, seeded(42), tmp_path / "a")
    _build(lake, seeded(42), tmp_path / "b")
    _build(lake, seeded(43), tmp_path / "c")
    _build(lake, seeded(42, "proportional"), tmp_path / "d")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "d")

    def rows(folder: str) -> list[tuple]:
        return duckdb.execute(
            "SELECT source_config, query_id, doc_id, similarity, position FROM read_parquet($g) "
            "ORDER BY position",
            {"g": str(tmp_path / folder / "*.parquet")},
        ).fetchall()

    unseeded = duckdb.execute(
        "SELECT source_config, query_id, doc_id, similarity FROM read_parquet($g)",
        {"g": lake.parquet_glob(UNION)},
    ).fetchall()
    interleaved = rows("a")
    assert sorted(r[:4] for r in interleaved) == sorted(unseeded)  # same rows, new order
    assert [r[4] for r in interleaved] == list(range(len(interleaved)))
    assert [r[0] for r in interleaved] != [r[0] for r in sorted(interleaved, key=lambda r: r[0])]


@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
    mixing=st.sampled_from(["uniform", "proportional"]),
)
@settings(max_examples=80, deadline=None)
def test_interleave_labels_use_every_row_once_and_are_deterministic(counts, seed, mixing) -> None:
    labels = interleave_labels(counts, seed, mixing)
    assert np.bincount(labels, minlength=len(counts)).tolist() == counts
    assert np.array_equal(labels, interleave_labels(counts, seed, mixing))


def test_uniform_mixing_picks_sources_uniformly_until_exhausted() -> None:
    """With sources of 10 and 10,000 rows, uniform picking exhausts the small source early
    (about 20 picks), proportional spreads it over the whole run."""
    uniform = interleave_labels([10, 10_000], 1, "uniform")
    proportional = interleave_labels([10, 10_000], 1, "proportional")
    assert np.flatnonzero(uniform == 0).max() < 200
    assert np.flatnonzero(proportional == 0).max() > 2_000


def _write_raw(lake: Lake, config: str, rows: list[dict], *more_parts: list[dict]) -> None:
    """Publish a raw partition: rows as part-0.parquet, each of more_parts as part-N, written
    last to first (file order is the names' order, not the order of writing)."""
    parts = [rows, *more_parts]
    with lake.stage(("lighton", "raw"), config) as staged:
        for number in reversed(range(len(parts))):
            con = duckdb.connect()
            con.execute("CREATE TABLE t (query VARCHAR, document VARCHAR, similarity DOUBLE)")
            con.executemany(
                "INSERT INTO t VALUES (?, ?, ?)", [(r["q"], r["d"], r["s"]) for r in parts[number]]
            )
            target = staged.path / f"part-{number}.parquet"
            con.execute(
                "COPY (SELECT md5(query) query_id, md5(document) doc_id, query, document, "
                'similarity, false AS "drop", CAST(NULL AS BIGINT) duplicate, '
                f"CAST(NULL AS BIGINT) \"index\" FROM t) TO '{target}'"
            )
        lake.publish(staged, {"rows": sum(len(p) for p in parts)})


@pytest.mark.parametrize("casefold", [False, True])
def test_dedup_keeps_highest_similarity_then_first_source(lake_dir, tmp_path, casefold) -> None:
    lake = Lake(lake_dir)
    _write_raw(
        lake,
        "agnews",
        [
            {"q": "what is kd", "d": "knowledge  distillation", "s": 2.0},
            {"q": "unique a", "d": "doc a", "s": 1.0},
            {"q": "tie", "d": "same score", "s": 3.0},
        ],
    )
    _write_raw(
        lake,
        "altlex",
        [
            {"q": " what is kd", "d": "knowledge distillation\n", "s": 4.0},  # whitespace variant
            {"q": "Tie", "d": "same score", "s": 3.0},  # a copy only when case is folded
            {
                "q": "tie",
                "d": "same score",
                "s": 3.0,
            },  # an exact copy, same score: first source wins
            {"q": "cafe\u0301", "d": "nfc", "s": 1.0},
        ],
    )
    _write_raw(lake, "npr", [{"q": "caf\u00e9", "d": "nfc", "s": 0.5}])  # NFC-equal to altlex's
    no_filter = FilterKnobs(filter_drop=False, filter_duplicate=False)
    spec = UnionSpec(
        "u",
        "u",
        (UnionGroup("g1", ("agnews",), no_filter), UnionGroup("g2", ("altlex", "npr"), no_filter)),
        dedup=True,
        dedup_casefold=casefold,
    )
    built = _build(lake, spec, tmp_path / "out")
    kept = duckdb.execute(
        "SELECT source_config, query, similarity FROM read_parquet($g) ORDER BY position",
        {"g": str(tmp_path / "out" / "*.parquet")},
    ).fetchall()
    assert ("altlex", " what is kd", 4.0) in kept  # highest similarity wins across sources
    assert not any(q == "what is kd" for _, q, _ in kept)
    assert ("agnews", "tie", 3.0) in kept and ("altlex", "tie", 3.0) not in kept
    assert (("altlex", "Tie", 3.0) in kept) is not casefold
    assert ("altlex", "cafe\u0301", 1.0) in kept and not any(c == "npr" for c, _, _ in kept)
    lost = built["lost"]
    assert lost["agnews"] == {"altlex": 1}
    assert lost["altlex"] == {"agnews": 2 if casefold else 1}
    assert lost["npr"] == {"altlex": 1}
    assert built["rows"] == len(kept)


def test_filter_dedup_within_a_partition(lake_dir, tmp_path) -> None:
    from kd_pipeline.recipes.filters import apply_filter

    lake = Lake(lake_dir)
    _write_raw(
        lake,
        "agnews",
        [
            {"q": "a", "d": "x", "s": 1.0},
            {"q": "a ", "d": "x", "s": 2.0},
            {"q": "b", "d": "y", "s": 1.0},
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    result = apply_filter(
        duckdb.connect(),
        Table.parquet(lake.parquet_glob(("lighton", "raw"), "agnews")),
        FilterKnobs(dedup=True),
        out,
    )
    assert result.counts["removed_by_dedup"] == 1 and result.counts["rows_out"] == 2
    assert sorted(
        duckdb.execute(
            "SELECT query, similarity FROM read_parquet($g)", {"g": str(out / "*.parquet")}
        ).fetchall()
    ) == [("a ", 2.0), ("b", 1.0)]


def test_dedup_ties_keep_the_first_file_then_the_first_row(lake_dir, tmp_path) -> None:
    from kd_pipeline.recipes.filters import apply_filter

    lake = Lake(lake_dir)
    _write_raw(
        lake,
        "agnews",
        [{"q": "other", "d": "y", "s": 1.0}, {"q": "a", "d": "x", "s": 2.0}],  # part-0
        [{"q": "a ", "d": "x", "s": 2.0}, {"q": " a", "d": "x", "s": 2.0}],  # part-1
    )
    out = tmp_path / "out"
    out.mkdir()
    apply_filter(
        duckdb.connect(),
        Table.parquet(lake.parquet_glob(("lighton", "raw"), "agnews")),
        FilterKnobs(dedup=True),
        out,
    )
    kept = duckdb.execute(
        "SELECT query FROM read_parquet($g)", {"g": str(out / "*.parquet")}
    ).fetchall()
    assert sorted(kept) == [("a",), ("other",)]  # part-0's row 1 beats part-1's row 0


def test_prepare_reuses_what_is_published(shared: dict) -> None:
    env = shared["env"]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs_before = len(instance.get_runs())
    assert runs_before == 74  # 73 raw partitions, then the union
    again = cli(["prepare", "ai.lighton.embeddings_pre_training.denseon_lateon[seed=null]"], env)
    assert again.returncode == 0 and "already published" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == shared["stdout"].strip().splitlines()[-1]
    recommended = cli(["prepare", "ai.lighton.embeddings_pre_training[name=agnews]"], env)
    assert recommended.returncode == 0, recommended.stderr
    assert "/data/lighton/recommended/partition=agnews/" in recommended.stdout.strip()
    variant = cli(
        ["prepare", "ai.lighton.embeddings_pre_training[name=agnews,top_percentile=0.5]"], env
    )
    other = cli(
        ["prepare", "ai.lighton.embeddings_pre_training[name=agnews,top_percentile=0.25]"], env
    )
    paths = {variant.stdout.strip().splitlines()[-1], other.stdout.strip().splitlines()[-1]}
    assert len(paths) == 2 and all("/data/lighton/custom_v_" in p for p in paths)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert len(instance.get_runs()) == runs_before + 3  # nothing redone, raw reused


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("ai.lighton.nope", "unknown dataset id 'ai.lighton.nope'; known ids: "),
        (
            "ai.lighton.embeddings_pre_training[name=quora,colour=red]",
            "unknown key 'colour'; allowed: name=",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=quora,top_percentile=1.5]",
            "top_percentile='1.5': must be in (0, 1]",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=quora,filter_drop=maybe]",
            "expected true/yes/1 or false/no/0",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=nowhere]",
            "name='nowhere': not a known value; expected one of the configs",
        ),
        (
            "ai.lighton.embeddings_pre_training[filter_drop=true]",
            "name=<one of the 73 configs `kd-pipeline ids --names` lists> "
            "or an alias <fw_edu = fw-edu",
        ),
        ("ai.lighton.embeddings_pre_training[name=quora", "expected [key=value,...]"),
        (
            "ai.lighton.embeddings_pre_training[name]",
            "item 1 ('name') is not of the form key=value",
        ),
        (
            "ai.lighton.embeddings_pre_training.denseon_lateon[mixing=random]",
            "expected one of uniform, proportional",
        ),
        ("ai.lighton.embeddings_pre_training.denseon_lateon[seed=1.5]", "expected an integer"),
        ("ai.lighton.embeddings_pre_training[name=quora,name=npr]", "given twice"),
    ],
)
def test_selector_errors_are_clear(selector: str, message: str) -> None:
    from kd_pipeline.prepare import resolve
    from kd_pipeline.selectors import SelectorError

    with pytest.raises(SelectorError) as caught:
        resolve(selector)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("selector", "key", "partition"),
    [
        ("ai.lighton.embeddings_pre_training[name=agnews]", "lighton/recommended", "agnews"),
        (
            "ai.lighton.embeddings_pre_training[name=fw_edu,filter_drop=no,filter_duplicate=0]",
            "lighton/raw",
            "fw-edu",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=npr,top_percentile=0.35]",
            "lighton/top35",
            "npr",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=npr,min_similarity=3]",
            "lighton/similarity_3",
            "npr",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=npr,min_similarity=none]",
            "lighton/recommended",
            "npr",
        ),
        (
            "ai.lighton.embeddings_pre_training.denseon_lateon[seed=42]",
            "lighton/custom_union",
            None,
        ),
    ],
)
def test_selectors_resolve_to_spec_assets_when_the_knobs_match(selector, key, partition) -> None:
    from kd_pipeline.prepare import resolve

    target = resolve(selector)
    assert target.asset_key.to_user_string() == key and target.partition == partition


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_selector_parser_only_raises_its_own_error(text: str) -> None:
    from kd_pipeline.prepare import resolve
    from kd_pipeline.selectors import SelectorError

    with contextlib.suppress(SelectorError):
        resolve(text)


def test_union_lineage_is_visible_through_graphql(shared: dict) -> None:
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    query = """
    query {
      assetNodeOrError(assetKey: {path: ["lighton", "denseon_lateon"]}) {
        ... on AssetNode {
          dependencyKeys { path }
          dependencies { asset { assetKey { path } partitionKeys } partitionMapping { className } }
        }
      }
    }
    """
    home = shared["env"]["DAGSTER_HOME"]
    with (
        dg.DagsterInstance.from_config(home) as instance,
        define_out_of_process_context(str(ROOT / "workspace.yaml"), None, instance) as ctx,
    ):
        result = execute_dagster_graphql(ctx, query)
    node = result.data["assetNodeOrError"]
    assert node["dependencyKeys"] == [{"path": ["lighton", "raw"]}]
    dep = node["dependencies"][0]
    assert dep["partitionMapping"]["className"] == "SpecificPartitionsPartitionMapping"
    assert sorted(dep["asset"]["partitionKeys"]) == sorted(LIGHTON_CONFIGS)
