"""Hostile values and secrets: nothing escapes its root, nothing reaches SQL as text,
and a token never shows up in logs, metadata or errors."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from huggingface_hub import constants

from kd_pipeline.fetch import sample_mirror
from kd_pipeline.lake import Lake
from kd_pipeline_tests.conftest import point_pipeline_at_hub
from kd_pipeline_tests.helpers import (
    failures,
    lighton_repo,
    pairs,
    run_lighton_partition,
    write_pairs,
)
from kd_pipeline_tests.hub_server import HubServer

TOKEN = "hf_" + "QuiteSecretTokenValue0123456789"


def test_quotes_and_spaces_in_paths_are_data_not_sql(tmp_path, monkeypatch) -> None:
    lake_dir = tmp_path / "la'ke; DROP TABLE x; --"
    mirror = tmp_path / "mir'ror dir"
    write_pairs(lighton_repo(mirror) / "agnews" / "train-0.parquet", pairs(9))
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(lake_dir))
    monkeypatch.setenv("KD_PIPELINE_MIRROR", str(mirror))
    result = run_lighton_partition("agnews")
    assert result.success, failures(result)
    with Lake(lake_dir).connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM lighton.raw").fetchone() == (9,)


@pytest.mark.parametrize(
    "selector",
    [
        "ai.lighton.embeddings_pre_training[name=../../etc]",
        "ai.lighton.embeddings_pre_training[name=agnews';DROP]",
        "ai.lighton.embeddings_pre_training[name=agnews,min_similarity=1);DROP TABLE t;--]",
        "ai.lighton.embeddings_pre_training/../../x",
    ],
)
def test_hostile_selectors_are_refused(selector: str) -> None:
    from kd_pipeline.prepare import resolve
    from kd_pipeline.selectors import SelectorError

    with pytest.raises(SelectorError):
        resolve(selector)


@pytest.fixture
def private_hub(monkeypatch, hf_env):
    with HubServer(sample_mirror(), token=TOKEN) as server:
        point_pipeline_at_hub(monkeypatch, server.endpoint)
        yield server


def _everything_recorded(instance: dg.DagsterInstance) -> str:
    text = []
    for run in instance.get_runs():
        text.append(json.dumps(run.tags))
        for record in instance.all_logs(run.run_id):
            text.append(record.message or "")
            text.append(repr(record.dagster_event))
    return "\n".join(text)


def test_token_never_appears_in_logs_metadata_or_errors(private_hub, monkeypatch, lake_dir):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN", TOKEN, raising=False)
    with dg.instance_for_test() as instance:
        ok = run_lighton_partition("agnews", instance)
        assert ok.success, failures(ok)
        wrong = "hf_" + "WrongTokenValue9876543210abcdef"
        monkeypatch.setenv("HF_TOKEN", wrong)
        monkeypatch.setattr(constants, "HF_TOKEN", wrong, raising=False)
        refused = run_lighton_partition("npr", instance)
        assert not refused.success
        assert "HF_TOKEN" in failures(refused)
        recorded = _everything_recorded(instance)
    assert TOKEN not in recorded and wrong not in recorded
    lake = Lake(lake_dir)
    assert TOKEN not in json.dumps(lake.manifest(("lighton", "raw"), "agnews"))
    authorised = [h for _, _, h in private_hub.requests]
    assert all("Authorization" not in h for h in authorised)  # the server log never keeps it
