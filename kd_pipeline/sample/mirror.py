"""The sample mirror: every family's stand-in files, in one folder laid out like a local
mirror of the upstream hosts, with the checksums and Zenodo metadata that describe them."""

from __future__ import annotations

from pathlib import Path

from kd_pipeline.families import upstream
from kd_pipeline.sample.fiqa import write_beir_fiqa, write_fiqa
from kd_pipeline.sample.hofstaetter import write_hofstaetter
from kd_pipeline.sample.lighton import write_lighton
from kd_pipeline.sample.msmarco import write_msmarco
from kd_pipeline.sample.rank_distillm import write_rank_distillm
from kd_pipeline.settings import DEFAULT_SAMPLE_ROWS_PER_CONFIG


def write_sample_mirror(out: Path, rows_per_config: int = DEFAULT_SAMPLE_ROWS_PER_CONFIG) -> Path:
    """Write the sample mirror under out; return out. rows_per_config sizes the LightOn
    configs; the other families are small and fixed (hundreds of rows), with a
    `stand-in-md5sums.json` declaring the md5 of every plain-URL file (they are not the
    upstream files, so the upstream md5s cannot match them) and the Zenodo records'
    metadata listing those md5s (for the change sensor).

    Byte-identical output for the same arguments. Atomicity of the whole tree is the
    caller's job; each single file is written under a temporary name and renamed.
    """
    if rows_per_config < 0:
        raise ValueError(f"rows_per_config must be >= 0, got {rows_per_config}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_lighton(out, rows_per_config)
    write_msmarco(out)
    write_hofstaetter(out)
    write_rank_distillm(out)
    write_beir_fiqa(out)
    write_fiqa(out)
    declared = upstream.declare_stand_in_checksums(
        out, upstream.all_upstream_urls(), "kd-pipeline synthetic sample"
    )
    upstream.declare_stand_in_records(out, declared)
    return out
