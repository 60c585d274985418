"""The command lines users and CI run: kd-pipeline and dagster's own, in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb

from kd_pipeline.sample import lighton_sample_dir

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir()
    return env


def test_sample_command_writes_a_mirror(tmp_path) -> None:
    out = tmp_path / "mirror"
    proc = run(
        [
            sys.executable,
            "-m",
            "kd_pipeline.cli",
            "sample",
            "--out",
            str(out),
            "--rows-per-config",
            "7",
        ],
        dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    shards = sorted(lighton_sample_dir(out).glob("*/*.parquet"))
    assert len({s.parent.name for s in shards}) == 73
    (rows,) = duckdb.execute(
        "SELECT count(*) FROM read_parquet($g)",
        {"g": str(lighton_sample_dir(out) / "agnews/*.parquet")},
    ).fetchone()
    assert rows == 7


def test_materialize_command_runs_through_the_instance(tmp_path, lake_dir) -> None:
    env = cli_env(tmp_path)
    proc = run(
        [
            sys.executable,
            "-m",
            "kd_pipeline.cli",
            "materialize",
            "--partition",
            "agnews",
            "--partition",
            "fw_edu",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(lake_dir)
    assert "2/2 runs succeeded" in proc.stderr
    (keys,) = (
        duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
        .execute("SELECT list(DISTINCT partition ORDER BY partition) FROM lighton.recommended")
        .fetchone()
    )
    assert keys == ["agnews", "fw-edu"]  # the alias fw_edu resolved to its config
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)


def test_unknown_partition_is_a_clear_error(tmp_path) -> None:
    proc = run(
        [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", "nope"],
        cli_env(tmp_path),
    )
    assert proc.returncode == 2
    assert "unknown LightOn config 'nope'" in proc.stderr


def test_dagster_asset_materialize_and_definitions_validate(tmp_path, lake_dir) -> None:
    env = cli_env(tmp_path)
    proc = run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "kd_pipeline.definitions",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kd_pipeline.definitions",
            "--select",
            "lighton/raw",
            "--partition",
            "fw-edu",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (lake_dir / "lighton" / "raw" / "fw-edu").is_symlink()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["lighton", "raw"]))
        assert event is not None and event.dagster_event.partition == "fw-edu"
