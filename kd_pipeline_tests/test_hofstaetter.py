"""Hofstaetter teacher scores: both partitions on the sample, the TSV read with explicit
columns, bad lines reported by file and line, md5 verification, the unresolved-id limit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kd_pipeline.families.hofstaetter import (
    HOFSTAETTER_JOB,
    PREPARE_IDS,
    TEACHER_SCORES_KEY,
    hofstaetter_partitions,
)
from kd_pipeline.families.text import MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY, TEXT_JOB
from kd_pipeline.families.upstream import (
    HOFSTAETTER_FILES,
    HOFSTAETTER_RECORD,
    RANK_DISTILLM_RECORD,
    RUN_TAG,
    STAND_IN_CHECKSUMS,
    UPSTREAM_REVISION_TAG,
    ZENODO_RECORD_TAG,
    tagged_zenodo_md5,
)
from kd_pipeline.fetch import FetchError, file_md5, sample_mirror
from kd_pipeline.lake import Lake
from kd_pipeline_tests.family_runs import (
    checks,
    edit_lines,
    materialized,
    redeclare,
    rows,
    run_job,
    stand_in_mirror,
    url_path,
)
from kd_pipeline_tests.helpers import failures
from kd_pipeline_tests.hub_server import HubServer

TEXTS = [MSMARCO_COLLECTION_KEY, MSMARCO_QUERIES_TRAIN_KEY]
BERT = HOFSTAETTER_FILES["bert"]
ENSEMBLE = HOFSTAETTER_FILES["ensemble"]
RESOLVE = (TEACHER_SCORES_KEY.to_user_string(), "ids_resolve_to_texts")


def _texts() -> None:
    result = run_job(TEXT_JOB, selection=TEXTS)
    assert result.success, failures(result)


def test_prepare_ids_name_real_partitions() -> None:
    assert PREPARE_IDS == {
        "com.github.hofstaetter.distillation.msmarco.bert.teacher": (TEACHER_SCORES_KEY, "bert"),
        "com.github.hofstaetter.distillation.msmarco.ensemble.teacher": (
            TEACHER_SCORES_KEY,
            "ensemble",
        ),
    }
    assert hofstaetter_partitions.get_partition_keys() == ["bert", "ensemble"]


def test_texts_come_first(lake_dir: Path) -> None:
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert not result.success
    assert "text/msmarco_passage/queries_train is not published yet" in failures(result)


def test_both_teachers_on_the_sample(lake_dir: Path) -> None:
    _texts()
    for variant in ("bert", "ensemble"):
        result = run_job(HOFSTAETTER_JOB, variant)
        assert result.success, failures(result)
        assert all(e.passed for e in result.get_asset_check_evaluations())
        resolve = checks(result)[RESOLVE]
        assert resolve.metadata["violations"].value == 2  # the sample's two missing passages
        assert resolve.metadata["first_offenders"].value == "neg_id=8841823, neg_id=8841823"
        meta = materialized(result, TEACHER_SCORES_KEY)
        assert meta["dagster/row_count"] == 300 and meta["malformed_lines"] == 0
        assert meta["unresolved_ids"].startswith("ids without a text: 2 of 300 rows (0.667%")
        assert meta["checksum_source"].startswith("stand-in mirror")
        assert meta["texts"].keys() == {k.to_user_string() for k in TEXTS}
        published = rows(lake_dir, TEACHER_SCORES_KEY, variant)
        assert len(published) == 300
        assert all(r[5] == pytest.approx(r[3] - r[4]) for r in published)
        assert all(isinstance(r[0], str) and r[0].isdigit() for r in published)
    bert = rows(lake_dir, TEACHER_SCORES_KEY, "bert", "pos_score")
    ensemble = rows(lake_dir, TEACHER_SCORES_KEY, "ensemble", "pos_score")
    assert bert != ensemble  # two teachers, two partitions
    assert Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["lineage"]["md5"]


def test_bad_lines_are_reported_by_line_and_keep_the_published_version(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    _texts()
    tsv = url_path(mirror, BERT.url)

    # whitespace other than one tab between fields is still a row (ids and scores have none):
    # padding around the tabs, and spaces instead of tabs (re-split on any whitespace)
    def respace(lines: list[str]) -> list[str]:
        lines[8] = " " + lines[8].replace("\t", " \t ") + " "
        lines[9] = lines[9].replace("\t", "  ")
        return lines

    edit_lines(tsv, respace)
    redeclare(mirror)
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert result.success, failures(result)
    meta = materialized(result, TEACHER_SCORES_KEY)
    assert (meta["recovered_lines"], meta["dagster/row_count"]) == (1, 300)
    ids = rows(lake_dir, TEACHER_SCORES_KEY, "bert", "query_id || pos_id || neg_id")
    assert all(i.isdigit() for (i,) in ids)
    good = Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"]

    def damage(lines: list[str]) -> list[str]:
        lines[2] = lines[2].rsplit("\t", 1)[0]  # a short line
        fields = lines[6].split("\t")
        lines[6] = "\t".join([fields[0], "high", *fields[2:]])  # text in a score column
        return lines

    edit_lines(tsv, damage)
    redeclare(mirror)
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert not result.success
    message = failures(result)
    assert f"{BERT.file}:3: Expected Number of Columns: 5 Found: 4" in message
    assert f'{BERT.file}:7: Error when converting column "neg_score"' in message
    failed = checks(result)[(TEACHER_SCORES_KEY.to_user_string(), "no_malformed_lines")]
    assert not failed.passed and failed.metadata["violations"].value == 2
    assert Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"] == good


def test_crlf_lines_load_and_a_nul_block_line_blocks_the_publish(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 2 and issue 13 item 1 through the asset: a TSV with CRLF on every line
    but the last publishes all 300 rows; a line holding a 40 MiB block of NUL bytes (a
    crash-zeroed region) is a named reject that blocks the publish, not a vanished row."""
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    _texts()
    tsv = url_path(mirror, BERT.url)
    original = tsv.read_bytes().rstrip(b"\n").split(b"\n")
    tsv.write_bytes(b"\r\n".join(original))
    redeclare(mirror)
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert result.success, failures(result)
    meta = materialized(result, TEACHER_SCORES_KEY)
    assert (meta["dagster/row_count"], meta["malformed_lines"]) == (300, 0)
    good = Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"]

    zeroed = original[100].split(b"\t")
    zeroed[3] = zeroed[3] + b"\0" * (40 << 20)
    tsv.write_bytes(b"\n".join([*original[:100], b"\t".join(zeroed), *original[101:]]) + b"\n")
    redeclare(mirror)
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert not result.success
    failed = checks(result)[(TEACHER_SCORES_KEY.to_user_string(), "no_malformed_lines")]
    assert not failed.passed and failed.metadata["violations"].value == 1
    assert f"{BERT.file}:101: line of 41,943," in failures(result)
    assert Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"] == good


def test_md5_is_verified_against_upstream_off_the_sample(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network (here an HTTP mirror) and a mirror without a stand-in declaration are
    checked against the real md5: the sample's bytes fail it and nothing is published."""
    _texts()
    assert run_job(HOFSTAETTER_JOB, "bert").success  # sample mode: the declared md5
    good = Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"]

    with HubServer(sample_mirror()) as server, monkeypatch.context() as env:
        env.setenv("KD_PIPELINE_SOURCE", "hub")
        env.setenv("KD_PIPELINE_HTTP_MIRROR", server.endpoint + "/url")
        result = run_job(HOFSTAETTER_JOB, "bert")
        assert not result.success
        assert f"md5 mismatch (expected {BERT.md5}" in failures(result)
        assert any(BERT.file in path for _, path, _ in server.requests)
        ensemble = run_job(HOFSTAETTER_JOB, "ensemble")
        assert not ensemble.success
    assert Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "bert")["version"] == good
    assert not Lake(lake_dir).is_published(TEACHER_SCORES_KEY.path, "ensemble")

    mirror = stand_in_mirror(tmp_path / "mirror")
    (mirror / STAND_IN_CHECKSUMS).unlink()  # a plain mirror: upstream md5s apply
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = run_job(HOFSTAETTER_JOB, "bert")
    assert not result.success and f"expected {BERT.md5}" in failures(result)


def test_unresolved_ids_above_the_threshold_block_publish(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = stand_in_mirror(tmp_path / "mirror")
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    _texts()
    tsv = url_path(mirror, HOFSTAETTER_FILES["ensemble"].url)
    edit_lines(
        tsv, lambda lines: [line + "999" if i % 30 == 0 else line for i, line in enumerate(lines)]
    )  # 10 of 300 negative ids (3.3%) no longer in the collection
    redeclare(mirror)
    result = run_job(HOFSTAETTER_JOB, "ensemble")
    assert not result.success
    failed = checks(result)[RESOLVE]
    assert not failed.passed and failed.metadata["violations"].value == 12
    assert "12 of 300 rows (4.000%; blocking above 1.0%)" in failures(result)
    assert not Lake(lake_dir).is_published(TEACHER_SCORES_KEY.path, "ensemble")


def test_a_run_tagged_with_a_new_md5_publishes_the_changed_file(
    lake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run tagged `kd-pipeline/upstream_revision=md5:<hex>` (by the Zenodo sensor, or
    launched by hand) expects that md5 instead of the pinned one: the changed file is a new
    download even with the old one cached, and is published and recorded; a wrong md5 fails
    naming file, expected and actual md5 and leaves the published partition alone."""
    _texts()
    served = tmp_path / "served"
    shutil.copytree(sample_mirror() / "url" / "zenodo.org", served / "url" / "zenodo.org")
    tsv = url_path(served, ENSEMBLE.url)
    monkeypatch.setenv("KD_PIPELINE_SOURCE", "hub")
    with HubServer(served) as server:
        monkeypatch.setenv("KD_PIPELINE_HTTP_MIRROR", server.endpoint + "/url")
        old_md5 = file_md5(tsv)
        old = run_job(HOFSTAETTER_JOB, "ensemble", tags={UPSTREAM_REVISION_TAG: f"md5:{old_md5}"})
        assert old.success, failures(old)  # the old bytes, now in the download cache

        edit_lines(tsv, lambda lines: lines[:-10])  # upstream publishes a new version
        new_md5 = file_md5(tsv)
        server.requests.clear()
        tags = {UPSTREAM_REVISION_TAG: f"md5:{new_md5}", ZENODO_RECORD_TAG: HOFSTAETTER_RECORD}
        new = run_job(HOFSTAETTER_JOB, "ensemble", tags=tags)
        assert new.success, failures(new)
        assert any(ENSEMBLE.file in path for _, path, _ in server.requests)  # fetched anew
        meta = materialized(new, TEACHER_SCORES_KEY)
        assert (meta["md5"], meta["checksum_source"]) == (new_md5, RUN_TAG)
        assert meta["pinned_md5"] == ENSEMBLE.md5
        assert meta["dagster/row_count"] == 290
        assert len(rows(lake_dir, TEACHER_SCORES_KEY, "ensemble")) == 290
        published = Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "ensemble")
        assert published["lineage"]["md5"] == new_md5

        wrong = "0" * 32
        failed = run_job(HOFSTAETTER_JOB, "ensemble", tags={UPSTREAM_REVISION_TAG: f"md5:{wrong}"})
        assert not failed.success
        message = failures(failed)
        assert f"{ENSEMBLE.file}: md5 mismatch (expected {wrong}, got {new_md5})" in message
        assert f"(expected md5 source: {RUN_TAG})" in message
        untagged = run_job(HOFSTAETTER_JOB, "ensemble")  # no tag: the pinned md5, as before
        assert not untagged.success
        assert f"expected {ENSEMBLE.md5}, got {new_md5}" in failures(untagged)
    assert Lake(lake_dir).manifest(TEACHER_SCORES_KEY.path, "ensemble") == published
    assert len(rows(lake_dir, TEACHER_SCORES_KEY, "ensemble")) == 290


def test_the_run_tag_must_be_a_zenodo_md5_for_this_files_record() -> None:
    md5 = "A2575AF08A19B47C2041E67C9EFCD917"
    assert tagged_zenodo_md5(BERT, {}) is None
    assert tagged_zenodo_md5(BERT, {UPSTREAM_REVISION_TAG: f"md5:{md5}"}) == md5.lower()
    tags = {UPSTREAM_REVISION_TAG: f"md5:{md5}", ZENODO_RECORD_TAG: HOFSTAETTER_RECORD}
    assert tagged_zenodo_md5(BERT, tags) == md5.lower()
    with pytest.raises(FetchError, match=f"{BERT.file}: run tag .* is not a Zenodo checksum"):
        tagged_zenodo_md5(BERT, {UPSTREAM_REVISION_TAG: "0123abc" * 5 + "01234"})  # a Hub sha
    with pytest.raises(FetchError, match="is not a Zenodo checksum"):
        tagged_zenodo_md5(BERT, {UPSTREAM_REVISION_TAG: "md5:../../etc"})
    with pytest.raises(FetchError, match=f"zenodo_record={RANK_DISTILLM_RECORD}, but"):
        tagged_zenodo_md5(BERT, {**tags, ZENODO_RECORD_TAG: RANK_DISTILLM_RECORD})
