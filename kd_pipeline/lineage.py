"""What a step reads from the lake and records of it: the published files of an asset it
reads (pinned when the step starts), and which versions those were."""

from collections.abc import Sequence

import dagster as dg

from kd_pipeline.lake import Lake, LakeError

TEXT_HINT = "job text_collections builds every text table"


def published_glob(
    lake: Lake, key: dg.AssetKey, partition: str | None = None, hint: str = TEXT_HINT
) -> str:
    """The Parquet glob of the version of key (and partition) published now: pinned, so a
    publish during the run does not change what this run reads.

    Raises dg.Failure "<key> [<partition>] is not published yet: materialize it first
    (<hint>)" when nothing is published: the step fails before it writes anything.
    """
    if not lake.is_published(key.path, partition):
        where = key.to_user_string() + (f" [{partition}]" if partition else "")
        raise dg.Failure(f"{where} is not published yet: materialize it first ({hint})")
    return str(lake.parquet_glob(key.path, partition))


def published_versions(lake: Lake, keys: Sequence[dg.AssetKey]) -> dict[str, str]:
    """Which version of each (unpartitioned) upstream table a run read, for lineage (read
    after `published_glob`; raises LakeError when one is not published)."""
    return {k.to_user_string(): lake.manifest(k.path).get("version", "?") for k in keys}


def manifest(lake: Lake, key: dg.AssetKey, partition: str | None) -> dict:
    """The manifest the lake recorded with the published version ({} when none: lineage is
    a record, its absence never fails a step)."""
    try:
        return lake.manifest(key.path, partition)
    except LakeError:
        return {}


def version(lake: Lake, key: dg.AssetKey, partition: str | None) -> str:
    """The published version of key (and partition), "?" when none is recorded."""
    return str(manifest(lake, key, partition).get("version", "?"))
