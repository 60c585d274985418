"""Helpers for the text, pairwise, listwise and mined family tests: stand-in mirrors copied
from the sample (so a test may damage a file), and the family jobs run through Dagster."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from kd_pipeline.definitions import defs
from kd_pipeline.families.upstream import (
    FIQA_MINED_REPO_ID,
    STAND_IN_CHECKSUMS,
    all_upstream_urls,
    declare_stand_in_checksums,
)
from kd_pipeline.fetch import mirror_path_for_url, sample_mirror
from kd_pipeline.lake import Lake


def stand_in_mirror(dest: Path) -> Path:
    """A copy of the sample's plain-URL files, its FiQA Hub dataset and its checksum
    declaration (LightOn left out). Call `redeclare` after changing a file on purpose."""
    sample = sample_mirror()
    shutil.copytree(sample / "url", dest / "url")
    repo = Path("hf") / "datasets" / FIQA_MINED_REPO_ID
    shutil.copytree(sample / repo, dest / repo)
    shutil.copy(sample / STAND_IN_CHECKSUMS, dest / STAND_IN_CHECKSUMS)
    return dest


def redeclare(mirror: Path) -> None:
    """Declare the mirror's current bytes (a deliberately damaged file must reach the
    parser, not stop at the md5 check)."""
    declare_stand_in_checksums(mirror, all_upstream_urls(), "test fixture")


def url_path(mirror: Path, url: str) -> Path:
    return mirror_path_for_url(mirror, url)


def edit_lines(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite a text file line by line (newlines kept off the strings)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("".join(line + "\n" for line in edit(lines)), encoding="utf-8")


def run_job(
    name: str,
    partition: str | None = None,
    selection: Sequence[dg.AssetKey] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of a family job (optionally a subset of its assets, with run tags as a
    sensor or a launch from the UI would set them), in process."""
    return defs.resolve_job_def(name).execute_in_process(
        partition_key=partition,
        asset_selection=list(selection) if selection else None,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags=dict(tags) if tags else None,
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], Any]:
    """Check evaluations by (asset key, check name)."""
    return {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }


def materialized(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    """The metadata values of key's materialisation in this run."""
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def rows(lake_dir: Path, key: dg.AssetKey, partition: str | None = None, query: str = "*"):
    """The published rows of key (and partition), as tuples in a stable order."""
    glob = Lake(lake_dir).parquet_glob(key.path, partition)
    return duckdb.execute(
        f"SELECT {query} FROM read_parquet($g) ORDER BY ALL", {"g": glob}
    ).fetchall()
