"""The Dagster code location (`dg`, `dagster dev`, `dagster code-server -m`): the modules of
`kd_pipeline/defs/`, found by folder, and MAIN_JOBS, what `kd-pipeline materialize` runs.

Nothing here connects or downloads; the shared resources are the one part that reads the
environment, through `settings` (`defs/resources.py`).
"""

import warnings
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
from dagster._core.storage.defs_state.base import set_defs_state_storage

import kd_pipeline.defs
from kd_pipeline.defs.exports import specs as export_specs
from kd_pipeline.defs.resources import shared_resources
from kd_pipeline.exports.factory import main_job_names
from kd_pipeline.families import fiqa, hofstaetter, lighton, rank_distillm, text
from kd_pipeline.lake import catalog_view_names
from kd_pipeline.recipes import factory

__all__ = [
    "MAIN_JOBS",
    "TableNameCollision",
    "build_definitions",
    "defs",
    "refuse_table_name_collisions",
    "shared_resources",
]

LIGHTON_PARTITIONED_JOB = lighton.LIGHTON_PARTITIONED_JOB
LIGHTON_UNIONS_JOB = factory.LIGHTON_UNIONS_JOB
# The main job, in dependency order: what `kd-pipeline materialize` runs (a partitioned job
# once per partition).
MAIN_JOBS = (
    LIGHTON_PARTITIONED_JOB,
    LIGHTON_UNIONS_JOB,
    text.TEXT_JOB,
    hofstaetter.HOFSTAETTER_JOB,
    rank_distillm.RANK_DISTILLM_JOB,
    fiqa.FIQA_JOB,
    *main_job_names(export_specs),  # the specs the code location loaded, not read again
)
# the project root for Dagster's loader: the folder holding the package (a source checkout
# or site-packages; the loader needs no pyproject.toml when it is given)
PROJECT_ROOT = Path(kd_pipeline.defs.__file__).parents[2]


class TableNameCollision(ValueError):
    """Two asset keys that the lake would store as one table (or view)."""


def refuse_table_name_collisions(keys: Iterable[dg.AssetKey]) -> None:
    """Raise TableNameCollision when two asset keys read as the same lake table: the lake
    names each key's table on its own (`Lake.table_name`: schema = first part, table = the
    rest joined by `_`, lower case, anything but letters, digits and `_` made `_`), so
    `fam/a-b` and `fam/a_b` (or `fam/AB` and `fam/ab`, or two exports ending in the same
    part) would replace each other's rows. One line per collision, naming both keys and
    the table."""
    owner: dict[tuple[str, str], str] = {}
    problems = []
    for key in sorted(keys, key=lambda k: k.path):
        path = tuple(key.path)
        schema, table = catalog_view_names([path])[path]
        name = key.to_user_string()
        first = owner.setdefault((schema, table), name)
        if first != name:
            problems.append(
                f"asset keys {first} and {name} are both the lake table {schema}.{table}: "
                "rename one of them"
            )
    if problems:
        raise TableNameCollision("\n".join(problems))


def build_definitions() -> dg.Definitions:
    """Every definition of the modules in `kd_pipeline/defs/`, loaded now (the resources
    read the environment as it is now).

    Raises settings.SettingsError, one line per bad variable, before the folder is loaded
    (the loader would wrap it in its own report of every module); TableNameCollision when
    two asset keys would be one lake table."""
    shared_resources()
    # Dagster's folder loader calls its own preview functions and warns about them on every
    # load; that is its business, not a user's: silenced here, and only here.
    # No module here keeps Dagster "defs state", but loading and resolving the definitions
    # asks the state storage of the last DagsterInstance entered in this context, which
    # outlives an instance collected in another context ("Attempted to resolve undefined
    # DagsterInstance weakref"): none is asked. The resolved repository is cached.
    with warnings.catch_warnings(), set_defs_state_storage(None):
        warnings.simplefilter("ignore", dg.PreviewWarning)
        built = dg.ComponentTree.from_module(kd_pipeline.defs, PROJECT_ROOT).build_defs()
        refuse_table_name_collisions(built.resolve_asset_graph().get_all_asset_keys())
    return built


defs = build_definitions()
