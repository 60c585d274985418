"""Settings at their boundaries: the smallest memory limit the pipeline accepts is one DuckDB
runs a step with, and a lake or home that does not exist yet is accepted (and left
uncreated by the check). The refused values are in test_cli.py's BAD_SETTINGS."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from kd_pipeline import settings


@pytest.mark.parametrize("value", ["64MiB", "0.5GB", "100%", "1%"])
def test_memory_limits_at_the_boundary_are_accepted_and_duckdb_runs_with_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, value)
    assert settings.settings_problems() == []
    limit = settings.duckdb_memory_limit()
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{limit}'")
    con.execute(f"COPY (SELECT range AS i FROM range(100000)) TO '{tmp_path / 'x.parquet'}'")
    assert con.execute(f"SELECT sum(i) FROM '{tmp_path / 'x.parquet'}'").fetchall() == [
        (sum(range(100000)),)
    ]


@pytest.mark.parametrize("variable", [settings.LAKE_ENV, settings.HOME_ENV])
def test_a_folder_still_to_create_is_accepted_and_not_created_by_the_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    target = tmp_path / "not" / "yet"
    monkeypatch.setenv(variable, str(target))
    assert settings.settings_problems() == []
    assert not target.exists()


def test_an_object_store_lake_is_a_url_never_a_local_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The old fault: `s3://bucket/prefix` silently wrote to a local folder named `s3:`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv(settings.LAKE_ENV, "s3://bucket/some/prefix/")
    assert settings.settings_problems() == []
    assert settings.lake_root() == "s3://bucket/some/prefix"
    # its default catalog is on this machine, in the data home
    assert settings.catalog().attach_string == (
        f"ducklake:sqlite:{tmp_path / 'home' / 'catalog.sqlite'}"
    )
    from kd_pipeline.lake import Lake

    lake = Lake()
    assert lake.remote and lake.data_path == "s3://bucket/some/prefix/data/"
    assert not (tmp_path / "s3:").exists()


def test_the_catalog_setting_names_sqlite_or_postgres(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(settings.LAKE_ENV, str(tmp_path / "lake"))
    monkeypatch.delenv(settings.CATALOG_ENV, raising=False)
    assert settings.catalog().target == str(tmp_path / "lake" / "catalog.sqlite")
    monkeypatch.setenv(settings.CATALOG_ENV, "postgres:host=db dbname=kd user=kd")
    assert settings.catalog().attach_string == "ducklake:postgres:host=db dbname=kd user=kd"
    # a password would reach every error line that quotes the connection string
    for leaky in ("host=db password=hunter2", "postgresql://kd:hunter2@db/kd"):
        monkeypatch.setenv(settings.CATALOG_ENV, f"postgres:{leaky}")
        problems = settings.settings_problems()
        assert len(problems) == 1 and "PGPASSWORD" in problems[0]
        assert "hunter2" not in problems[0]
