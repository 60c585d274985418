"""Deterministic sample mirror: small, synthetic stand-ins for the upstream datasets.

The pipeline never reaches the real hosts from the build machines, so this package writes a
directory laid out exactly like a local mirror of them (``<out>/hf/datasets/<repo id>/...``
for Hub datasets, ``<out>/url/<host>/<path>`` for plain URLs) and serves as the embedded
default data source. It deliberately reproduces the awkward parts of the real data (sharded
configs, varying Arrow widths, optional ``index`` column, duplicate pointers equal to 0, tied
scores, non-Latin scripts, mojibake) so the loaders are exercised on them.

Everything is derived from stable hashes (never ``hash()`` or global random state), so the
same arguments give byte-identical files. One module per upstream it imitates (`lighton`,
`msmarco`, `hofstaetter`, `rank_distillm`, `fiqa`), the synthetic languages (`text`), the
byte-identical file writing (`files`) and the writer of the whole mirror (`mirror`).

Runtime code never imports this package when it is imported: the fetch layer generates the
sample the first time the sample source is read from (`fetch.sample_mirror`), and
`kd-pipeline sample` writes it to a folder.
"""

from kd_pipeline.sample.lighton import lighton_sample_dir
from kd_pipeline.sample.mirror import write_sample_mirror
from kd_pipeline.settings import DEFAULT_SAMPLE_ROWS_PER_CONFIG as DEFAULT_ROWS_PER_CONFIG

__all__ = ["DEFAULT_ROWS_PER_CONFIG", "lighton_sample_dir", "write_sample_mirror"]
