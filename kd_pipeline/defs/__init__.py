"""The code location's definitions, one module per area, found by folder.

`kd_pipeline.definitions` loads every module here (Dagster's defs-folder loading: each
module's `defs`); adding an area is adding a module. The modules only assemble: assets,
their rules and bodies live in `families/`, `recipes/` and `exports/`, next to the jobs
that run them.
"""
