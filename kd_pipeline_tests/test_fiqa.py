"""FiQA mined reranker scores: file discovery, the explode into the listwise table, the
licence carried into lineage, the Hub path, and malformed upstream rows refused."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd_pipeline.definitions import defs
from kd_pipeline.families.fiqa import FIQA_JOB, MINED_KEY, PREPARE_IDS, resolve_mined_files
from kd_pipeline.families.text import FIQA_CORPUS_KEY, FIQA_QUERIES_KEY, TEXT_JOB
from kd_pipeline.families.upstream import FIQA_LABELS, FIQA_MINED_LICENCE, FIQA_MINED_REPO_ID
from kd_pipeline.fetch import FetchError, sample_mirror
from kd_pipeline.lake import Lake
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.family_runs import checks, materialized, run_job, stand_in_mirror
from kd_pipeline_tests.helpers import failures
from kd_pipeline_tests.hub_server import HubServer

CARD = """---
license: cc-by-nc-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
"""
PARQUET = "data/train-00000-of-00001.parquet"


@pytest.mark.parametrize(
    ("card", "files", "expected"),
    [
        (CARD, [PARQUET, "data/test-00000-of-00001.parquet", "README.md"], [PARQUET]),
        (None, [PARQUET, "data/test-00000-of-00001.parquet"], [PARQUET]),
        (None, ["train.parquet", "README.md"], ["train.parquet"]),
        (
            None,
            ["default/train/0000.parquet", "default/test/0000.parquet"],
            ["default/train/0000.parquet"],
        ),
        ("# no front matter", ["scores.parquet"], ["scores.parquet"]),
    ],
)
def test_resolve_mined_files(card, files, expected) -> None:
    assert resolve_mined_files(card, files) == expected


def test_resolve_mined_files_names_the_repo_when_nothing_fits() -> None:
    with pytest.raises(FetchError, match=f"{FIQA_MINED_REPO_ID}: no parquet file of the train"):
        resolve_mined_files(None, ["data/test.parquet", "README.md"])


def test_mined_scores_on_the_sample(lake_dir: Path) -> None:
    result = run_job(FIQA_JOB)
    assert result.success, failures(result)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    glob = Lake(lake_dir).parquet_glob(MINED_KEY.path)
    per_query = duckdb.execute(
        "SELECT count(*), list(rank ORDER BY rank) = range(1, 17), "
        "count(*) FILTER (is_positive), count(*) FILTER (label = 'positive'), "
        "list(score ORDER BY rank) = list_reverse_sort(list(score)) "
        "FROM read_parquet($g) GROUP BY query_id",
        {"g": glob},
    ).fetchall()
    assert len(per_query) == 40
    assert set(per_query) == {(16, True, 1, 1, True)}
    labels = dict(
        duckdb.execute(
            "SELECT label, count(*) FROM read_parquet($g) GROUP BY label", {"g": glob}
        ).fetchall()
    )
    assert labels == {"positive": 40, **dict.fromkeys(FIQA_LABELS[1:], 200)}

    meta = materialized(result, MINED_KEY)
    assert meta["licence"] == FIQA_MINED_LICENCE == "non-commercial (see dataset card)"
    assert meta["card_license"] == "cc-by-nc-4.0"  # the sample card's, as LightOn records it
    assert "card_license_name" not in meta and "card_licence" not in meta
    assert meta["unresolved_ids"].startswith("ids without a text: 1 of 640 rows")
    assert meta["files"] == [PARQUET] and meta["revision"].startswith("mirror-")
    assert Lake(lake_dir).manifest(MINED_KEY.path)["lineage"]["licence"] == FIQA_MINED_LICENCE
    node = defs.resolve_asset_graph().get(MINED_KEY)
    assert node.metadata["licence"] == FIQA_MINED_LICENCE
    assert node.parent_keys == {FIQA_CORPUS_KEY, FIQA_QUERIES_KEY}
    assert PREPARE_IDS == {"com.github.stefan-jo.fiqa.mined-reranker-scores": (MINED_KEY, None)}


@pytest.mark.usefixtures("hf_env")
def test_mined_scores_from_the_hub_pin_the_revision(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_job(TEXT_JOB, selection=[FIQA_CORPUS_KEY, FIQA_QUERIES_KEY]).success
    with HubServer(sample_mirror()) as hub:
        point_pipeline_at_hub(monkeypatch, hub.endpoint)
        result = run_job(FIQA_JOB, selection=[MINED_KEY])
        assert result.success, failures(result)
        meta = materialized(result, MINED_KEY)
        assert meta["source"] == "hub" and meta["revision"] == hub.revision(FIQA_MINED_REPO_ID)
        assert meta["dagster/row_count"] == 640


def test_card_licence_other_name_and_link_are_recorded(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card with `license: other` names its terms in license_name / license_link: all
    three reach the metadata and the manifest's lineage (the fields LightOn records)."""
    mirror = stand_in_mirror(tmp_path / "mirror")
    card = mirror / "hf" / "datasets" / FIQA_MINED_REPO_ID / "README.md"
    card.write_text(
        CARD.replace(
            "license: cc-by-nc-4.0\n",
            "license: other\nlicense_name: fiqa-2018-non-commercial\n"
            "license_link: https://example.org/fiqa-terms\n",
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = run_job(FIQA_JOB)
    assert result.success, failures(result)
    expected = {
        "card_license": "other",
        "card_license_name": "fiqa-2018-non-commercial",
        "card_license_link": "https://example.org/fiqa-terms",
    }
    meta = materialized(result, MINED_KEY)
    assert {k: meta[k] for k in expected} == expected
    lineage = Lake(lake_dir).manifest(MINED_KEY.path)["lineage"]
    assert {k: v for k, v in lineage.items() if k.startswith("card_")} == expected
    # every declared check of the asset is evaluated (the shrink guard among them)
    declared = {s.name for s in defs.resolve_assets_def(MINED_KEY).check_specs}
    assert "no_unexpected_shrink" in declared
    assert {n for k, n in checks(result) if k == MINED_KEY.to_user_string()} == declared


def _rewrite(mirror: Path, table: pa.Table) -> None:
    pq.write_table(table, mirror / "hf" / "datasets" / FIQA_MINED_REPO_ID / PARQUET)


def test_malformed_upstream_rows_are_refused(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    assert run_job(FIQA_JOB).success
    good = Lake(lake_dir).manifest(MINED_KEY.path)["version"]
    table = pq.read_table(mirror / "hf" / "datasets" / FIQA_MINED_REPO_ID / PARQUET)

    scores = table["scores"].to_pylist()
    scores[2] = scores[2][:-1]  # one score short
    _rewrite(mirror, table.set_column(2, "scores", pa.array(scores, table.schema.field(2).type)))
    result = run_job(FIQA_JOB, selection=[MINED_KEY])
    assert not result.success
    aligned = checks(result)[(MINED_KEY.to_user_string(), "lists_aligned")]
    assert not aligned.passed and aligned.metadata["violations"].value == 1
    assert aligned.metadata["first_offenders"].value.endswith("position 16")

    _rewrite(mirror, table.drop_columns(["labels"]))
    result = run_job(FIQA_JOB, selection=[MINED_KEY])
    assert not result.success
    assert "train-00000-of-00001.parquet: column 'labels' is missing" in failures(result)
    assert Lake(lake_dir).manifest(MINED_KEY.path)["version"] == good
