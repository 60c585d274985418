"""The code location loads, and its public names stay what users and schedules rely on.

A snapshot of asset keys, partitions and check names: a rename shows up here as a diff.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from kd_pipeline.definitions import LIGHTON_PARTITIONED_JOB, defs
from kd_pipeline.exports.specs import LABEL_MAX
from kd_pipeline.families.lighton import lighton_partitions

CONFIG_NAMES = Path(__file__).with_name("data") / "lighton_configs.txt"


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


def lighton_keys() -> list[str]:
    keys = (k.to_user_string() for k in defs.resolve_all_asset_keys())
    return sorted(k for k in keys if k.startswith("lighton/"))


def test_lighton_asset_keys_snapshot() -> None:
    assert lighton_keys() == sorted(
        [*LIGHTON_PARTITIONED, *LIGHTON_UNPARTITIONED, "lighton/custom"]
    )


def test_asset_check_snapshot() -> None:
    checks = sorted(
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in defs.resolve_asset_graph().asset_check_keys
    )
    common = ["finite_similarity", "no_null_text_or_score", "not_empty", "schema"]
    recipe = [*common, "no_dropped_rows", "no_duplicate_rows", "row_count_matches_filter"]
    expected = sorted(
        [
            f"lighton/raw:{c}"
            for c in [
                *common,
                "row_count_matches_upstream",
                "drop_flag_set",
                "no_unexpected_shrink",
            ]
        ]
        + [f"lighton/recommended:{c}" for c in recipe]
        + [f"lighton/top35:{c}" for c in [*recipe, "similarity_at_least_threshold"]]
        + [f"lighton/similarity_3:{c}" for c in [*recipe, "similarity_at_least_threshold"]]
        + [
            f"lighton/denseon_lateon:{c}"
            for c in [
                *common,
                "row_count_matches_sources",
                "positions_are_a_permutation",
                "group_standard_filters_hold",
            ]
        ]
    )
    assert [c for c in checks if c.startswith("lighton/")] == expected


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


# ---- text, pairwise, listwise and mined families -------------------------------------------
TEXT_KEYS = [
    "text/fiqa/corpus",
    "text/fiqa/qrels_train",
    "text/fiqa/queries",
    "text/msmarco_passage/collection",
    "text/msmarco_passage/qrels_train",
    "text/msmarco_passage/queries_train",
]
FAMILY_KEYS = ["fiqa/mined_scores", "hofstaetter/teacher_scores", "rank_distillm/runs"]
TEXT_CHECKS = [
    "ids_present",
    "no_malformed_lines",
    "no_null_values",
    "not_empty",
    "schema",
    "unique_ids",
]
LISTWISE_CHECKS = [
    "every_query_has_positive",
    "finite_scores",
    "ids_present",
    "ids_resolve_to_texts",
    "not_empty",
    "ranks_contiguous",
    "schema",
    "scores_follow_ranks",
    "unique_candidates",
]
PAIRWISE_CHECKS = [
    "finite_scores",
    "ids_present",
    "ids_resolve_to_texts",
    "no_malformed_lines",
    "not_empty",
    "schema",
]


def test_family_asset_keys_partitions_and_jobs_snapshot() -> None:
    keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())
    families = [k for k in keys if k.split("/")[0] not in ("lighton", "exports")]
    assert families == sorted(TEXT_KEYS + FAMILY_KEYS)
    graph = defs.resolve_asset_graph()

    def partitions(key: str) -> list[str] | None:
        node = graph.get(dg.AssetKey.from_user_string(key))
        return node.partitions_def.get_partition_keys() if node.partitions_def else None

    assert partitions("hofstaetter/teacher_scores") == ["bert", "ensemble"]
    assert partitions("rank_distillm/runs") == [
        "msmarco.bm25.annotated",
        "msmarco.colbertv2.annotated",
        "rankzephyr.bm25_10000.sampled100",
        "rankzephyr.colbert10000.sampled100",
        "rankzephyr.colbert10000.sampled50",
        "rankzephyr.colbert10000.sampled10",
    ]
    assert all(partitions(k) is None for k in [*TEXT_KEYS, "fiqa/mined_scores"])
    jobs = {
        "text_collections": TEXT_KEYS,
        "hofstaetter_teacher_scores": ["hofstaetter/teacher_scores"],
        "rank_distillm_runs": ["rank_distillm/runs"],
        "fiqa_mined": ["fiqa/mined_scores", *(k for k in TEXT_KEYS if k.startswith("text/fiqa"))],
    }
    for name, selected in jobs.items():
        executable = defs.resolve_job_def(name).asset_layer.executable_asset_keys
        assert sorted(k.to_user_string() for k in executable) == sorted(selected), name


def test_family_asset_check_snapshot() -> None:
    checks = sorted(
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in defs.resolve_asset_graph().asset_check_keys
        if k.asset_key.path[0] not in ("lighton", "exports")
    )
    shrink = "no_unexpected_shrink"  # every asset read from upstream files has the guard
    expected = sorted(
        [f"{key}:{c}" for key in TEXT_KEYS for c in [*TEXT_CHECKS, shrink]]
        + [f"hofstaetter/teacher_scores:{c}" for c in [*PAIRWISE_CHECKS, shrink]]
        + [f"rank_distillm/runs:{c}" for c in [*LISTWISE_CHECKS, "no_malformed_lines", shrink]]
        + [
            f"fiqa/mined_scores:{c}"
            for c in [*LISTWISE_CHECKS, "known_labels", "lists_aligned", shrink]
        ]
    )
    assert checks == expected


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
SPLADE_CHECKS = [
    "has_training_queries",
    "id_map_ids_unique",
    "id_map_upstream_unique",
    "ids_unique",
    "positive_docs_in_doc_master",
    "positive_pairs_scored",
    "positive_qids_in_query_master",
    "queries_have_negative",
    "queries_have_positive",
    "queries_have_positive_list",
    "queries_have_score_row",
    "rows_well_formed",
]
EXPORT_CHECKS = {
    "splade": SPLADE_CHECKS,
    "splade_triplets": [
        "every_anchor_sampled",
        "finite_scores",
        "not_empty",
        "schema",
        "texts_present",
    ],
    "margin_mse": ["finite_margins", "not_empty", "one_list_length", "schema", "texts_present"],
    "pylate_kd": [
        "finite_scores",
        "ids_have_texts",
        "lists_aligned",
        "not_empty",
        "one_list_length",
        "schema",
    ],
    "lightning_ir": [
        "file_name_names_collection",
        "finite_scores",
        "not_empty",
        "ranks_contiguous",
        "schema",
        "unique_candidates",
    ],
    "tevatron": [
        "every_line_has_negative",
        "every_line_has_positive",
        "not_empty",
        "passages_complete",
    ],
    "pointwise": [
        "every_row_exported",
        "finite_scores",
        "not_empty",
        "rows_in_source_order",
        "schema",
        "texts_present",
    ],
}
# every export, whatever its format: no query in two splits (the source's split honoured)
SHARED_EXPORT_CHECKS = ["one_split_per_query"]


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


def test_export_check_snapshot() -> None:
    found = sorted(
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in defs.resolve_asset_graph().asset_check_keys
        if k.asset_key.path[0] == "exports"
    )
    expected = sorted(
        f"{key}:{check}"
        for key in EXPORTS
        for check in [*EXPORT_CHECKS[key.split("/")[1]], *SHARED_EXPORT_CHECKS]
    )
    assert found == expected
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
