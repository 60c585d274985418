"""The Dagster resources every asset uses: the lake and the upstream source.

Both default to the environment (see `settings`), resolved when a step runs, and both
accept explicit values so tests point them at temporary folders.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from kd_pipeline import settings
from kd_pipeline.fetch import Fetcher, ensure_generated
from kd_pipeline.lake import Lake
from kd_pipeline.sample import write_sample_mirror

SAMPLE_LAYOUT_VERSION = 3  # bump when the generated sample changes shape


class LakeResource(dg.ConfigurableResource):
    """The lake: `root` (a folder or s3:// URL), else `$KD_PIPELINE_LAKE`, else
    `<data home>/lake`; its catalog from `$KD_PIPELINE_CATALOG` (see `settings.catalog`).

    Every step uses it, so its setup is where a run started outside `kd-pipeline` (the UI,
    `dagster asset materialize`) has its settings validated before any work."""

    root: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings.validate_settings()

    def lake(self) -> Lake:
        return Lake(self.root or None)


class UpstreamResource(dg.ConfigurableResource):
    """Where upstream files come from: `mode` sample | mirror | hub (default: environment)."""

    mode: str | None = None
    mirror: str | None = None
    sample_rows_per_config: int | None = None

    def fetcher(self, hub_attempts: int | None = None) -> Fetcher:
        choice = settings.source_choice()
        mode = self.mode or ("mirror" if self.mirror else choice.mode)
        mirror = Path(self.mirror) if self.mirror else choice.mirror
        if mode == "sample":
            mirror = sample_mirror(self.sample_rows_per_config)
        if mode not in ("sample", "mirror", "hub"):
            raise ValueError(f"upstream mode {mode!r}: expected sample, mirror or hub")
        return Fetcher(
            mode,  # type: ignore[arg-type]
            None if mode == "hub" else mirror,
            settings.data_home() / "cache",
            hub_attempts,
        )


def sample_mirror(rows_per_config: int | None = None) -> Path:
    """The generated sample mirror for that size, created on first use."""
    rows = settings.sample_rows_per_config() if rows_per_config is None else rows_per_config
    target = settings.sample_mirror_root() / f"v{SAMPLE_LAYOUT_VERSION}-rows{rows}"
    return ensure_generated(target, lambda tmp: write_sample_mirror(tmp, rows))
