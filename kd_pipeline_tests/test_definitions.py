"""The code location loads, and its public names stay what users and schedules rely on.

A snapshot of asset keys, partitions and check names: a rename shows up here as a diff.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.families.lighton import lighton_partitions

CONFIG_NAMES = Path(__file__).with_name("data") / "lighton_configs.txt"


def test_partitions_are_exactly_the_73_upstream_config_names() -> None:
    expected = [line.strip() for line in CONFIG_NAMES.read_text().splitlines() if line.strip()]
    assert len(expected) == 73
    assert lighton_partitions.get_partition_keys() == expected
    assert "fw_edu" not in expected and "fw-edu" in expected  # aliases never become keys


def test_asset_keys_snapshot() -> None:
    keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())
    assert keys == ["lighton/raw", "lighton/recommended", "lighton/similarity_3", "lighton/top35"]


def test_asset_check_snapshot() -> None:
    checks = sorted(
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in defs.resolve_asset_graph().asset_check_keys
    )
    common = ["finite_similarity", "no_null_text_or_score", "not_empty", "schema"]
    recipe = [*common, "no_dropped_rows", "no_duplicate_rows", "row_count_matches_filter"]
    expected = sorted(
        [f"lighton/raw:{c}" for c in [*common, "row_count_matches_upstream"]]
        + [f"lighton/recommended:{c}" for c in recipe]
        + [f"lighton/top35:{c}" for c in [*recipe, "similarity_at_least_threshold"]]
        + [f"lighton/similarity_3:{c}" for c in [*recipe, "similarity_at_least_threshold"]]
    )
    assert checks == expected


def test_every_asset_is_described_grouped_and_partitioned_like_raw() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name == "lighton", key
        assert node.partitions_def == lighton_partitions, key
        assert "dagster/column_schema" in node.metadata, key
    recommended = graph.get(dg.AssetKey(["lighton", "recommended"]))
    assert recommended.parent_keys == {dg.AssetKey(["lighton", "raw"])}


def test_partitioned_job_covers_every_lighton_asset() -> None:
    job = defs.resolve_job_def(LIGHTON_PARTITIONED_JOB)
    assert job.partitions_def == lighton_partitions
    assert len(job.asset_layer.executable_asset_keys) == 4
