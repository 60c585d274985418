"""The code location loads, and its public names stay what users and schedules rely on.

`test_definitions_snapshot`: every asset key (with its parents), partition set, check name,
job, schedule and sensor, compared by syrupy with the committed
`__snapshots__/test_definitions/test_definitions_snapshot.json`; a rename shows up as a
diff. After an intended change: `pytest kd_pipeline_tests/test_definitions.py
--snapshot-update`, and review the diff of the snapshot file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.exports.specs import LABEL_MAX
from kd_pipeline.families.lighton import lighton_partitions

CONFIG_NAMES = Path(__file__).with_name("data") / "lighton_configs.txt"


def describe(definitions: dg.Definitions) -> dict[str, Any]:
    """The public names of a code location, as plain data: each asset's parents and check
    names, each distinct partition set with its keys and assets, each job's assets, each
    schedule's and sensor's target jobs."""
    graph = definitions.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for check in graph.asset_check_keys:
        spec = graph.get_check_spec(check)
        level = "blocking" if spec.blocking else "warning"
        checks.setdefault(check.asset_key.to_user_string(), []).append(
            f"{check.name} ({level}): {spec.description}"
        )
    assets: dict[str, Any] = {}
    partition_sets: list[dict[str, Any]] = []
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        name = key.to_user_string()
        assets[name] = {
            "parents": sorted(k.to_user_string() for k in node.parent_keys),
            "checks": sorted(checks.get(name, [])),
        }
        if node.partitions_def is None:
            continue
        keys = node.partitions_def.get_partition_keys()
        found = next((p for p in partition_sets if p["keys"] == keys), None)
        if found is None:
            found = {"keys": keys, "assets": []}
            partition_sets.append(found)
        found["assets"].append(name)
    jobs = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__"):  # Dagster's implicit job of all assets
            continue
        selected = job.asset_layer.executable_asset_keys
        jobs[job.name] = sorted(k.to_user_string() for k in selected)
    return {
        "assets": assets,
        "partition_sets": partition_sets,
        "jobs": jobs,
        "schedules": {s.name: s.job_name for s in definitions.schedules or []},
        "sensors": {
            s.name: sorted(t.job_name for t in s.targets) for s in definitions.sensors or []
        },
    }


@pytest.fixture
def definitions_snapshot(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


def test_definitions_snapshot(definitions_snapshot) -> None:
    assert describe(defs) == definitions_snapshot


def renamed_asset(definitions: dg.Definitions, old: str, new: str) -> dg.Definitions:
    """A copy of the code location with one asset key renamed (its checks follow it)."""
    old_key, new_key = dg.AssetKey.from_user_string(old), dg.AssetKey.from_user_string(new)
    assets = [
        a.with_attributes(asset_key_replacements={old_key: new_key})
        if isinstance(a, dg.AssetsDefinition) and old_key in a.keys
        else a
        for a in definitions.assets or []
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=definitions.asset_checks,
        jobs=definitions.jobs,
        schedules=definitions.schedules,
        sensors=definitions.sensors,
        resources=definitions.resources,
    )


def test_a_renamed_asset_key_fails_the_snapshot() -> None:
    """What the snapshot test compares, for a copy with `lighton/custom` renamed: syrupy's
    serialisation of it differs from the committed file exactly at the old and new keys."""
    committed = (
        Path(__file__).parent
        / "__snapshots__"
        / "test_definitions"
        / "test_definitions_snapshot.json"
    ).read_text()
    serialize = JSONSnapshotExtension().serialize
    assert serialize(describe(defs)) == committed
    renamed = serialize(describe(renamed_asset(defs, "lighton/custom", "lighton/custom_v2")))
    assert renamed != committed
    gone = set(committed.splitlines()) - set(renamed.splitlines())
    added = set(renamed.splitlines()) - set(committed.splitlines())
    assert any('"lighton/custom"' in line for line in gone), gone
    assert any('"lighton/custom_v2"' in line for line in added), added


def test_partitions_are_exactly_the_73_upstream_config_names() -> None:
    expected = [line.strip() for line in CONFIG_NAMES.read_text().splitlines() if line.strip()]
    assert len(expected) == 73
    assert lighton_partitions.get_partition_keys() == expected
    assert "fw_edu" not in expected and "fw-edu" in expected  # aliases never become keys


LIGHTON_PARTITIONED = [
    "lighton/raw",
    "lighton/recommended",
    "lighton/similarity_3",
    "lighton/top35",
]
LIGHTON_UNPARTITIONED = ["lighton/custom_union", "lighton/denseon_lateon"]


def test_every_asset_is_described_grouped_and_has_a_column_schema() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name == key.path[0] or node.group_name == "text", key
        assert node.owners and node.kinds, key
        assert "dagster/column_schema" in node.metadata, key
    for name in [*LIGHTON_PARTITIONED, "lighton/custom"]:
        assert graph.get(dg.AssetKey.from_user_string(name)).partitions_def == lighton_partitions
    for name in LIGHTON_UNPARTITIONED:
        assert graph.get(dg.AssetKey.from_user_string(name)).partitions_def is None
    recommended = graph.get(dg.AssetKey(["lighton", "recommended"]))
    assert recommended.parent_keys == {dg.AssetKey(["lighton", "raw"])}


def test_partitioned_job_covers_every_lighton_asset() -> None:
    job = defs.resolve_job_def(LIGHTON_PARTITIONED_JOB)
    assert job.partitions_def == lighton_partitions
    assert sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys) == (
        LIGHTON_PARTITIONED
    )


def test_union_depends_on_exactly_its_configs() -> None:
    graph = defs.resolve_asset_graph()
    union = graph.get(dg.AssetKey(["lighton", "denseon_lateon"]))
    assert union.parent_keys == {dg.AssetKey(["lighton", "raw"])}
    mapping = union.partition_mappings[dg.AssetKey(["lighton", "raw"])]
    assert sorted(mapping.partition_keys) == sorted(lighton_partitions.get_partition_keys())


# ---- exports -------------------------------------------------------------------------------
MSMARCO_TEXTS = ["text/msmarco_passage/collection", "text/msmarco_passage/queries_train"]
FIQA_TEXTS = ["text/fiqa/corpus", "text/fiqa/queries"]
# key -> (source asset, text collections)
EXPORTS = {
    "exports/splade/splade_hofstaetter": ("hofstaetter/teacher_scores", MSMARCO_TEXTS),
    "exports/splade/splade_rank_distillm": ("rank_distillm/runs", MSMARCO_TEXTS),
    "exports/splade/splade_fiqa": ("fiqa/mined_scores", FIQA_TEXTS),
    "exports/splade_triplets/splade_triplets_hofstaetter": (
        "hofstaetter/teacher_scores",
        MSMARCO_TEXTS,
    ),
    "exports/splade_triplets/splade_triplets_hofstaetter_pos": (
        "hofstaetter/teacher_scores",
        MSMARCO_TEXTS,
    ),
    "exports/margin_mse/margin_mse_hofstaetter": ("hofstaetter/teacher_scores", MSMARCO_TEXTS),
    "exports/margin_mse/margin_mse_rank_distillm": ("rank_distillm/runs", MSMARCO_TEXTS),
    "exports/margin_mse/margin_mse_fiqa": ("fiqa/mined_scores", FIQA_TEXTS),
    "exports/pylate_kd/pylate_kd_rank_distillm": ("rank_distillm/runs", MSMARCO_TEXTS),
    "exports/pylate_kd/pylate_kd_fiqa": ("fiqa/mined_scores", FIQA_TEXTS),
    "exports/lightning_ir/lightning_ir_hofstaetter": ("hofstaetter/teacher_scores", MSMARCO_TEXTS),
    "exports/lightning_ir/lightning_ir_rank_distillm": ("rank_distillm/runs", MSMARCO_TEXTS),
    "exports/lightning_ir/lightning_ir_fiqa": ("fiqa/mined_scores", FIQA_TEXTS),
    "exports/tevatron/tevatron_fiqa": ("fiqa/mined_scores", FIQA_TEXTS),
    "exports/tevatron/tevatron_hofstaetter": ("hofstaetter/teacher_scores", MSMARCO_TEXTS),
    "exports/pointwise/pointwise_lighton_recommended": ("lighton/recommended", []),
    "exports/pointwise/pointwise_denseon_lateon": ("lighton/denseon_lateon", []),
}


def test_export_keys_lineage_partitions_and_policies_snapshot() -> None:
    keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())
    assert [k for k in keys if k.startswith("exports/")] == sorted(EXPORTS)
    graph = defs.resolve_asset_graph()
    for name, (source, texts) in EXPORTS.items():
        node = graph.get(dg.AssetKey.from_user_string(name))
        parents = {k.to_user_string() for k in node.parent_keys}
        assert parents == {source, *texts}, name  # family (or recipe) -> export, texts -> export
        source_node = graph.get(dg.AssetKey.from_user_string(source))
        assert node.partitions_def == source_node.partitions_def, name
        assert node.group_name == "exports" and node.kinds, name
        assert node.automation_condition is not None, name
        policy = node.freshness_policy
        assert (policy.fail_window.to_timedelta().days, policy.warn_window.to_timedelta().days) == (
            8,
            7,
        ), name
    lighton = graph.get(
        dg.AssetKey.from_user_string("exports/pointwise/pointwise_lighton_recommended")
    )
    assert lighton.partitions_def == lighton_partitions


def test_splade_export_checks_block_on_training_rules_only() -> None:
    splade = defs.resolve_assets_def(
        dg.AssetKey.from_user_string("exports/splade/splade_hofstaetter")
    )
    blocking = {spec.name: spec.blocking for spec in splade.check_specs}
    assert blocking["queries_have_negative"] and not blocking["ids_unique"]


def test_export_jobs_cover_each_sources_exports() -> None:
    jobs: dict[str, list[str]] = {}
    for name, (source, _) in EXPORTS.items():
        jobs.setdefault("exports_" + source.replace("/", "_"), []).append(name)
    for job, selected in jobs.items():
        executable = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        assert sorted(k.to_user_string() for k in executable) == sorted(selected), job


def ui_node_label(key: dg.AssetKey) -> str:
    """What the Dagster UI (dagster-webserver 1.13, `AssetNameRow` in the asset graph)
    writes on a node: the key's last part (middle-truncated past 31 characters,
    `ASSET_NODE_NAME_MAX_LENGTH`; the callers assert labels fit, so no truncation is
    modelled). A model of the UI, not a reading of it: that the installed bundle still
    labels nodes this way is checked by
    test_the_ui_bundle_still_labels_nodes_by_the_last_key_part."""
    return key.path[-1]


def test_every_export_node_label_says_format_and_source() -> None:
    """The lineage graph shows only the last key part: for every export it names the
    format and the source, fits without truncation, and no two nodes share it."""
    graph = defs.resolve_asset_graph()
    labels = {}
    for name, (source, _) in EXPORTS.items():
        key = dg.AssetKey.from_user_string(name)
        label = ui_node_label(key)
        fmt = key.path[1]
        source_part = (
            source.split("/")[0] if source.split("/")[0] != "lighton" else source.split("/")[1]
        )
        assert label.startswith(fmt + "_") and source_part in label, (name, label)
        assert len(label) <= LABEL_MAX, (name, len(label))
        assert graph.get(key).group_name == "exports"
        labels[name] = label
    everything = [ui_node_label(k) for k in defs.resolve_all_asset_keys()]
    assert all(everything.count(label) == 1 for label in labels.values())
    assert LABEL_MAX == 31


def test_the_ui_bundle_still_labels_nodes_by_the_last_key_part() -> None:
    """The premise of the label rule, checked against the installed UI: its asset node
    takes `assetKey.path[assetKey.path.length - 1]` and truncates it at 31 characters."""
    import dagster_webserver

    sources = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "_next"
    maps = [p.read_text(errors="replace") for p in sources.rglob("*.js.map")]
    assert any("ASSET_NODE_NAME_MAX_LENGTH = 31" in text for text in maps)
    assert any(
        "const AssetNameRow" in text
        and "definition.assetKey.path[definition.assetKey.path.length - 1]" in text
        for text in maps
    )


def test_the_definitions_load_after_a_dagster_instance_was_entered_and_dropped(
    tmp_path,
) -> None:
    """An instance entered (`DagsterInstance.__enter__`, what `with` and ExitStacks do) sets
    its defs-state storage in the thread's context; when the instance is collected in
    another context (another thread's garbage collection, an async task), Dagster cannot
    reset it there, and the storage outlives its instance. Loading the definitions then
    still works: it failed in CI with "Attempted to resolve undefined DagsterInstance
    weakref" inside Dagster's folder loader."""
    import contextvars
    import gc

    from dagster._core.storage.defs_state.base import DefsStateStorage

    from kd_pipeline.definitions import build_definitions

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def scenario() -> None:
        instance = dg.DagsterInstance.from_config(str(tmp_path))
        instance.__enter__()
        instance.cycle = instance  # freed by the cycle collector, as a real instance can be
        del instance
        contextvars.copy_context().run(gc.collect)  # which runs in another context
        assert DefsStateStorage.get() is not None  # the dead instance's storage, still set
        build_definitions().resolve_job_def("lighton_partitions")

    gc.disable()  # the instance must be collected where the scenario says, not before
    try:
        contextvars.copy_context().run(scenario)  # leaves this test's own context clean
    finally:
        gc.enable()
