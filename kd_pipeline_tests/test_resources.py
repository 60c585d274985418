"""The lake, upstream and DuckDB resources: configuration Dagster shows and validates.

What the UI's resource page shows is each resource definition's configured values: a
variable's name when it is set, else the resolved default (never None). A bound variable is
read when a run starts; a bad value is one line naming the variable, when the code location
loads. Building a Fetcher generates nothing: the sample mirror appears on the first read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import (
    RepositorySnap,
    ResourceConfigEnvVarSnap,
)
from pydantic import ValidationError

from kd_pipeline import settings
from kd_pipeline.definitions import shared_resources
from kd_pipeline.engine import EngineResource, connection_threads, engine_connection
from kd_pipeline.families.lighton_configs import LIGHTON_REPO_ID
from kd_pipeline.fetch import SAMPLE_LAYOUT_VERSION
from kd_pipeline.lake import Lake
from kd_pipeline.resources import LakeResource, UpstreamResource
from kd_pipeline.settings import UpstreamMode

RESOURCE_VARIABLES = (
    settings.LAKE_ENV,
    settings.CATALOG_ENV,
    settings.SOURCE_ENV,
    settings.MIRROR_ENV,
    settings.SAMPLE_ROWS_ENV,
    settings.RETENTION_ENV,
    settings.MEMORY_LIMIT_ENV,
    settings.THREADS_ENV,
)


def shown_in_ui(definitions: dg.Definitions) -> dict[str, dict[str, Any]]:
    """resource -> the configured values the UI's resource page lists (the repository
    snapshot the webserver serves): a value, or {"env": <variable>}."""
    snap = RepositorySnap.from_def(definitions.get_repository_def())
    return {
        resource.name: {
            key: {"env": value.name}
            if isinstance(value, ResourceConfigEnvVarSnap)
            else json.loads(value)
            for key, value in resource.configured_values.items()
        }
        for resource in snap.resources
        if resource.name in ("lake", "upstream", "duckdb")
    }


def memory_share_mib(percent: int) -> int:
    """MiB of this machine's physical memory in `percent` of it."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total * percent // 100 // 2**20


def engine_limits(resource: EngineResource, lake_dir: Path) -> tuple[str, str, int]:
    """The resource's memory limit, and the memory limit and threads DuckDB reports on a
    connection of engine_connection (the threads as the exports' gzip reads them)."""
    with engine_connection(resource, Lake(lake_dir)) as con:
        ((memory,),) = con.execute("SELECT current_setting('memory_limit')").fetchall()
        threads = connection_threads(con)
    return resource.memory_limit, memory, threads


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data home in tmp_path and none of the resources' other variables set."""
    for variable in RESOURCE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv(settings.HOME_ENV, str(home))
    return home


def test_unset_variables_show_their_resolved_defaults(clean_env: Path) -> None:
    shown = shown_in_ui(shared_resources())
    assert shown["lake"] == {
        "root": str(clean_env / "lake"),
        "catalog": f"sqlite:{clean_env / 'lake' / 'catalog.sqlite'}",
        "retention_days": settings.DEFAULT_RETENTION_DAYS,
    }
    assert shown["upstream"] == {
        "mode": "SAMPLE",
        "mirror": "",
        "data_home": {"env": settings.HOME_ENV},
        "sample_rows_per_config": settings.DEFAULT_SAMPLE_ROWS_PER_CONFIG,
    }
    assert shown["duckdb"] == {
        "database": ":memory:",
        "connection_config": {},
        "memory_limit": "4GB",
        "threads": os.cpu_count(),
    }
    assert None not in [v for values in shown.values() for v in values.values()]


def test_set_variables_show_their_names_and_are_read_when_a_run_starts(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv(settings.LAKE_ENV, str(tmp_path / "first"))
    monkeypatch.setenv(settings.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(settings.SAMPLE_ROWS_ENV, "7")
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, "50%")
    monkeypatch.setenv(settings.THREADS_ENV, "2")
    monkeypatch.setenv(settings.RETENTION_ENV, "0.5")
    resources = shared_resources().resources
    shown = shown_in_ui(dg.Definitions(resources=resources))
    assert shown["lake"] == {
        "root": {"env": settings.LAKE_ENV},
        "catalog": f"sqlite:{tmp_path / 'first' / 'catalog.sqlite'}",
        "retention_days": 0.5,  # a fraction: fixed when the code location loads
    }
    assert shown["duckdb"] == {
        "database": ":memory:",
        "connection_config": {},
        "memory_limit": {"env": settings.MEMORY_LIMIT_ENV},
        "threads": {"env": settings.THREADS_ENV},
    }
    assert shown["upstream"] == {
        "mode": "MIRROR",  # an Enum: fixed when the code location loads
        "mirror": {"env": settings.MIRROR_ENV},
        "data_home": {"env": settings.HOME_ENV},
        "sample_rows_per_config": {"env": settings.SAMPLE_ROWS_ENV},
    }

    @dg.asset
    def probe(lake: LakeResource, upstream: UpstreamResource, duckdb: EngineResource) -> Any:
        fetcher = upstream.fetcher()
        return {
            "root": lake.lake().root,
            "retention_days": lake.lake().retention_days,
            "mirror": fetcher.mirror,
            "rows": upstream.sample_rows_per_config,
            "engine": engine_limits(duckdb, tmp_path / "engine-lake"),
        }

    monkeypatch.setenv(settings.LAKE_ENV, str(tmp_path / "second"))
    monkeypatch.setenv(settings.SAMPLE_ROWS_ENV, "9")
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, "256MiB")
    monkeypatch.setenv(settings.THREADS_ENV, "1")
    monkeypatch.setenv(settings.RETENTION_ENV, "3")
    result = dg.materialize([probe], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.output_for_node("probe") == {
        "root": tmp_path / "second",
        "retention_days": 0.5,
        "mirror": mirror,
        "rows": 9,
        "engine": ("256MiB", "256.0 MiB", 1),
    }
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, "25%")  # a share: MiB of this machine
    result = dg.materialize([probe], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.output_for_node("probe")["engine"][0] == f"{memory_share_mib(25)}MiB"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"KD_PIPELINE_SOURCE": "bogus"}, "KD_PIPELINE_SOURCE='bogus': expected one of sample"),
        ({"KD_PIPELINE_SOURCE": "mirror"}, "KD_PIPELINE_SOURCE=mirror needs KD_PIPELINE_MIRROR"),
        ({"KD_PIPELINE_MIRROR": "/no/such/mirror"}, "expected an existing folder"),
        ({"KD_PIPELINE_SAMPLE_ROWS": "-3"}, "KD_PIPELINE_SAMPLE_ROWS='-3': expected a non-neg"),
        ({"KD_PIPELINE_SAMPLE_ROWS": "many"}, "KD_PIPELINE_SAMPLE_ROWS='many': expected a non"),
        ({"KD_PIPELINE_LAKE": "gs://bucket/lake"}, "the gs:// scheme is not supported"),
        ({"KD_PIPELINE_CATALOG": "mysql:host=db"}, "KD_PIPELINE_CATALOG='mysql:host=db': exp"),
        ({"KD_PIPELINE_RETENTION_DAYS": "0"}, "expected a positive number of days"),
        ({"KD_PIPELINE_RETENTION_DAYS": "a week"}, "expected a positive number of days"),
        ({"KD_PIPELINE_DUCKDB_MEMORY": "lots"}, "KD_PIPELINE_DUCKDB_MEMORY='lots': expected a s"),
        ({"KD_PIPELINE_DUCKDB_MEMORY": "1MB"}, "expected a size of at least 64MiB"),
        ({"KD_PIPELINE_DUCKDB_THREADS": "0"}, "KD_PIPELINE_DUCKDB_THREADS='0': expected a pos"),
        ({"KD_PIPELINE_DUCKDB_THREADS": "1.5"}, "expected a positive integer"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(settings.SettingsError) as caught:
        shared_resources()
    (message,) = str(caught.value).splitlines()
    assert message.startswith(next(iter(env)) + "=") and line in message


def test_several_bad_values_are_all_named(clean_env: Path, monkeypatch) -> None:
    monkeypatch.setenv(settings.SOURCE_ENV, "ftp")
    monkeypatch.setenv(settings.SAMPLE_ROWS_ENV, "0.5")
    with pytest.raises(settings.SettingsError) as caught:
        UpstreamResource.from_environment()
    assert str(caught.value).splitlines() == [
        "KD_PIPELINE_SOURCE='ftp': expected one of sample, mirror, hub",
        "KD_PIPELINE_SAMPLE_ROWS='0.5': expected a non-negative integer",
    ]


def test_values_given_in_code_are_validated_by_the_same_rules(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="KD_PIPELINE_SAMPLE_ROWS='-1'"):
        UpstreamResource(sample_rows_per_config=-1)
    with pytest.raises(ValidationError, match="KD_PIPELINE_SOURCE='local'"):
        UpstreamResource(mode="local")
    with pytest.raises(ValidationError, match="needs KD_PIPELINE_MIRROR"):
        UpstreamResource(mode="mirror", mirror="")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValidationError, match="expected a folder, found a file"):
        LakeResource(root=str(tmp_path / "file"))
    with pytest.raises(ValidationError, match="KD_PIPELINE_RETENTION_DAYS='-1'"):
        LakeResource(retention_days=-1)
    with pytest.raises(ValidationError, match="KD_PIPELINE_DUCKDB_THREADS='0'"):
        EngineResource(threads=0)
    with pytest.raises(ValidationError, match="KD_PIPELINE_DUCKDB_MEMORY='10MB'"):
        EngineResource(memory_limit="10MB")
    assert EngineResource(memory_limit="10%").memory_limit == f"{memory_share_mib(10)}MiB"
    assert UpstreamResource(mode="HUB").mode is UpstreamMode.HUB  # any case, as the variable


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (settings.SOURCE_ENV, "s3", "KD_PIPELINE_SOURCE='s3': expected one of sample, mirror, hub"),
        (
            settings.THREADS_ENV,
            "-2",
            "KD_PIPELINE_DUCKDB_THREADS='-2': expected a positive integer",
        ),
    ],
)
def test_loading_the_code_location_with_a_bad_value_fails_naming_it(
    tmp_path: Path, variable: str, value: str, line: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", settings.HOME_ENV: str(tmp_path), variable: value}
    loaded = subprocess.run(
        [sys.executable, "-c", "import kd_pipeline.definitions"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert loaded.returncode != 0
    assert loaded.stderr.strip().splitlines()[-1] == f"kd_pipeline.settings.SettingsError: {line}"


def test_the_engine_applies_its_own_limits_not_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, "1GB")
    monkeypatch.setenv(settings.THREADS_ENV, "2")
    given = EngineResource(memory_limit="128MiB", threads=1)
    assert engine_limits(given, tmp_path / "lake") == ("128MiB", "128.0 MiB", 1)
    # built without values (the CLI, benchmarks): the environment as it is now
    assert engine_limits(EngineResource(), tmp_path / "lake") == ("1GB", "953.6 MiB", 2)


def test_the_lake_resource_describes_a_lake_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    lake = LakeResource(
        root=str(root), catalog=f"sqlite:{tmp_path / 'c.sqlite'}", retention_days=2
    ).lake()
    assert (lake.root, lake.catalog.target) == (root, str(tmp_path / "c.sqlite"))
    assert lake.retention_days == 2.0
    assert not root.exists() and not (tmp_path / "c.sqlite").exists()


def test_the_sample_is_generated_by_the_first_read_not_by_the_resource(tmp_path: Path) -> None:
    home = tmp_path / "home"
    upstream = UpstreamResource(mode="sample", data_home=str(home), sample_rows_per_config=3)
    fetcher = upstream.fetcher()
    expected = home / "sample-mirror" / f"v{SAMPLE_LAYOUT_VERSION}-rows3"
    assert fetcher.mirror == expected
    assert not home.exists()  # building the resource and its fetcher wrote nothing
    snapshot = fetcher.dataset_snapshot(LIGHTON_REPO_ID)
    assert snapshot.source == str(expected) and "agnews/train-00000-of-00001.parquet" in (
        snapshot.files
    )
    assert sorted(p.name for p in (home / "sample-mirror").iterdir()) == [expected.name]
    again = upstream.fetcher().dataset_snapshot(LIGHTON_REPO_ID)
    assert again.revision == snapshot.revision  # the same files: generated once


def test_the_hub_and_mirror_sources_have_no_sample(tmp_path: Path) -> None:
    hub = UpstreamResource(mode="hub", data_home=str(tmp_path)).fetcher()
    assert hub.mirror is None and hub.cache_dir == tmp_path / "cache"
    mirror = UpstreamResource(mode="mirror", mirror=str(tmp_path), data_home=str(tmp_path))
    assert mirror.fetcher().mirror == tmp_path
    assert not (tmp_path / "sample-mirror").exists()
