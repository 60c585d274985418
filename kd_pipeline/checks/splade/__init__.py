"""SPLADE distillation folders (light-splade's layout) and the rules their trainer enforces.

`layout` finds a folder's files, `read` reads them as lines into DuckDB (a line census
first, gzip inflated on a background thread), `load` checks every line into temp tables
of ids (recording each malformed one), and `rules` judges the tables: the export's
blocking checks, `kd-pipeline validate-splade` and the tests all go through
`validate_folder` / `evaluate_splade`.
"""

from kd_pipeline.checks.splade.layout import (
    SCORES_FILE,
    LayoutError,
    SpladeLayout,
    resolve_layout,
)
from kd_pipeline.checks.splade.load import SpladeTables, load_splade
from kd_pipeline.checks.splade.rules import (
    POINTWISE_ALTERNATIVE,
    SPLADE_RULES,
    SpladeFacts,
    all_violations,
    evaluate_splade,
    validate_folder,
)

__all__ = [
    "POINTWISE_ALTERNATIVE",
    "SCORES_FILE",
    "SPLADE_RULES",
    "LayoutError",
    "SpladeFacts",
    "SpladeLayout",
    "SpladeTables",
    "all_violations",
    "evaluate_splade",
    "load_splade",
    "resolve_layout",
    "validate_folder",
]
