"""The shared resources: the lake, the upstream source and DuckDB (its limits), configured from the
environment as it is when the code location loads (each field a `dg.EnvVar` or its
resolved default, validated then; see `kd_pipeline.resources`): a bad variable raises
settings.SettingsError naming it."""

import dagster as dg

from kd_pipeline.engine import EngineResource
from kd_pipeline.resources import LakeResource, UpstreamResource


def shared_resources() -> dg.Definitions:
    """The resources as the environment configures them now."""
    return dg.Definitions(
        resources={
            "lake": LakeResource.from_environment(),
            "upstream": UpstreamResource.from_environment(),
            "duckdb": EngineResource.from_environment(),
        }
    )


@dg.definitions
def defs() -> dg.Definitions:
    # a function: each load of the code location reads the environment again
    return shared_resources()
