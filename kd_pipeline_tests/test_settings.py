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
